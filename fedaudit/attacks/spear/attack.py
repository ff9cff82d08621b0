"""The SPEAR attack: options, applicability, the search loop that alternates row reads and draws,
and the verdict."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from fedaudit.attacks.base import Attack, Budget, BudgetExceeded, Observation, Reconstruction, options
from fedaudit.attacks.spear import verdict
from fedaudit.attacks.spear.completion import row_directions
from fedaudit.attacks.spear.factors import F64, Factors, expected_samples, factor
from fedaudit.attacks.spear.pool import Pool, choose
from fedaudit.attacks.spear.sampling import ROW_CHUNK, DirectionSampler
from fedaudit.attacks.spear.solution import Solution

if TYPE_CHECKING:
    from fedaudit.models.adapters import DenseLayer


@options
class SpearOptions:
    """``audit.spear``."""

    layer: int = Field(default=0, ge=0)
    """Which fully connected ReLU layer to attack: 0 = the first (its inputs are the model's
    inputs), 1 = the next (its inputs are features), ..."""
    seed: int = 0
    """Seed of the row-subset sampling."""


class Spear(Attack):
    """SPEAR on one fully connected layer followed by ReLU (``audit.spear.layer``: its index
    among such layers, 0 = the first, whose inputs are the model's inputs)."""

    name = "spear"
    Options = SpearOptions

    @property
    def layer(self) -> int:
        return self.options.layer

    def _layer(self, observation: Observation) -> DenseLayer | None:
        relu = [d for d in observation.model.adapter.dense_layers if d.relu_after]
        return relu[self.layer] if self.layer < len(relu) else None

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        relu = [d for d in observation.model.adapter.dense_layers if d.relu_after]
        if not relu:
            return False, (
                "SPEAR needs a fully connected layer followed by ReLU (the sparsity of its gradient); "
                f"{observation.model.name} has none"
            )
        if self.layer >= len(relu):
            return False, f"audit.spear.layer = {self.layer}, but the model has {len(relu)} ReLU fully connected layers"
        layer = relu[self.layer]
        if layer.weight not in observation.update:
            return False, f"the layer {layer.module} is frozen: the update has no gradient for it"
        if layer.bias is None:
            return False, f"the layer {layer.module} has no bias: the scale of each input cannot be fixed"
        return True, ""

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        layer = self._layer(observation)
        grad_w = observation.gradient(layer.weight).to(self.device, F64)
        grad_b = observation.gradient(layer.bias).to(self.device, F64)
        if not (torch.isfinite(grad_w).all() and torch.isfinite(grad_b).all()):
            raise ValueError(f"the gradient of {layer.module} contains NaN or inf")
        noise = observation.gradient_noise_std
        f = factor(grad_w, float(torch.finfo(observation.model.dtype).eps), noise)
        (m, n), b = grad_w.shape, f.batch
        diag: dict[str, Any] = {
            "layer": layer.module,
            "width": m,
            "input_dim": n,
            "active_rows": len(f.rows),
            "batch_from_rank": b,
            "examples_reported": observation.protocol.num_examples,
            "device": str(self.device),
            "expected_samples_at_half_sparsity": expected_samples(len(f.rows), b, 0.5),
        }
        if noise > 0:
            diag.update(noise_std=noise, zero_tolerance=math.sqrt(f.floor))
        early = verdict.unidentifiable(observation, layer, f, m, n, diag)
        if early is not None:
            return early
        W = observation.global_weights[layer.weight].to(self.device, F64)
        bias = observation.global_weights[layer.bias].to(self.device, F64)
        solution = Solution(f, grad_b[f.rows], W, bias)
        started = time.perf_counter()
        ran_out = self._search(f, solution, budget, diag)
        diag.update(
            seconds_sampling=time.perf_counter() - started,
            directions_found=solution.found,
            activation_patterns_consistent=solution.consistent_count,
        )
        if solution.X is None:
            return verdict.incomplete(observation, f, solution.found, ran_out, diag)
        X = solution.X.cpu()
        inputs = X.reshape(b, *observation.model.input_shape) if layer.reads_input else X
        return verdict.verdict(observation, layer, b, solution.consistent_count, inputs, diag)

    def _search(self, f: Factors, solution: Solution, budget: Budget, diag: dict[str, Any]) -> bool:
        """Sample until the B sparsest independent directions give a consistent batch; True if the
        budget ran out first."""
        b = f.batch
        if b == 1:
            diag.update(samples=0, uniform_samples_needed=1.0, min_extra_zeros=0)
            solution.try_directions([torch.ones(1, dtype=F64, device=self.device)])
            return False
        gen = torch.Generator().manual_seed(self.options.seed)
        sampler = DirectionSampler(f, gen, self.device)
        diag["min_extra_zeros"] = sampler.min_extra
        pool = Pool(f, solution.W, solution.bias)
        # Rows of L read as rows of Q^{-1} (``row_directions``), in turns with the draws: whichever
        # has used less time goes next, so neither costs more than twice what the other would alone.
        seeds = list(f.L[sampler.distinct].split(ROW_CHUNK))
        peeled = 0  # known rows of Q^{-1} at the last ``deflated``
        spent = [0.0, 0.0]  # seconds on row seeds, on draws
        none = torch.empty(0, dtype=torch.long, device=self.device)
        ran_out = False
        try:
            while not solution.consistent:
                budget.check()
                turn = time.perf_counter()
                if not seeds and len(pool.inverse) > peeled:
                    peeled = len(pool.inverse)
                    seeds = list(pool.deflated().split(ROW_CHUNK))
                if seeds and spent[0] <= spent[1]:
                    q, p = row_directions(f, pool.basis, pool.inputs_map, pool.bias, seeds.pop(0))
                    changed = pool.add(q, torch.empty(0), [none] * q.shape[1], p)
                    spent[0] += time.perf_counter() - turn
                else:
                    changed = pool.add(*sampler.draw())
                    spent[1] += time.perf_counter() - turn
                if changed:
                    choose(pool, solution)
                    if not solution.consistent and pool.complete(b):
                        choose(pool, solution)
                    sampler.guide(*pool.tested())
        except BudgetExceeded:
            ran_out = True
        rho = pool.zero_fraction()
        need = expected_samples(len(f.rows), b, rho)
        diag.update(
            samples=sampler.samples,
            samples_per_second=sampler.samples / max(spent[1], 1e-9),
            seconds_on_row_seeds=spent[0],
            zero_fraction=rho,
            combinations_rejected=pool.rejected,
            uniform_samples_needed=need,
            uniform_seconds_needed=need / max(sampler.samples / max(spent[1], 1e-9), 1e-9),
        )
        return ran_out
