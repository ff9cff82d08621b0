"""The auditing server: a strategy wrapper and the ServerApp.

Nothing is imported here eagerly: ``flwr run`` looks the ServerApp up with ``find_spec``, which
imports this package in Flower's own CLI process, and that must not pull in torch, opacus (whose
import configures the root logger) and the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server_strategies.strategy import AuditingStrategy

__all__ = ["AuditingStrategy"]


def __getattr__(name: str) -> Any:
    if name == "AuditingStrategy":
        from server_strategies.strategy import AuditingStrategy

        return AuditingStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
