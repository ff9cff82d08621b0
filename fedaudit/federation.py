"""A federation's plan: who holds which examples, what a client trains on in a round, and how
what it sends becomes the server's Observation.

The client, the server (for its holdout) and ``fedaudit attack`` all derive their data from the
scenario through these functions, so a scenario always means the same split everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from fedaudit.audit.observation import GroundTruth, Observation, Protocol
from fedaudit.config import Scenario, scenario_from_toml
from fedaudit.data import Examples, TextExamples, holdout_split, load_examples, partition
from fedaudit.data.text import seeded_rng
from fedaudit.defenses import apply_update_defenses
from fedaudit.models import ModelBundle, build_model
from fedaudit.training.local import Batch, LocalUpdate, encode, local_update

#: Update defenses that change values entry by entry (noise is accounted for by its std; clipping
#: scales the whole update, which leaves spans and input-to-bias ratios as they were).
LOSSY_TRANSFORMS = ("prune", "quantize")
#: Largest holdout the server evaluates each round (utility is a trend, not a benchmark).
MAX_EVAL_EXAMPLES = 256


@dataclass(frozen=True)
class FederatedData:
    examples: Examples
    train: np.ndarray
    holdout: np.ndarray


def federated_data(scenario: Scenario) -> FederatedData:
    return _federated_data(scenario.to_toml())


@lru_cache(maxsize=4)
def _federated_data(scenario_toml: str) -> FederatedData:
    scenario = scenario_from_toml(scenario_toml)
    examples = load_examples(scenario.data, scenario.federation.seed)
    train, holdout = holdout_split(len(examples), scenario.data.holdout_fraction, scenario.federation.seed)
    return FederatedData(examples, train, holdout)


def client_shard(data: FederatedData, scenario: Scenario, partition_id: int, num_partitions: int) -> np.ndarray:
    """Indices (into ``data.examples``) that client ``partition_id`` holds."""
    fed = scenario.federation
    labels = [data.examples.labels[i] for i in data.train]
    shards = partition(labels, num_partitions, fed.partition, fed.alpha, fed.seed)
    return data.train[shards[partition_id]]


def round_examples(shard: np.ndarray, scenario: Scenario, server_round: int, partition_id: int) -> np.ndarray:
    """The ``batch_size`` examples a client uses in a round (all of its shard if it has fewer)."""
    size = min(scenario.training.batch_size, len(shard))
    rng = seeded_rng(scenario.federation.seed, f"round-{server_round}-client-{partition_id}")
    return shard[np.sort(rng.choice(len(shard), size, replace=False))]


def build_global_model(scenario: Scenario, examples: Examples) -> ModelBundle:
    """The initial global model: the same weights for the same scenario seed."""
    shape = getattr(examples, "input_shape", None)
    bundle = build_model(scenario.model, num_labels=examples.num_labels, seed=scenario.federation.seed,
                         input_shape=shape)
    bundle.table_schema = getattr(examples, "schema", None)  # the feature encoding is public, like the model
    return bundle


def encode_examples(bundle: ModelBundle, examples: Examples, scenario: Scenario) -> Batch:
    """The examples as the model reads them: token ids (text) or float features (images, tables)."""
    if isinstance(examples, TextExamples):
        return encode(bundle.tokenizer, examples.texts, examples.labels, scenario.training.max_seq_len)
    return Batch(torch.tensor(examples.labels, dtype=torch.long), features=torch.from_numpy(examples.inputs))


def holdout_batch(bundle: ModelBundle, data: FederatedData, scenario: Scenario) -> Batch:
    index = data.holdout[:MAX_EVAL_EXAMPLES]
    return encode_examples(bundle, data.examples.subset(index), scenario)


def protocol_for(scenario: Scenario, num_examples: int, group_size: int = 1) -> Protocol:
    t = scenario.training
    protocol = Protocol(mode=t.mode, lr=t.lr, local_epochs=t.local_epochs, batch_size=t.batch_size,
                        mini_batch_size=t.mini_batch_size, max_seq_len=t.max_seq_len, num_examples=num_examples,
                        optimizer=t.optimizer, group_size=group_size, lossy_transforms=lossy_transforms(scenario))
    return replace(protocol, noise_std=update_noise_std(scenario, protocol.local_steps) / math.sqrt(group_size))


def lossy_transforms(scenario: Scenario) -> tuple[str, ...]:
    """The update defenses in force that change values (pruning at a fraction 0 with no threshold
    changes nothing)."""
    d = scenario.defenses
    return tuple(k for k in d.order if k in LOSSY_TRANSFORMS
                 and not (k == "prune" and d.prune.fraction == 0 and d.prune.threshold is None))


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
        variance += ((per_step / t.batch_size) ** 2 if t.mode == "fedsgd"
                     else (t.lr * per_step / t.mini_batch_size) ** 2 * steps)
    if d.local_dp is not None:
        variance += (d.local_dp.sensitivity * math.sqrt(2 * math.log(1.25 / d.local_dp.delta)) / d.local_dp.epsilon) ** 2
    if d.noise is not None:
        variance += d.noise.scale ** 2
    return math.sqrt(variance)


def client_update(bundle: ModelBundle, batch: Batch, scenario: Scenario, seed: int) -> LocalUpdate:
    """What a client sends: local training from the weights loaded in ``bundle``, then the update
    defenses of ``[defenses]`` (FedAvg: applied to the weight difference, which is re-added)."""
    start = {k: v.clone() for k, v in bundle.trainable_state().items()}
    update = local_update(bundle, batch, scenario.training, seed=seed, dp=scenario.defenses.dp_sgd)
    if not scenario.defenses.order:
        return update
    if update.kind == "gradient":
        return replace(update, tensors=apply_update_defenses(update.tensors, scenario.defenses, seed))
    delta = {k: v.double() - start[k].double() for k, v in update.tensors.items()}
    delta = apply_update_defenses(delta, scenario.defenses, seed)
    return replace(update, tensors={k: (start[k].double() + d).to(start[k].dtype) for k, d in delta.items()})


def secure_sum(sent: list[dict[str, torch.Tensor]], num_examples: list[int]) -> dict[str, torch.Tensor]:
    """What secure aggregation reveals of a group: the example-weighted mean of its members'
    updates (SecAgg+ sums the updates pre-multiplied by num-examples; the server divides by the
    total), computed here exactly, in float64."""
    total = sum(num_examples)
    return {k: sum(s[k].double() * (n / total) for s, n in zip(sent, num_examples)).to(sent[0][k].dtype)
            for k in sent[0]}


def observe(scenario: Scenario, server_round: int, client: str, bundle: ModelBundle,
            global_weights: dict[str, torch.Tensor], sent: dict[str, torch.Tensor], num_examples: int,
            group_size: int = 1, privacy: dict[str, float] | None = None) -> Observation:
    """Turn what a client (or a secure-aggregation group) sent into the server's Observation
    (weights become float64 differences)."""
    if scenario.training.mode == "fedsgd":
        update = sent
    else:
        update = {k: sent[k].double() - global_weights[k].double() for k in sent}
    return Observation(round=server_round, client=client, model=bundle, global_weights=global_weights,
                       update=update, protocol=protocol_for(scenario, num_examples, group_size),
                       privacy=privacy or {})


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

    return GroundTruth(labels=torch.cat([t.labels for t in truths]),
                       input_ids=torch.cat([pad(t.input_ids) for t in truths]),
                       attention_mask=torch.cat([pad(t.attention_mask) for t in truths]))


def sample_batches(data: FederatedData, scenario: Scenario, count: int, seed: int) -> list[np.ndarray]:
    """``count`` batches of ``training.batch_size`` training examples, seeded (``fedaudit attack``)."""
    rng = seeded_rng(seed, "attack-batches")
    size = min(scenario.training.batch_size, len(data.train))
    return [np.sort(rng.choice(data.train, size, replace=False)) for _ in range(count)]


def sampled_updates(scenario: Scenario, data: FederatedData, public: ModelBundle, count: int,
                    seed: int) -> Iterator[tuple[Observation, GroundTruth]]:
    """``count`` client updates from the initial global model, one per sampled batch, each computed
    exactly as a client would, with the server's Observation and the batch's GroundTruth."""
    client = build_global_model(scenario, data.examples)
    initial = {k: v.clone() for k, v in public.trainable_state().items()}
    for k, index in enumerate(sample_batches(data, scenario, count, seed)):
        client.load_state(initial)
        batch = encode_examples(client, data.examples.subset(index), scenario)
        update = client_update(client, batch, scenario, seed=seed * 1_000_003 + k)
        yield (observe(scenario, 1, f"batch-{k}", public, initial, update.tensors, update.num_examples),
               ground_truth(batch))
