"""What kind of private data leaked: personal identifiers found verbatim in recovered text.

Detection is the well-kept libraries' job: ``phonenumbers`` finds phone numbers (possible
numbers, US as the default region), ``python-stdnum`` validates card numbers (Luhn), IBANs
(ISO 13616 check digits) and US social security numbers, and ``email-validator`` checks e-mail
addresses. The patterns here only cut candidate spans out of the text for them to validate.

A category counts as leaked only for values found in a reconstruction AND in the client's true
text (``leaked``): an attack that emits plausible numbers never scores by guessing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from stdnum import iban, luhn
from stdnum.us import ssn

CATEGORIES = ("phone", "email", "card", "iban", "ssn")

# Candidate spans only; validity is decided by the libraries.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_EMAIL = re.compile(r"[^\s<>()\[\],;:\"']+@[^\s<>()\[\],;:\"']+")


def find_pii(text: str, region: str = "US") -> dict[str, set[str]]:
    """Every identifier in ``text`` by category, each in a canonical form (digits only, E.164,
    normalized address), so the same value written two ways is one value."""
    found: dict[str, set[str]] = {name: set() for name in CATEGORIES}
    rest = text
    for name, pattern, canonical in (("iban", _IBAN, _iban), ("card", _CARD, _card), ("ssn", _SSN, _ssn)):
        for span in pattern.finditer(rest):
            value = canonical(span.group())
            if value:
                found[name].add(value)
                rest = rest.replace(span.group(), " ")  # a card is not also a phone number
    for span in _EMAIL.finditer(rest):
        value = _email(span.group().rstrip("."))
        if value:
            found["email"].add(value)
            rest = rest.replace(span.group(), " ")
    for match in phonenumbers.PhoneNumberMatcher(rest, region, leniency=phonenumbers.Leniency.POSSIBLE):
        found["phone"].add(phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164))
    return found


def leaked(recovered: Iterable[str], original: Iterable[str]) -> dict[str, int]:
    """Per category, how many distinct values appear in a recovered text and in the true texts."""
    got, truth = _all(recovered), _all(original)
    return {name: len(got[name] & truth[name]) for name in CATEGORIES}


def _all(texts: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {name: set() for name in CATEGORIES}
    for text in texts:
        for name, values in find_pii(text).items():
            out[name] |= values
    return out


def _card(span: str) -> str | None:
    digits = re.sub(r"[ -]", "", span)
    return digits if 13 <= len(digits) <= 19 and luhn.is_valid(digits) else None


def _iban(span: str) -> str | None:
    return iban.compact(span) if iban.is_valid(span) else None


def _ssn(span: str) -> str | None:
    return ssn.compact(span) if ssn.is_valid(span) else None


def _email(span: str) -> str | None:
    try:
        return validate_email(span, check_deliverability=False).normalized.lower()
    except EmailNotValidError:
        return None
