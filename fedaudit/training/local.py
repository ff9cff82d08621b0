"""Local training exactly as a client runs it: FedSGD (one gradient) or FedAvg (local SGD epochs).

What leaves the client, and why:
* FedSGD replies carry the gradient itself (mean over the batch) and the server applies the
  step. The auditor sees the gradient in the model's dtype, with nothing rounded away.
* FedAvg replies carry the new weights after ``local_epochs`` of mini-batch steps with the
  local optimizer (``training.optimizer``: plain SGD, p <- p - lr * g, or torch's Adam, fresh each
  round), as a real client sends them. The server differences
  them against the weights it sent, in float64. With float32 weights a step smaller than half
  a float32 ulp of a weight rounds away inside the client, so the difference can under-state
  what the client touched; ``model.dtype = "float64"`` removes that effect.
* With ``[defenses.dp_sgd]`` both modes train through Opacus (``fedaudit.training.dp``): what
  leaves is the privatized gradient (FedSGD) or the weights after DP-SGD steps (FedAvg).
  ``fedaudit.training.update.local_update`` picks the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from fedaudit.config import TrainingConfig
from fedaudit.models import ModelBundle


@dataclass(frozen=True)
class Batch:
    """A client's examples as the model reads them: token ids with their mask (text) or float
    features (images N x C x H x W, table rows N x F)."""

    labels: torch.Tensor
    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    features: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, index: torch.Tensor) -> Batch:
        return Batch(**{k: None if v is None else v[index] for k, v in self.tensors().items()})

    def inputs(self) -> dict[str, torch.Tensor]:
        """What the model reads (``ModelBundle.logits``)."""
        return {k: v for k, v in self.tensors().items() if v is not None and k != "labels"}

    def tensors(self) -> dict[str, torch.Tensor | None]:
        return {
            "labels": self.labels,
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "features": self.features,
        }


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], labels: list[int], max_seq_len: int) -> Batch:
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_seq_len, return_tensors="pt")
    return Batch(torch.tensor(labels, dtype=torch.long), enc["input_ids"], enc["attention_mask"])


def loss_fn(bundle: ModelBundle, batch: Batch, per_example_positions: bool = False) -> torch.Tensor:
    """Mean cross-entropy, computed in the model's dtype (the built-in causal-LM loss is float32).

    ``per_example_positions``: pass text models ``position_ids`` of shape B x n (the values they
    use by default, 0..n-1), so that per-example gradient hooks (Opacus) see one row of position
    ids per example; the default 1 x n row would give the position embeddings wrong per-example
    gradients."""
    inputs = batch.inputs()
    if per_example_positions and batch.input_ids is not None:
        n = batch.input_ids.shape[1]
        inputs["position_ids"] = torch.arange(n).repeat(len(batch), 1).contiguous()
    logits = bundle.logits(inputs)
    if bundle.task == "classification":
        return F.cross_entropy(logits, batch.labels)
    targets = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)


@dataclass(frozen=True)
class DPSteps:
    """One round of DP-SGD as the accountant sees it: ``steps`` Gaussian steps at ``sample_rate``."""

    noise_multiplier: float
    sample_rate: float
    steps: int


@dataclass(frozen=True)
class LocalUpdate:
    kind: Literal["gradient", "weights"]
    tensors: dict[str, torch.Tensor]
    num_examples: int
    steps: int
    loss: float
    privacy: DPSteps | None = None
    """DP-SGD only: what this round adds to the client's privacy account (``fedaudit.training.dp``)."""


class PlainSGD(torch.optim.Optimizer):
    """SGD without momentum, exactly ``p -= lr * g``. ``torch.optim.SGD`` computes
    ``p + (-lr) * g`` in one fused operation, which differs from it in the last bit."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad)


def local_optimizer(params: list[torch.nn.Parameter], training: TrainingConfig) -> torch.optim.Optimizer:
    """The client's optimizer for one round (``training.optimizer``)."""
    if training.optimizer == "adam":
        return torch.optim.Adam(params, lr=training.lr)
    return PlainSGD(params, lr=training.lr)


def _gradients(bundle: ModelBundle, batch: Batch) -> tuple[dict[str, torch.Tensor], float]:
    params = dict(bundle.model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    bundle.model.zero_grad(set_to_none=True)
    loss = loss_fn(bundle, batch)
    loss.backward()
    grads = {
        n: (params[n].grad.detach().clone() if params[n].grad is not None else torch.zeros_like(params[n]))
        for n in trainable
    }
    bundle.model.zero_grad(set_to_none=True)
    return grads, loss.item()


def fedsgd(bundle: ModelBundle, batch: Batch) -> LocalUpdate:
    """One gradient of the mean loss over the batch."""
    grads, loss = _gradients(bundle, batch)
    return LocalUpdate("gradient", grads, len(batch), 1, loss)


def fedavg(bundle: ModelBundle, batch: Batch, training: TrainingConfig, seed: int) -> LocalUpdate:
    """``local_epochs`` passes of mini-batch steps with the local optimizer over the batch,
    shuffled per epoch with ``seed``."""
    params = [p for p in bundle.model.parameters() if p.requires_grad]
    optimizer = local_optimizer(params, training)
    generator = torch.Generator().manual_seed(seed)
    steps, losses = 0, []
    for _ in range(training.local_epochs):
        order = torch.randperm(len(batch), generator=generator)
        for chunk in order.split(training.mini_batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(bundle, batch.select(chunk))
            loss.backward()
            optimizer.step()
            steps, losses = steps + 1, losses + [loss.item()]
    optimizer.zero_grad(set_to_none=True)
    return LocalUpdate(
        "weights",
        {k: v.clone() for k, v in bundle.trainable_state().items()},
        len(batch),
        steps,
        sum(losses) / len(losses),
    )


@torch.no_grad()
def evaluate(bundle: ModelBundle, batch: Batch, chunk: int = 32) -> dict[str, float]:
    """Held-out loss and accuracy (classification: label accuracy; causal LM: next-token accuracy)."""
    bundle.model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for index in torch.arange(len(batch)).split(chunk):
        part = batch.select(index)
        logits = bundle.logits(part.inputs())
        if bundle.task == "classification":
            total_loss += float(F.cross_entropy(logits, part.labels, reduction="sum"))
            correct += int((logits.argmax(-1) == part.labels).sum())
            count += len(part)
        else:
            targets = part.input_ids[:, 1:]
            mask = part.attention_mask[:, 1:].bool()
            flat = logits[:, :-1][mask]
            total_loss += float(F.cross_entropy(flat, targets[mask], reduction="sum"))
            correct += int((flat.argmax(-1) == targets[mask]).sum())
            count += int(mask.sum())
    bundle.model.train()
    return {"loss": total_loss / max(count, 1), "accuracy": correct / max(count, 1)}
