"""Synthetic private records: short sentences full of names, contacts, diagnoses and card numbers.

They give a leakage audit something worth protecting without shipping real personal data:
every value comes from Faker, seeded, so a run is reproducible and nothing refers to a
real person.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable

from faker import Faker

from fedaudit.data.examples import TextExamples

LABEL_NAMES = ["medical", "financial", "contact"]

DIAGNOSES = [
    "asthma",
    "type 2 diabetes",
    "hypertension",
    "migraine",
    "depression",
    "generalized anxiety disorder",
    "hypothyroidism",
    "rheumatoid arthritis",
    "osteoarthritis",
    "COPD",
    "atrial fibrillation",
    "celiac disease",
    "Crohn's disease",
    "epilepsy",
    "psoriasis",
    "chronic kidney disease",
    "sleep apnea",
    "iron deficiency anemia",
    "gastroesophageal reflux disease",
    "high cholesterol",
]

MEDICATIONS = [
    "metformin",
    "lisinopril",
    "albuterol",
    "levothyroxine",
    "sertraline",
    "atorvastatin",
    "omeprazole",
    "amlodipine",
    "sumatriptan",
    "prednisone",
]

_CARD_TYPES = ["visa16", "mastercard", "discover", "visa16", "mastercard"]

# Fixed bounds, not Faker's date_of_birth(): that one counts back from today, so the same
# seed would give different sentences on different days.
_BIRTH_FIRST = _dt.date(1938, 1, 1).toordinal()
_BIRTH_LAST = _dt.date(2006, 12, 31).toordinal()
_VISIT_FIRST = _dt.date(2019, 1, 1).toordinal()
_VISIT_LAST = _dt.date(2024, 12, 31).toordinal()


def _date(fake: Faker, first: int, last: int) -> str:
    return _dt.date.fromordinal(fake.random.randint(first, last)).isoformat()


def _address(fake: Faker) -> str:
    return f"{fake.street_address()}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}"


def _card(fake: Faker) -> str:
    digits = fake.credit_card_number(card_type=fake.random.choice(_CARD_TYPES))
    # Printed cards group digits in fours; the attacker has to recover them as written.
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _expiry(fake: Faker) -> str:
    return f"{fake.random.randint(1, 12):02d}/{fake.random.randint(26, 32)}"


def _medical(fake: Faker) -> str:
    name, dx = fake.name(), fake.random.choice(DIAGNOSES)
    born = _date(fake, _BIRTH_FIRST, _BIRTH_LAST)
    templates: list[Callable[[], str]] = [
        lambda: f"Patient {name}, born {born}, was diagnosed with {dx} at {_address(fake)}.",
        lambda: (
            f"{name} (DOB {born}) visited Dr. {fake.last_name()} on "
            f"{_date(fake, _VISIT_FIRST, _VISIT_LAST)} and was prescribed "
            f"{fake.random.choice(MEDICATIONS)} for {dx}."
        ),
        lambda: (
            f"Medical record MRN-{fake.numerify('########')}: {name}, born {born}, history of {dx}; SSN {fake.ssn()}."
        ),
        lambda: f"Lab results for {name} confirm {dx}; call {fake.phone_number()} to book a follow-up.",
    ]
    return fake.random.choice(templates)()


def _financial(fake: Faker) -> str:
    name = fake.name()
    templates: list[Callable[[], str]] = [
        lambda: f"Card {_card(fake)} belongs to {name}; billing address {_address(fake)}.",
        lambda: (
            f"{name} paid ${fake.random.randint(20, 4000)}.{fake.random.randint(0, 99):02d} "
            f"to {fake.company()} with card {_card(fake)}, expiring {_expiry(fake)}."
        ),
        lambda: (
            f"Wire transfer from account {fake.bban()} (IBAN {fake.iban()}) authorised by "
            f"{name} on {_date(fake, _VISIT_FIRST, _VISIT_LAST)}."
        ),
        lambda: (
            f"Loan application: {name}, SSN {fake.ssn()}, annual income "
            f"${fake.random.randint(28, 240) * 1000:,}, employer {fake.company()}."
        ),
    ]
    return fake.random.choice(templates)()


def _contact(fake: Faker) -> str:
    name = fake.name()
    templates: list[Callable[[], str]] = [
        lambda: f"You can reach {name} at {fake.email()} or {fake.phone_number()}.",
        lambda: f"{name} moved to {_address(fake)}; new phone number {fake.phone_number()}.",
        lambda: f"Please send the contract to {name}, {_address(fake)}, and copy {fake.free_email()} on the reply.",
        lambda: f"Emergency contact for {fake.name()}: {name}, mobile {fake.phone_number()}, e-mail {fake.email()}.",
    ]
    return fake.random.choice(templates)()


_CLASSES: list[Callable[[Faker], str]] = [_medical, _financial, _contact]


def generate_demo_records(n: int, seed: int) -> TextExamples:
    """``n`` synthetic private-record sentences, balanced over medical/financial/contact, seeded."""
    if n < 1:
        raise ValueError(f"n = {n}: need at least one demo record")
    fake = Faker("en_US")
    fake.seed_instance(seed)
    # Balanced classes keep every label present even for small n; shuffled so a client's
    # slice of the data is not one class.
    labels = [i % len(_CLASSES) for i in range(n)]
    fake.random.shuffle(labels)
    texts = [_CLASSES[label](fake) for label in labels]
    return TextExamples(texts=texts, labels=labels, label_names=list(LABEL_NAMES))
