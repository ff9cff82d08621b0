"""Who holds what: the federation's data plan.

The client, the server (for its holdout) and ``fedaudit attack`` all derive their data from the
scenario through these functions, so a scenario always means the same split everywhere: the
examples, the holdout, each client's shard, the examples a client uses in a round, and the
initial global model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from fedaudit.config import ConfigError, Scenario, echo_value, scenario_from_toml
from fedaudit.data import Examples, TextExamples, holdout_split, load_examples, partition
from fedaudit.data.examples import seeded_rng
from fedaudit.models import ModelBundle, build_model
from fedaudit.safety import shorten
from fedaudit.training.local import Batch, encode, evaluate

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
    bundle = build_model(
        scenario.model, num_labels=examples.num_labels, seed=scenario.federation.seed, input_shape=shape
    )
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


def sample_batches(data: FederatedData, scenario: Scenario, count: int, seed: int) -> list[np.ndarray]:
    """``count`` batches of ``training.batch_size`` training examples, seeded (``fedaudit attack``)."""
    rng = seeded_rng(seed, "attack-batches")
    size = min(scenario.training.batch_size, len(data.train))
    return [np.sort(rng.choice(data.train, size, replace=False)) for _ in range(count)]


def prepare(scenario: Scenario) -> tuple[FederatedData, ModelBundle]:
    """Load the data, check every client's shard, build the initial global model and run it on
    one example, up front, so bad data or model settings fail (``ConfigError``, one line naming
    the key or the file) before any simulation starts."""
    try:
        data = federated_data(scenario)
        for client in range(scenario.federation.clients):
            client_shard(data, scenario, client, scenario.federation.clients)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a loader's own error, made one line
        source = echo_value(scenario.data.source)
        raise ConfigError(f"data.source = {source}: cannot be loaded ({_first_line(err)})") from None
    try:
        bundle = build_global_model(scenario, data.examples)
        _check_positions(bundle, scenario)
        probe = data.train[:1] if len(data.train) else data.holdout[:1]
        training = bundle.model.training
        evaluate(bundle, encode_examples(bundle, data.examples.subset(probe), scenario))
        bundle.model.train(training)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. images smaller than the model's kernels
        raise ConfigError(
            f"model {echo_value(scenario.model.name)} does not run on data.source = "
            f"{echo_value(scenario.data.source)} ({_first_line(err)})"
        ) from None
    return data, bundle


def _check_positions(bundle: ModelBundle, scenario: Scenario) -> None:
    """training.max_seq_len within the positions the model has (longer text would fail mid-run)."""
    config = getattr(bundle.model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if bundle.is_text and isinstance(limit, int) and scenario.training.max_seq_len > limit:
        raise ConfigError(
            f"training.max_seq_len = {scenario.training.max_seq_len}: "
            f"{echo_value(scenario.model.name)} has {limit} positions"
        )


def _first_line(err: BaseException, limit: int = 120) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return shorten(text, limit)
