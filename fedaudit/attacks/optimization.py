"""Optimization attacks: find inputs whose gradient matches the one the client sent.

* DLG (Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019): dummy inputs x' and soft
  dummy labels y', L-BFGS on the squared gradient distance ||dL(x', y')/dW - dL/dW||^2 (eq. 4
  of the paper, Algorithm 1).
* iDLG (Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020): the label of a
  single example first, from the sign of the classification head's gradient (Sec. 3; the
  ``labels`` attack), then DLG on the inputs alone.
* Inverting Gradients (Geiping, Bauermeister, Dröge, Moeller, NeurIPS 2020): labels as in iDLG,
  then 1 - cos(dL(x')/dW, dL/dW) + tv TV(x') (eq. 4), Adam on the sign of the input gradient,
  step decay of the learning rate, x' kept in the image box [0, 1], several restarts of which
  the one with the lowest gradient distance is kept (never the truth: attacks do not see it).
  The TV weight defaults to 0 here: see ``IGOptions.tv``.
* TAG, the text attack of the same family, is in ``fedaudit.attacks.tag``.

What the server knows: the global model, the gradient, the batch size (Flower's
``num-examples``) and, for text, the sequence length (the rows of the position-embedding
gradient that are non-zero; padding positions reach no loss). Nothing proves a match is the
client's data, so the status is ``partial``; the diagnostics give the final gradient distance,
the steps and gradient evaluations spent and the seconds. All four need one exact gradient
(FedSGD); images and table rows are optimized in float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction, options
from fedaudit.attacks.labels import LabelRecovery

F64 = torch.float64
LBFGS_ITERATIONS = 20
"""Iterations per L-BFGS step: torch's default ``max_iter``, which DLG's reference code keeps
(each of its 300 "iterations" is one ``optimizer.step``)."""


# ---------------------------------------------------------------- objectives


def squared_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """DLG, eq. 4: sum over parameters of ||g' - g||^2."""
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target))


def cosine_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """Inverting Gradients, eq. 4: 1 - <g', g> / (||g'|| ||g||) over all parameters at once."""
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norms = torch.sqrt(sum((g * g).sum() for g in grads)) * torch.sqrt(sum((t * t).sum() for t in target))
    return 1 - dot / norms.clamp_min(torch.finfo(norms.dtype).tiny)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels (images N x C x H x W), as in Inverting Gradients."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against class indices (long) or soft labels given as logits (DLG eq. 3)."""
    if labels.dtype == torch.long:
        return F.cross_entropy(logits, labels)
    return -(torch.softmax(labels, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()


# ---------------------------------------------------------------- optimizers


@dataclass
class Fit:
    """How one optimization run ended."""

    distance: float
    steps: int
    evaluations: int
    ran_out: bool = False
    memory_resets: int = 0


def lbfgs_fit(
    variables: list[torch.Tensor], objective: Callable[[], torch.Tensor], steps: int, budget: Budget, lr: float = 1.0
) -> Fit:
    """Minimize ``objective()`` over ``variables``: ``steps`` L-BFGS steps of up to
    ``LBFGS_ITERATIONS`` iterations with a strong Wolfe line search.

    torch's stopping tolerances are absolute (gradient entries below 1e-7, changes below 1e-9):
    a gradient distance that starts near 1e-6, as on a sigmoid network with small weights, ends
    the search at once, so they are off. A step that does not lower the objective instead clears
    the curvature memory (stale pairs can give a direction that is not a descent direction, and
    torch then repeats it forever); a second such step in a row ends the search.
    """
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        loss = objective()
        loss.backward(inputs=variables)
        return loss

    def fresh() -> torch.optim.LBFGS:
        return torch.optim.LBFGS(
            variables,
            lr=lr,
            max_iter=LBFGS_ITERATIONS,
            history_size=100,
            line_search_fn="strong_wolfe",
            tolerance_grad=0.0,
            tolerance_change=0.0,
        )

    optimizer, previous, stalled, resets, done, ran_out = fresh(), float("inf"), False, 0, 0, False
    try:
        for done in range(1, steps + 1):
            budget.check()
            value = float(optimizer.step(closure).detach())  # the objective where this step started
            if not value < previous:  # the last step made no progress (or the value is NaN)
                if stalled or value != value:
                    break
                optimizer, stalled, resets = fresh(), True, resets + 1
            else:
                stalled = False
            previous = value
    except BudgetExceeded:
        ran_out = True
    with torch.enable_grad():
        distance = float(objective().detach())
    return Fit(distance, done, evaluations, ran_out, resets)


def signed_adam_fit(
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    budget: Budget,
    lr: float,
    box: tuple[float, float] | None,
) -> Fit:
    """Inverting Gradients' optimizer: Adam on sign(d objective / dx), the learning rate divided by
    10 at 3/8, 5/8 and 7/8 of the steps, and x projected into ``box`` after every step.
    ``objective(x)`` returns (loss to minimize, gradient distance to report)."""
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = [int(steps * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    done, ran_out = 0, False
    try:
        for done in range(1, steps + 1):
            budget.check()
            optimizer.zero_grad()
            loss, _ = objective(x)
            loss.backward(inputs=[x])
            x.grad.sign_()
            optimizer.step()
            scheduler.step()
            if box is not None:
                with torch.no_grad():
                    x.clamp_(*box)
    except BudgetExceeded:
        ran_out = True
    with torch.enable_grad():
        distance = float(objective(x)[1].detach())
    return Fit(distance, done, done + 1, ran_out)


# ---------------------------------------------------------------- image and table attacks


class _GradientMatching(Attack):
    """Shared set-up: a float64 copy of the global model, the observed gradients of its trainable
    parameters, the dummy gradient of candidate inputs, and restarts keeping the lowest distance.
    Options: ``steps``, ``restarts`` and ``seed`` at least."""

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        if observation.model.input_shape is None:
            return False, f"{self.name} optimizes image or table inputs; {observation.model.name} reads text"
        if not observation.exact_gradient:
            return False, (
                f"{self.name} matches one gradient; this update is {observation.protocol.local_steps} "
                "local steps of FedAvg"
            )
        return True, ""

    def _setup(self, observation: Observation) -> tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor]]:
        model = observation.model_at(device=self.device, dtype=F64).model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n in observation.update]
        target = [observation.gradient(n).to(self.device, F64) for n, _ in named]
        return model, [p for _, p in named], target

    @staticmethod
    def _dummy_gradient(
        model: torch.nn.Module, params: list[torch.Tensor], x: torch.Tensor, labels: torch.Tensor
    ) -> list[torch.Tensor]:
        """dL(x', y')/dW with the graph kept, so a distance to the target can be differentiated in x'."""
        return list(torch.autograd.grad(soft_cross_entropy(model(x), labels), params, create_graph=True))

    @staticmethod
    def _is_image(observation: Observation) -> bool:
        return observation.model.table_schema is None and len(observation.model.input_shape) == 3

    def _recovered_labels(self, observation: Observation, budget: Budget, extra: dict[str, Any]) -> list[int] | None:
        """Labels from the head's gradient (iDLG's rule at b = 1, counts for batches), or None."""
        recovery = LabelRecovery()
        ok, why = recovery.applicable(observation)
        if not ok:
            extra["labels_reason"] = why
            return None
        found = recovery.run(observation, budget)
        extra.update(labels_status=found.status, labels_reason=found.reason)
        if found.labels is None or len(found.labels) != observation.protocol.num_examples:
            return None
        return list(found.labels)

    def _best_of_restarts(
        self,
        observation: Observation,
        one: Callable[[torch.Generator, torch.Tensor], tuple[Fit, list[int]]],
        started: float,
        extra: dict[str, Any],
    ) -> Reconstruction:
        """Run ``one(generator, x0)`` from x0 ~ N(0, 1) (DLG's ``torch.randn`` dummy data) once per
        restart, seeded; keep the run with the lowest gradient distance."""
        shape = (observation.protocol.num_examples, *observation.model.input_shape)
        best: tuple[Fit, torch.Tensor, list[int]] | None = None
        steps = evaluations = resets = restart = 0
        for restart in range(1, self.options.restarts + 1):
            gen = torch.Generator().manual_seed(self.options.seed + 1_000_003 * (restart - 1))
            x = torch.randn(shape, generator=gen, dtype=F64).to(self.device).requires_grad_(True)
            fit, labels = one(gen, x)
            steps, evaluations, resets = steps + fit.steps, evaluations + fit.evaluations, resets + fit.memory_resets
            if best is None or fit.distance < best[0].distance:
                best = (fit, x.detach().clone(), labels)
            if fit.ran_out:
                break
        fit, x, labels = best
        if self._is_image(observation):
            x = x.clamp(0.0, 1.0)  # images live in [0, 1]: public knowledge of the input format
        diag = {
            "gradient_distance": fit.distance,
            "steps": steps,
            "steps_budget": self.options.steps * self.options.restarts,
            "gradient_evaluations": evaluations,
            "restarts": restart,
            "seconds": time.perf_counter() - started,
            **({"lbfgs_memory_resets": resets} if resets else {}),
            **extra,
        }
        reason = (
            f"optimization reached gradient distance {fit.distance:.3g} after {steps} steps"
            f"{' (time budget)' if fit.ran_out else ''}; a match is not a proof"
        )
        return Reconstruction("partial", reason, inputs=x.detach().cpu().float(), labels=labels, diagnostics=diag)


@options
class DLGOptions:
    """``audit.dlg`` and ``audit.idlg``: L-BFGS as in DLG's reference code."""

    steps: int = Field(default=300, ge=1)
    """L-BFGS steps per restart, each up to 20 iterations with a strong Wolfe line search."""
    restarts: int = Field(default=1, ge=1)
    """Independent starts; the one with the lowest gradient distance is kept."""
    lr: float = Field(default=1.0, gt=0.0)
    seed: int = 0


class DLG(_GradientMatching):
    """DLG: L-BFGS on dummy inputs and soft labels, squared gradient distance (eq. 4; Algorithm 1)."""

    name = "dlg"
    Options = DLGOptions
    learns_labels: ClassVar[bool] = True
    """DLG optimizes soft labels with the inputs; iDLG reads them from the head's gradient first."""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        known = None if self.learns_labels else self._recovered_labels(observation, budget, extra)
        if known is None and not self.learns_labels:
            return Reconstruction(
                "failed",
                f"{self.name} needs the labels: {extra.get('labels_reason', '')}",
                diagnostics={"seconds": time.perf_counter() - started, **extra},
            )
        model, params, target = self._setup(observation)
        classes = int(observation.update[observation.model.adapter.head_weight].shape[0])

        def one(gen: torch.Generator, x: torch.Tensor) -> tuple[Fit, list[int]]:
            if known is not None:
                labels, variables = torch.tensor(known, device=self.device), [x]
            else:  # soft labels: free logits, a softmax inside the loss
                labels = torch.randn(x.shape[0], classes, generator=gen, dtype=F64).to(self.device)
                variables = [x, labels.requires_grad_(True)]
            fit = lbfgs_fit(
                variables,
                lambda: squared_distance(self._dummy_gradient(model, params, x, labels), target),
                self.options.steps,
                budget,
                self.options.lr,
            )
            return fit, known if known is not None else labels.argmax(-1).tolist()

        return self._best_of_restarts(observation, one, started, extra)


class IDLG(DLG):
    """iDLG: the label from the head's gradient (``labels`` attack), then DLG on the inputs alone."""

    name = "idlg"
    learns_labels = False

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        ok, why = super().applicable(observation)
        if not ok:
            return ok, why
        return LabelRecovery().applicable(observation)


@options
class IGOptions:
    """``audit.ig``: Inverting Gradients (signed Adam, step decay at 3/8, 5/8, 7/8 of the steps)."""

    steps: int = Field(default=2000, ge=1)
    """Adam steps per restart (the paper runs 24,000 on CIFAR-10 with a GPU)."""
    restarts: int = Field(default=2, ge=1)
    lr: float = Field(default=0.01, gt=0.0)
    """In [0, 1] pixel units. The paper's 0.1 is in normalized units (CIFAR-10 std ~0.25), about
    0.025 here; 0.01 did better on the LeNets here (benchmarks/results/optimization.md)."""
    tv: float = Field(default=0.0, ge=0.0)
    """Weight of the total-variation prior on images (ignored for table rows). The paper uses
    1e-4 (CIFAR-10) to 1e-1 (ImageNet) on ResNets, where the gradient leaves the image
    under-determined; on a LeNet with one image the cosine distance reaches ~1e-12 and any
    weight above that biases the result (tv = 1e-6 cost 12 dB on CIFAR-10), hence 0."""
    seed: int = 0


class InvertingGradients(_GradientMatching):
    """Inverting Gradients: 1 - cosine similarity of the whole gradients + tv * TV (eq. 4), signed
    Adam with step decay, boxed images, restarts scored by the gradient distance alone."""

    name = "ig"
    Options = IGOptions

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        known = self._recovered_labels(observation, budget, extra)
        if known is None:
            return Reconstruction(
                "failed",
                f"IG needs the labels and the head's gradient does not give them: {extra.get('labels_reason', '')}",
                diagnostics={"seconds": time.perf_counter() - started, **extra},
            )
        model, params, target = self._setup(observation)
        labels = torch.tensor(known, device=self.device)
        image = self._is_image(observation)
        box = (0.0, 1.0) if image else None

        def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            distance = cosine_distance(self._dummy_gradient(model, params, x, labels), target)
            return (distance + self.options.tv * total_variation(x) if image else distance), distance

        def one(gen: torch.Generator, x: torch.Tensor) -> tuple[Fit, list[int]]:
            if box is not None:  # the N(0, 1) start of the reference code, clipped into the box
                with torch.no_grad():
                    x.clamp_(*box)
            return signed_adam_fit(x, objective, self.options.steps, budget, self.options.lr, box), known

        return self._best_of_restarts(observation, one, started, extra)
