"""The auditing server: a strategy wrapper and the ServerApp."""

from server_strategies.strategy import AuditingStrategy

__all__ = ["AuditingStrategy"]
