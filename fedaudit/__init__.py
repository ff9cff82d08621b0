"""fedaudit: a federated-learning simulator whose honest-but-curious server audits what leaks."""

__version__ = "0.1.0"
