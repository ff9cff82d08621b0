"""A federation, by side: who holds what (``plan``), the client's update (``client``), the
server's view of an update (``server``), and updates sampled without a federation
(``sampled``, for ``fedaudit attack`` and the benchmarks)."""

from fedaudit.federation.client import client_update
from fedaudit.federation.plan import (
    FederatedData,
    build_global_model,
    client_shard,
    encode_examples,
    federated_data,
    holdout_batch,
    prepare,
    round_examples,
    sample_batches,
)
from fedaudit.federation.server import (
    ground_truth,
    lossy_transforms,
    observe,
    protocol_for,
    secure_sum,
    union_truth,
    update_noise_std,
)

__all__ = [
    "FederatedData",
    "build_global_model",
    "client_shard",
    "client_update",
    "encode_examples",
    "federated_data",
    "ground_truth",
    "holdout_batch",
    "lossy_transforms",
    "observe",
    "prepare",
    "protocol_for",
    "round_examples",
    "sample_batches",
    "secure_sum",
    "union_truth",
    "update_noise_std",
]
