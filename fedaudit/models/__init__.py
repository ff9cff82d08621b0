"""Model zoo and architecture adapters."""

from fedaudit.models.adapters import Adapter, adapter_for
from fedaudit.models.zoo import ZOO_NAMES, ModelBundle, build_model

__all__ = ["Adapter", "ModelBundle", "ZOO_NAMES", "adapter_for", "build_model"]
