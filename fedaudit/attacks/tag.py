"""TAG: text from a transformer's gradient by optimizing continuous dummy token embeddings.

Deng et al., "TAG: Gradient Attack on Transformer-based Language Models", Findings of EMNLP
2021: continuous dummy token embeddings and soft labels, Adam on ||g' - g||_2^2 + alpha
||g' - g||_1 summed over the layers (Sec. 3), then every dummy embedding read back as the
vocabulary row closest in cosine. The sequence length is read from the rows of the
position-embedding gradient that are non-zero (padding positions reach no loss); the batch size
is Flower's ``num-examples``. Nothing proves a match, so the status is ``partial``. Needs one
exact gradient (FedSGD); optimized in the model's dtype.
"""

from __future__ import annotations

import time

import torch
from pydantic import Field

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction, options
from fedaudit.attacks.optimization import soft_cross_entropy


def tag_distance(grads: list[torch.Tensor], target: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """TAG, Sec. 3: sum over layers of ||g' - g||_2^2 + alpha ||g' - g||_1."""
    return sum(((g - t) ** 2).sum() + alpha * (g - t).abs().sum() for g, t in zip(grads, target))


@options
class TagOptions:
    """``audit.tag``: TAG on text (Adam on dummy token embeddings and soft labels)."""

    steps: int = Field(default=2000, ge=1)
    """Adam steps (LAMP's re-implementation of TAG runs 2,500); the time budget usually ends it first."""
    lr: float = Field(default=0.25, gt=0.0)
    """Adam learning rate in units of the embedding matrix's standard deviation."""
    alpha: float = Field(default=0.01, ge=0.0)
    """Weight of the L1 term of the gradient distance (L2 + alpha * L1; 0.01 as in LAMP's TAG runs)."""
    seed: int = 0


class TAG(Attack):
    """TAG: continuous dummy token embeddings and soft labels, Adam on the L2 + alpha L1 gradient
    distance, tokens read back as the nearest embedding rows (cosine)."""

    name = "tag"
    Options = TagOptions

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        bundle, adapter = observation.model, observation.model.adapter
        if not bundle.is_text:
            return False, f"TAG optimizes token embeddings; {bundle.name} reads images or table rows"
        if bundle.task != "classification":
            return False, "TAG as published matches a classifier's gradient with soft labels; this model is a causal LM"
        if not observation.exact_gradient:
            return False, (
                f"TAG matches one gradient; this update is {observation.protocol.local_steps} local steps of FedAvg"
            )
        positions = adapter.first_input.positions if adapter.first_input is not None else None
        if positions is None:
            return False, (
                f"the sequence length is read from the position-embedding gradient and {bundle.name} "
                "has no position-embedding table (rotary positions)"
            )
        if positions not in observation.update:
            return False, f"the position embeddings ({positions}) are frozen, so the sequence length is unknown"
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        adapter = observation.model.adapter
        used = torch.nonzero(observation.gradient(adapter.first_input.positions).abs().amax(dim=1) > 0)
        if used.numel() == 0:
            return Reconstruction(
                "failed",
                "the position-embedding gradient is zero, so the sequence length is unknown",
                diagnostics={"seconds": time.perf_counter() - started},
            )
        length = int(used.max()) + 1  # positions past the longest sequence are never looked up
        bundle = observation.model_at(device=self.device)
        table = observation.global_weights[adapter.embedding].to(self.device, bundle.dtype)
        x, soft, distance, done, ran_out = self._fit(observation, bundle, table, length, budget)
        ids = nearest_rows(x, table).cpu()
        diag = {
            "gradient_distance": distance,
            "steps": done,
            "steps_budget": self.options.steps,
            "sequence_length": length,
            "seconds": time.perf_counter() - started,
            "device": str(self.device),
        }
        reason = (
            f"optimization reached gradient distance {distance:.3g} after {done} steps"
            f"{' (time budget)' if ran_out else ''}; tokens are the nearest embedding rows, not a proof"
        )
        return Reconstruction(
            "partial", reason, sequences=ids.tolist(), labels=soft.argmax(-1).tolist(), diagnostics=diag
        )

    def _fit(self, observation: Observation, bundle, table: torch.Tensor, length: int, budget: Budget):
        """Adam on dummy embeddings x (B x n x d) and soft labels: (x, soft, distance, steps, ran out)."""
        dtype, adapter = bundle.dtype, observation.model.adapter
        # The dummy embeddings bypass the lookup, so the embedding matrix's gradient is not matched.
        named = [
            (n, p)
            for n, p in bundle.model.named_parameters()
            if p.requires_grad and n in observation.update and n != adapter.embedding
        ]
        params = [p for _, p in named]
        target = [observation.gradient(n).to(self.device, dtype) for n, _ in named]
        b, classes = observation.protocol.num_examples, int(observation.update[adapter.head_weight].shape[0])
        gen = torch.Generator().manual_seed(self.options.seed)
        scale = float(table.std())  # start at the embeddings' own scale (public weights)
        x = (scale * torch.randn(b, length, table.shape[1], generator=gen, dtype=dtype)).to(self.device)
        soft = torch.randn(b, classes, generator=gen, dtype=dtype).to(self.device)
        x.requires_grad_(True)
        soft.requires_grad_(True)
        mask = torch.ones(b, length, dtype=torch.long, device=self.device)
        optimizer = torch.optim.Adam([x, soft], lr=self.options.lr * scale)
        distance, done, ran_out = float("inf"), 0, False
        try:
            for done in range(1, self.options.steps + 1):
                budget.check()
                optimizer.zero_grad()
                logits = bundle.logits_from_embeddings(x, mask)
                grads = torch.autograd.grad(soft_cross_entropy(logits, soft), params, create_graph=True)
                loss = tag_distance(list(grads), target, self.options.alpha)
                loss.backward(inputs=[x, soft])
                optimizer.step()
                distance = float(loss.detach())
        except BudgetExceeded:
            ran_out = True
        return x.detach(), soft.detach(), distance, done, ran_out


def nearest_rows(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """TAG's read-back: each dummy embedding (..., d) as the vocabulary row closest in cosine."""
    tiny = torch.finfo(table.dtype).tiny
    with torch.no_grad():
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(tiny)
        rows_unit = table / table.norm(dim=-1, keepdim=True).clamp_min(tiny)
        return (unit @ rows_unit.T).argmax(-1)
