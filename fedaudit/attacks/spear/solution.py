"""The batch from B directions (Sec. 4.3): scales from the bias gradient, X = Q^{-1} R, and the
forward-pass check of every recovered input."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from fedaudit.attacks.spear.factors import Factors

if TYPE_CHECKING:
    pass


class Solution:
    """The batch from B directions (Sec. 4.3) and its forward-pass check.

    Scale: the bias gradient is D 1 = L Q_hat s, solved for s by least squares; then
    X = Q^{-1} R. Check: every neuron a recovered input switches off (z < 0 beyond rounding)
    must have a zero entry in that input's column of D = L Q; a wrong input switches off
    neurons that carry gradient.
    """

    def __init__(self, f: Factors, bias_grad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.f, self.g, self.W, self.bias = f, bias_grad, weight, bias
        self.X: torch.Tensor | None = None
        self.found = 0
        self.consistent_count = 0

    @property
    def consistent(self) -> bool:
        return self.X is not None and self.consistent_count == self.f.batch

    def try_directions(self, directions: list[torch.Tensor]) -> None:
        self.found = max(self.found, len(directions))
        if len(directions) < self.f.batch:
            return
        q_hat = torch.stack(directions, dim=1)
        s = torch.linalg.lstsq(self.f.L @ q_hat, self.g[:, None]).solution.flatten()
        Q = q_hat * s
        X, info = torch.linalg.solve_ex(Q, self.f.R)
        if int(info) != 0 or not bool(torch.isfinite(X).all()):
            return  # a zero scale: these directions do not make a batch
        z = X @ self.W.T + self.bias  # B x m
        zero = torch.ones_like(z, dtype=torch.bool)
        zero[:, self.f.rows] = self.f.zeros(Q).T
        tol = math.sqrt(self.f.floor) * z.abs().amax(1, keepdim=True)
        ok = int((~((z < -tol) & ~zero).any(1)).sum())
        if self.X is None or ok >= self.consistent_count:
            self.X, self.consistent_count = X, ok
