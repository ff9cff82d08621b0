"""Optimization attacks: find inputs whose gradient matches the one the client sent.

* DLG (Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019): dummy inputs and soft
  dummy labels, L-BFGS on the squared distance between the dummy and the observed gradients.
* iDLG (Zhao, Mopuri, Bilen, 2020): the label of a single example first, from the sign of the
  classification head's gradient (the ``labels`` attack), then DLG on the inputs only.
* Inverting Gradients (Geiping, Bauermeister, Dröge, Moeller, NeurIPS 2020): cosine distance
  between the gradients plus total variation of the images, Adam, several restarts; the restart
  with the lowest gradient distance is kept (never the truth: the attack does not see it).

They work on image and table models with FedSGD (one gradient); nothing proves a match is the
client's data, so the status is ``partial`` and the diagnostics give the final gradient distance,
the steps taken and the seconds spent. Inputs are optimized in [0, 1] (images) through a sigmoid
of free parameters, or freely (standardized table rows).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from fedaudit.attacks.base import Budget, BudgetExceeded, Reconstruction, resolve_device
from fedaudit.attacks.labels import LabelRecovery

if TYPE_CHECKING:
    from fedaudit.audit.observation import Observation

F64 = torch.float64


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (images N x C x H x W)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class _GradientMatching:
    """Shared set-up: the global model, the observed gradients of its trainable parameters, and
    the dummy gradient of candidate inputs (with labels as soft distributions or fixed classes)."""

    name: ClassVar[str]

    def __init__(self, device: str = "auto", steps: int = 300, restarts: int = 1, seed: int = 0) -> None:
        self.device = resolve_device(device)
        self.steps, self.restarts, self.seed = steps, restarts, seed

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        if observation.model.input_shape is None:
            return False, f"{self.name} optimizes image or table inputs; {observation.model.name} reads text"
        if not observation.exact_gradient:
            return False, (f"{self.name} matches one gradient; this update is {observation.protocol.local_steps} "
                           "local steps of FedAvg")
        return True, ""

    def _setup(self, observation: Observation) -> tuple[torch.nn.Module, list[str], list[torch.Tensor]]:
        model = observation.global_model().to(self.device, F64)
        names = [n for n, p in model.named_parameters() if p.requires_grad and n in observation.update]
        target = [observation.gradient(n).to(self.device, F64) for n in names]
        return model, names, target

    @staticmethod
    def _dummy_gradient(model: torch.nn.Module, names: list[str], x: torch.Tensor,
                        labels: torch.Tensor) -> list[torch.Tensor]:
        """Gradient of the mean cross-entropy at ``x``; ``labels`` are class indices or soft rows."""
        params = dict(model.named_parameters())
        logits = model(x)
        if labels.dtype == torch.long:
            loss = F.cross_entropy(logits, labels)
        else:
            loss = -(torch.softmax(labels, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()
        return list(torch.autograd.grad(loss, [params[n] for n in names], create_graph=True))

    def _inputs(self, observation: Observation, raw: torch.Tensor) -> torch.Tensor:
        """Images live in [0, 1]: a sigmoid of free parameters; table rows are free."""
        return torch.sigmoid(raw) if observation.model.table_schema is None else raw

    def _finish(self, observation: Observation, x: torch.Tensor, labels: list[int], distance: float,
                steps: int, ran_out: bool, started: float, extra: dict[str, Any]) -> Reconstruction:
        diag = {"gradient_distance": distance, "steps": steps, "seconds": time.perf_counter() - started, **extra}
        reason = (f"optimization reached gradient distance {distance:.3g} after {steps} steps"
                  f"{' (time budget)' if ran_out else ''}; a match is not a proof")
        return Reconstruction("partial", reason, inputs=x.detach().cpu().float(), labels=labels, diagnostics=diag)


class DLG(_GradientMatching):
    """DLG: L-BFGS on dummy inputs and soft labels, squared gradient distance (eq. 4 of the paper)."""

    name = "dlg"

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        model, names, target = self._setup(observation)
        b = observation.protocol.num_examples
        classes = int(observation.update[observation.model.adapter.head_weight].shape[0])
        gen = torch.Generator().manual_seed(self.seed)
        raw = torch.randn(b, *observation.model.input_shape, generator=gen, dtype=F64).to(self.device)
        raw.requires_grad_(True)
        extra: dict[str, Any] = {}
        known = self._known_labels(observation, budget, extra)
        if known is not None:
            labels = torch.tensor(known, device=self.device)
            variables = [raw]
        else:
            labels = torch.randn(b, classes, generator=gen, dtype=F64).to(self.device).requires_grad_(True)
            variables = [raw, labels]
        optimizer = torch.optim.LBFGS(variables, lr=1.0, max_iter=1, history_size=100, line_search_fn="strong_wolfe")
        distance, steps, ran_out = float("inf"), 0, False

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            grads = self._dummy_gradient(model, names, self._inputs(observation, raw), labels)
            loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, target))
            loss.backward()
            return loss

        try:
            for steps in range(1, self.steps + 1):
                budget.check()
                distance = float(optimizer.step(closure).detach())
                if distance <= torch.finfo(F64).eps:
                    break
        except BudgetExceeded:
            ran_out = True
        final = known if known is not None else labels.argmax(-1).tolist()
        return self._finish(observation, self._inputs(observation, raw), final, distance, steps, ran_out, started,
                            extra)

    def _known_labels(self, observation: Observation, budget: Budget, extra: dict[str, Any]) -> list[int] | None:
        """DLG learns the labels with the inputs (soft labels)."""
        return None


class IDLG(DLG):
    """iDLG: the label from the head's gradient (``labels`` attack), then DLG on the inputs alone."""

    name = "idlg"

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        ok, why = super().applicable(observation)
        if not ok:
            return ok, why
        return LabelRecovery().applicable(observation)

    def _known_labels(self, observation: Observation, budget: Budget, extra: dict[str, Any]) -> list[int] | None:
        found = LabelRecovery().run(observation, budget)
        extra.update(labels_status=found.status, labels_reason=found.reason)
        return list(found.labels)


class InvertingGradients(_GradientMatching):
    """Inverting Gradients: 1 - cosine similarity of the whole gradients + alpha * TV, Adam, restarts."""

    name = "ig"

    def __init__(self, device: str = "auto", steps: int = 2000, restarts: int = 2, seed: int = 0,
                 tv: float = 1e-2, lr: float = 0.1) -> None:
        super().__init__(device, steps, restarts, seed)
        self.tv, self.lr = tv, lr

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        model, names, target = self._setup(observation)
        b = observation.protocol.num_examples
        extra: dict[str, Any] = {}
        found = LabelRecovery().run(observation, budget) if LabelRecovery().applicable(observation)[0] else None
        if found is None or found.labels is None or len(found.labels) != b:
            return Reconstruction("failed", "the labels could not be recovered from the head's gradient, and IG "
                                  "needs them", diagnostics={"seconds": time.perf_counter() - started})
        labels = torch.tensor(found.labels, device=self.device)
        extra.update(labels_status=found.status)
        target_norm = torch.sqrt(sum((t * t).sum() for t in target))
        images = observation.model.table_schema is None and len(observation.model.input_shape) == 3
        best: tuple[float, torch.Tensor] | None = None
        steps, ran_out, distance = 0, False, float("inf")
        gen = torch.Generator().manual_seed(self.seed)
        try:
            for _ in range(self.restarts):
                raw = torch.randn(b, *observation.model.input_shape, generator=gen, dtype=F64).to(self.device)
                raw.requires_grad_(True)
                optimizer = torch.optim.Adam([raw], lr=self.lr)
                for steps in range(1, self.steps + 1):
                    budget.check()
                    optimizer.zero_grad()
                    x = self._inputs(observation, raw)
                    grads = self._dummy_gradient(model, names, x, labels)
                    dot = sum((g * t).sum() for g, t in zip(grads, target))
                    norm = torch.sqrt(sum((g * g).sum() for g in grads))
                    loss = 1 - dot / (norm * target_norm).clamp_min(torch.finfo(F64).tiny)
                    distance = float(loss)
                    if images:
                        loss = loss + self.tv * total_variation(x)
                    loss.backward()
                    optimizer.step()
                if best is None or distance < best[0]:
                    best = (distance, self._inputs(observation, raw).detach())
        except BudgetExceeded:
            ran_out = True
            if best is None:
                best = (distance, self._inputs(observation, raw).detach())
        return self._finish(observation, best[1], labels.tolist(), best[0], steps, ran_out, started, extra)
