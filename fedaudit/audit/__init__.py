"""The auditor: Observation -> attacks -> scores against ground truth -> typed records."""

from fedaudit.audit.truth import GroundTruth

__all__ = ["GroundTruth"]
