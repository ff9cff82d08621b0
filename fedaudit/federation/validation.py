"""What the server accepts from a client: an update with the global model's schema.

A reply is checked before anything else touches it (the auditor, secure aggregation, the
aggregating strategy): the same tensor names, shapes and dtypes as the global weights, every
entry finite, and a ``num-examples`` that is a whole number between 1 and the examples a client
uses in a round (``training.batch_size``), since it weights the client in FedAvg. Each check
returns the first problem as a short reason naming the tensor or the key, or None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from fedaudit.safety import clean_text

#: Names quoted in a reason are cut to this length (they come from the client).
NAME_CHARS = 60


def _name(key: object) -> str:
    text = clean_text(key)
    return repr(text if len(text) <= NAME_CHARS else text[:NAME_CHARS] + "...")


def tensors_problem(sent: Mapping[str, Any], global_weights: Mapping[str, torch.Tensor]) -> str | None:
    """The first way ``sent`` differs from the global model's schema or is not finite, or None."""
    missing = [k for k in global_weights if k not in sent]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        return f"tensor {_name(missing[0])} is missing{more}"
    extra = [k for k in sent if k not in global_weights]
    if extra:
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        return f"tensor {_name(extra[0])} is not in the global model{more}"
    for name, reference in global_weights.items():
        problem = _tensor_problem(sent[name], reference)
        if problem is not None:
            return f"tensor {_name(name)}: {problem}"
    return None


def _tensor_problem(value: Any, reference: torch.Tensor) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}, not a tensor"
    if tuple(value.shape) != tuple(reference.shape):
        return f"shape {tuple(value.shape)}, the global model's is {tuple(reference.shape)}"
    if value.dtype != reference.dtype:
        return f"dtype {value.dtype}, the global model's is {reference.dtype}"
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = value[~finite]
        kinds = [kind for kind, hit in (("NaN", bad.isnan()), ("inf", bad.isinf())) if bool(hit.any())]
        return f"{bad.numel()} of {value.numel()} entries are {' and '.join(kinds)}"
    return None


def examples_problem(value: Any, batch_size: int) -> str | None:
    """Why ``num-examples`` cannot weight this update (it must be a whole number in 1..batch_size)."""
    if value is None:
        return "num-examples is missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"num-examples is a {type(value).__name__}, not a number"
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return f"num-examples = {value!r} is not a whole number"
    if not 1 <= value <= batch_size:
        return f"num-examples = {int(value)} is outside 1..{batch_size} (training.batch_size)"
    return None


def weights_problem(weights: Mapping[str, torch.Tensor]) -> str | None:
    """The first non-finite tensor of an aggregated global model, or None."""
    for name, value in weights.items():
        if not bool(torch.isfinite(value).all()):
            return f"the aggregate's tensor {_name(name)} is not finite"
    return None
