"""DP-SGD on the client with Opacus (Abadi et al. 2016, Algorithm 1), and the privacy account
of the rounds a client has trained.

Mechanics (Opacus ``GradSampleModule`` for per-example gradients, ``DPOptimizer`` for clipping
and noise), for a step over a batch of B examples with per-example gradients g_i:

    g~ = ( sum_i g_i * min(1, C / (||g_i|| + 1e-6)) + N(0, sigma^2 C^2 I) ) / B

(C = ``max_grad_norm``, sigma = ``noise_multiplier``; the 1e-6 is Opacus's stabilizer).

* FedSGD: one step over the round's batch (sample rate 1, B = its size); the client sends g~.
* FedAvg: ``local_epochs`` x ceil(N / m) steps of the local optimizer on g~ (m =
  ``mini_batch_size``, N = the round's examples). Shuffled chunks of m (B = the chunk's size), or
  with ``poisson_sampling`` every example drawn independently with probability q = m / N
  (B = m, Opacus's expected batch size; an empty draw is a step of pure noise).
* Text models get per-example ``position_ids`` (B x n), without which the per-example gradients
  of absolute position embeddings (GPT-2, BERT) are wrong. GPT-2's Conv1D and other layers
  without an Opacus grad sampler go through functorch. A causal-LM loss is the mean over all
  tokens of the batch, so "example i's gradient" is B x its share of that mean.
* The noise is drawn from a generator seeded with the client's round seed (reproducible
  simulations, not Opacus's ``secure_mode``).

Accounting: the sampled Gaussian mechanism at rate q, ``steps`` per round, composed over the t
rounds a client has trained: Opacus's accountant with history [(sigma, q, steps * t)] at delta.
The privacy unit is one example of the client's data for a round. sigma = 0 gives epsilon = inf.
PRV discretizes the privacy loss on a grid that grows like the epsilon it measures; when that
grid would exceed ``PRV_MAX_POINTS`` (tiny sigma: epsilon in the thousands) or PRV fails
numerically, the RDP bound (also a valid upper bound) is reported instead, with a warning.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV, compute_safe_domain_size
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator

from fedaudit.config import DPSGDConfig, TrainingConfig
from fedaudit.models import ModelBundle
from fedaudit.training.local import Batch, DPSteps, LocalUpdate, local_optimizer, loss_fn

#: Largest PRV discretization grid (points) computed before falling back to the RDP bound.
PRV_MAX_POINTS = 10_000_000


def dp_local_update(
    bundle: ModelBundle, batch: Batch, training: TrainingConfig, dp: DPSGDConfig, seed: int
) -> LocalUpdate:
    """The round's local training under DP-SGD: FedSGD sends the privatized gradient of the whole
    batch, FedAvg the weights after DP-SGD steps of the local optimizer."""
    model = bundle.model
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"defenses.dp_sgd: Opacus cannot privatize this model: {errors[0]}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    n = len(batch)
    fedsgd = training.mode == "fedsgd"
    m = n if fedsgd else min(training.mini_batch_size, n)
    optimizer = DPOptimizer(
        local_optimizer(params, training),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=m,
        generator=torch.Generator().manual_seed(seed),
    )
    # Hooks on the model's own submodules (strict=False: constant buffers such as BERT's
    # position_ids are not state that per-example gradients would miss; BatchNorm-like layers
    # were rejected above). The model is unwrapped again whatever happens.
    grad_sample = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    try:
        if fedsgd:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(bundle, batch, per_example_positions=True)
            _backward(loss)
            optimizer.pre_step()  # clip, sum, noise, divide by B: p.grad is what the client sends
            grads = {name: p.grad.detach().clone() for name, p in named}
            optimizer.zero_grad(set_to_none=True)
            return LocalUpdate("gradient", grads, n, 1, loss.item(), DPSteps(dp.noise_multiplier, 1.0, 1))
        steps, losses = _dp_steps(bundle, batch, training, dp, optimizer, params, m, seed)
        optimizer.zero_grad(set_to_none=True)
    finally:
        grad_sample.to_standard_module()
    return LocalUpdate(
        "weights",
        {k: v.clone() for k, v in bundle.trainable_state().items()},
        n,
        steps,
        sum(losses) / max(len(losses), 1),
        DPSteps(dp.noise_multiplier, m / n, steps),
    )


def _dp_steps(
    bundle: ModelBundle,
    batch: Batch,
    training: TrainingConfig,
    dp: DPSGDConfig,
    optimizer: DPOptimizer,
    params: list[torch.nn.Parameter],
    m: int,
    seed: int,
) -> tuple[int, list[float]]:
    """FedAvg's local DP-SGD steps; returns (steps, losses of the non-empty steps)."""
    n = len(batch)
    generator = torch.Generator().manual_seed(seed)
    steps, losses = 0, []
    for _ in range(training.local_epochs):
        if dp.poisson_sampling:
            draws = [
                torch.nonzero(torch.rand(n, generator=generator) < m / n).flatten() for _ in range(math.ceil(n / m))
            ]
        else:
            draws = list(torch.randperm(n, generator=generator).split(m))
        for chunk in draws:
            optimizer.zero_grad(set_to_none=True)
            if len(chunk):
                loss = loss_fn(bundle, batch.select(chunk), per_example_positions=True)
                _backward(loss)
                losses.append(loss.item())
            else:  # an empty Poisson draw: no per-example gradients, the step adds noise only
                for p in params:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            if not dp.poisson_sampling:
                optimizer.expected_batch_size = len(chunk)
            optimizer.step()
            steps += 1
    return steps, losses


def _backward(loss: torch.Tensor) -> None:
    with warnings.catch_warnings():
        # Opacus's full backward hooks on a first layer whose input needs no gradient (torch warns)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        loss.backward()


def epsilon(steps: DPSteps, rounds: int, dp: DPSGDConfig) -> float:
    """Epsilon at ``dp.delta`` after ``rounds`` rounds of ``steps`` (Opacus's ``dp.accountant``)."""
    if steps.noise_multiplier == 0:
        return math.inf
    history = [(steps.noise_multiplier, steps.sample_rate, steps.steps * rounds)]
    if dp.accountant == "prv":
        try:
            if _prv_grid_points(steps, rounds, dp.delta) <= PRV_MAX_POINTS:
                return _accountant_epsilon("prv", history, dp.delta)
            reason = f"its grid would exceed {PRV_MAX_POINTS} points"
        except (RuntimeError, ValueError, FloatingPointError) as err:
            reason = str(err)
        warnings.warn(
            f"defenses.dp_sgd.accountant = 'prv': sigma = {steps.noise_multiplier} is too small for "
            f"PRV ({reason}); reporting the RDP bound",
            RuntimeWarning,
            stacklevel=2,
        )
    return _accountant_epsilon("rdp", history, dp.delta)


def _accountant_epsilon(name: str, history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = create_accountant(name)
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0) branches inside PRV at q = 1
        return float(accountant.get_epsilon(delta=delta))


def _prv_grid_points(steps: DPSteps, rounds: int, delta: float, eps_error: float = 0.01) -> float:
    """Points of the grid Opacus's PRVAccountant.get_epsilon would discretize on (its defaults:
    eps_error 0.01, delta_error delta / 1000; domain and mesh as in ``PRVAccountant._get_domain``)."""
    delta_error = delta / 1000
    compositions = steps.steps * rounds
    prv = PoissonSubsampledGaussianPRV(steps.sample_rate, steps.noise_multiplier)
    half_width = compute_safe_domain_size([prv], [compositions], eps_error=eps_error, delta_error=delta_error)
    mesh = eps_error / np.sqrt(compositions * np.log(12 / delta_error) / 2)
    return 2 * half_width / mesh
