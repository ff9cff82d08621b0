"""The server's view of an update: what an honest-but-curious server legitimately sees.

A reply becomes an Observation (the public protocol, the global weights, the update as a float64
weight difference or the gradient itself) and, in simulation only, a GroundTruth for the scorer.
Secure aggregation reveals only a group's example-weighted mean; the noise the scenario's
defenses add is public protocol knowledge, computed here from their settings.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from fedaudit.attacks.base import Observation, Protocol
from fedaudit.audit.truth import GroundTruth
from fedaudit.config import Scenario
from fedaudit.models import ModelBundle
from fedaudit.training.local import Batch

#: Update defenses that change values entry by entry (noise is accounted for by its std; clipping
#: scales the whole update, which leaves spans and input-to-bias ratios as they were).
LOSSY_TRANSFORMS = ("prune", "quantize")


def protocol_for(scenario: Scenario, num_examples: int, group_size: int = 1) -> Protocol:
    t = scenario.training
    protocol = Protocol(
        mode=t.mode,
        lr=t.lr,
        local_epochs=t.local_epochs,
        batch_size=t.batch_size,
        mini_batch_size=t.mini_batch_size,
        max_seq_len=t.max_seq_len,
        num_examples=num_examples,
        optimizer=t.optimizer,
        group_size=group_size,
        lossy_transforms=lossy_transforms(scenario),
    )
    return replace(protocol, noise_std=update_noise_std(scenario, protocol.local_steps) / math.sqrt(group_size))


def lossy_transforms(scenario: Scenario) -> tuple[str, ...]:
    """The update defenses in force that change values (pruning at a fraction 0 with no threshold
    changes nothing)."""
    d = scenario.defenses
    return tuple(
        k
        for k in d.order
        if k in LOSSY_TRANSFORMS and not (k == "prune" and d.prune.fraction == 0 and d.prune.threshold is None)
    )


def update_noise_std(scenario: Scenario, steps: int) -> float:
    """Std of the noise per entry of one client's update (gradient for FedSGD, weight difference
    for FedAvg) that the scenario's defenses add, from their public settings; independent
    sources add in variance. (A group mean under secure aggregation divides it by sqrt(K).)

    * DP-SGD: N(0, sigma^2 C^2) on the sum of clipped gradients, divided by the batch: sigma C / B
      per step (FedSGD, B = batch_size); FedAvg SGD moves the weights by lr times that per step,
      over S independent steps: lr sigma C sqrt(S) / mini_batch_size.
    * Local DP (Flower's LocalDpMod): Gaussian with sigma = sensitivity sqrt(2 ln(1.25 / delta)) / epsilon.
    * The noise defense: its ``scale``.
    """
    d, t = scenario.defenses, scenario.training
    variance = 0.0
    if d.dp_sgd is not None:
        per_step = d.dp_sgd.noise_multiplier * d.dp_sgd.max_grad_norm
        variance += (
            (per_step / t.batch_size) ** 2 if t.mode == "fedsgd" else (t.lr * per_step / t.mini_batch_size) ** 2 * steps
        )
    if d.local_dp is not None:
        variance += (
            d.local_dp.sensitivity * math.sqrt(2 * math.log(1.25 / d.local_dp.delta)) / d.local_dp.epsilon
        ) ** 2
    if d.noise is not None:
        variance += d.noise.scale**2
    return math.sqrt(variance)


def secure_sum(sent: list[dict[str, torch.Tensor]], num_examples: list[int]) -> dict[str, torch.Tensor]:
    """What secure aggregation reveals of a group: the example-weighted mean of its members'
    updates (SecAgg+ sums the updates pre-multiplied by num-examples; the server divides by the
    total), computed here exactly, in float64."""
    total = sum(num_examples)
    return {
        k: sum(s[k].double() * (n / total) for s, n in zip(sent, num_examples)).to(sent[0][k].dtype) for k in sent[0]
    }


def observe(
    scenario: Scenario,
    server_round: int,
    client: str,
    bundle: ModelBundle,
    global_weights: dict[str, torch.Tensor],
    sent: dict[str, torch.Tensor],
    num_examples: int,
    group_size: int = 1,
    privacy: dict[str, float] | None = None,
) -> Observation:
    """Turn what a client (or a secure-aggregation group) sent into the server's Observation
    (weights become float64 differences)."""
    if scenario.training.mode == "fedsgd":
        update = sent
    else:
        update = {k: sent[k].double() - global_weights[k].double() for k in sent}
    return Observation(
        round=server_round,
        client=client,
        model=bundle,
        global_weights=global_weights,
        update=update,
        protocol=protocol_for(scenario, num_examples, group_size),
        privacy=privacy or {},
    )


def ground_truth(batch: Batch) -> GroundTruth:
    return GroundTruth(**{k: None if v is None else v.clone() for k, v in batch.tensors().items()})


def union_truth(truths: list[GroundTruth]) -> GroundTruth:
    """The examples of a secure-aggregation group as one batch (token ids padded to the longest)."""
    if truths[0].input_ids is None:
        features = None if truths[0].features is None else torch.cat([t.features for t in truths])
        return GroundTruth(labels=torch.cat([t.labels for t in truths]), features=features)
    width = max(t.input_ids.shape[1] for t in truths)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]))

    return GroundTruth(
        labels=torch.cat([t.labels for t in truths]),
        input_ids=torch.cat([pad(t.input_ids) for t in truths]),
        attention_mask=torch.cat([pad(t.attention_mask) for t in truths]),
    )
