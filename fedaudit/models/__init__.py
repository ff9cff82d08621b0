"""Model zoo, architecture adapters and the layer-2 probe: the only code that knows transformers internals."""

from fedaudit.models.adapters import Adapter, adapter_for
from fedaudit.models.probe import Layer2Probe
from fedaudit.models.zoo import ZOO_NAMES, ModelBundle, build_model

__all__ = ["Adapter", "Layer2Probe", "ModelBundle", "ZOO_NAMES", "adapter_for", "build_model"]
