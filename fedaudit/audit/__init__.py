"""The auditor: Observation -> attacks -> scores against ground truth -> typed records.

Nothing is imported here eagerly: ``fedaudit report`` reads records through this package and
must not pay for torch (``GroundTruth`` holds tensors), so names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedaudit.audit.truth import GroundTruth

__all__ = ["GroundTruth"]


def __getattr__(name: str) -> Any:
    if name == "GroundTruth":
        from fedaudit.audit.truth import GroundTruth

        return GroundTruth
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
