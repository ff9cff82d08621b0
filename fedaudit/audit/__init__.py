"""Observation -> attacks -> scores -> records."""

from fedaudit.audit.observation import GroundTruth, Observation, Protocol

__all__ = ["GroundTruth", "Observation", "Protocol"]
