"""Local training (FedSGD, FedAvg) and the data plan of a federation."""

from fedaudit.training.local import Batch, LocalUpdate, encode, evaluate, local_update

__all__ = ["Batch", "LocalUpdate", "encode", "evaluate", "local_update"]
