"""Flower ClientApps for fedaudit federations."""
