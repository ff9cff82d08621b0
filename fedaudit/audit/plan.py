"""The attacks a scenario asks for, checked against the attack registry.

The scenario schema (``fedaudit.config``) does not know the attacks; this module does: every
name in ``audit.attacks`` must be registered, listed once, and every ``[audit.<name>]`` table
must be a registered attack's options (validated by the registry against its ``Options``).
"""

from __future__ import annotations

from typing import Any

from fedaudit.attacks import REGISTRY
from fedaudit.attacks.base import OptionsError
from fedaudit.config import AuditConfig, ConfigError


def check_audit(audit: AuditConfig) -> None:
    """Raise ``ConfigError`` (one line naming the key) for an unknown or repeated attack, an
    unknown ``[audit]`` key, or an options table the attack does not accept."""
    for name in audit.attacks:
        if name not in REGISTRY:
            raise ConfigError(
                f"audit.attacks = {audit.attacks!r}: unknown attack {name!r}; allowed: {', '.join(REGISTRY.names())}"
            )
    if len(set(audit.attacks)) != len(audit.attacks):
        raise ConfigError(f"audit.attacks = {audit.attacks!r}: an attack is listed twice")
    if audit.resources and audit.backend != "ray":
        raise ConfigError(
            f'audit.resources: Ray resources apply only with audit.backend = "ray" (it is {audit.backend!r})'
        )
    for key in audit.resources:
        if key != "default" and key not in audit.attacks:
            raise ConfigError(
                f'audit.resources.{key}: not an attack of audit.attacks ({", ".join(audit.attacks)}) nor "default"'
            )
    for key, table in audit.tables().items():
        if key not in REGISTRY:
            allowed = ", ".join([*AuditConfig.model_fields, *REGISTRY.names()])
            raise ConfigError(f"unknown key 'audit.{key}'; allowed keys here: {allowed}")
        attack_options(audit, key, table)


def attack_options(audit: AuditConfig, name: str, table: Any = None) -> Any:
    """Attack ``name``'s validated ``Options`` from the scenario (its defaults without a table)."""
    try:
        return REGISTRY.options(name, audit.options(name) if table is None else table)
    except OptionsError as err:
        raise ConfigError(str(err)) from None
