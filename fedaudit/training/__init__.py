"""The client's local training: FedSGD (one gradient), FedAvg (local epochs), DP-SGD (Opacus),
and the server's evaluation of a global model on held-out data."""

from fedaudit.training.local import Batch, LocalUpdate, encode, evaluate
from fedaudit.training.update import local_update

__all__ = ["Batch", "LocalUpdate", "encode", "evaluate", "local_update"]
