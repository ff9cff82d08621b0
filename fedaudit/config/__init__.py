"""The scenario schema: one TOML file says what a federation trains and what the auditor tries.

Every key has a default, so a scenario file states only what differs. Any key can be
overridden with ``--set section.key=value`` (the value is read as TOML, falling back to a
plain string). Errors are one line naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, get_args

import tomli_w
from pydantic import BaseModel, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from fedaudit.config.audit import AuditConfig
from fedaudit.config.base import BUDGET_MAX_SECONDS as BUDGET_MAX_SECONDS
from fedaudit.config.base import ECHO_CHARS, SEED_MAX, ConfigError
from fedaudit.config.base import Section as _Section
from fedaudit.safety import shorten

DEFAULT_SCENARIO = Path(__file__).resolve().parents[2] / "simulations" / "quickstart.toml"


class LoraConfig(_Section):
    """LoRA adapters (peft) on the attention projections: only the factors and the head train and travel."""

    r: int = Field(default=8, ge=1, le=4096)
    alpha: float = Field(default=16.0, gt=0.0)
    target_modules: list[str] | None = None
    """Module names to adapt; default per family: GPT-2 c_attn; LLaMA q_proj, v_proj; BERT query, value."""


COUNT_KEYS = {  # architecture keys (GPT-2, LLaMA, BERT) that count layers, heads, widths: their bounds
    "n_layer": 1024, "num_hidden_layers": 1024, "n_head": 1024, "num_attention_heads": 1024,
    "num_key_value_heads": 1024, "n_embd": 65536, "hidden_size": 65536, "n_inner": 262144,
    "intermediate_size": 262144, "n_positions": 1 << 20, "max_position_embeddings": 1 << 20, "vocab_size": 1 << 24,
}  # fmt: skip
WIDTH_HEADS = (("n_embd", "n_head"), ("hidden_size", "num_attention_heads"))  # equal heads split the width


class ModelConfig(_Section):
    name: str = "gpt2-random"
    """Zoo name (gpt2-random, gpt2, llama-random, bert-random, minilm-l6, smollm2-135m),
    a Hugging Face model id, or a local folder."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Overrides applied to the architecture config (random-init models)."""
    task: Literal["classification", "causal-lm"] = "classification"
    dtype: Literal["float32", "float64"] = "float32"
    """Precision of training and of what clients send."""
    tokenizer: str | None = None
    """Tokenizer folder or hub id; default: the model's own, or the packaged GPT-2 BPE."""
    lora: LoraConfig | None = None

    @model_validator(mode="after")
    def _architecture_in_range(self) -> ModelConfig:
        """Counts >= 1, widths divisible by heads; the rest is checked when the model is built."""
        c = self.config
        for key, most in COUNT_KEYS.items():
            value = c.get(key)
            if key in c and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most):
                raise ValueError(f"model.config.{key} = {echo_value(value)}: must be a whole number in 1..{most}")
        for width, heads in WIDTH_HEADS:
            if isinstance(c.get(width), int) and isinstance(c.get(heads), int) and c[width] % c[heads]:
                raise ValueError(
                    f"model.config.{width} = {c[width]}: must be divisible by model.config.{heads} ({c[heads]})"
                )
        return self


class DataConfig(_Section):
    source: str = "demo"
    """Text: "demo" | HF dataset name (e.g. "glue/cola") | local .tsv/.csv/.jsonl/.txt.
    Images: "digits" | "mnist" | "cifar10" | HF id | local .npz or idx file. Tables: a CSV file."""
    modality: Literal["auto", "text", "image", "table"] = "auto"
    """"auto": images for the image names, .npz and idx files, text otherwise (tables say "table")."""
    text_column: str = "sentence"
    label_column: str | None = "label"
    split: str = "train"
    subset: str | None = None
    """HF dataset configuration name (e.g. "cola" for "glue"); "glue/cola" implies it."""
    columns: list[str] | None = None  # column names for a headerless TSV/CSV
    max_examples: int | None = Field(default=None, ge=1)
    demo_size: int = Field(default=256, ge=1, le=1_000_000)
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Share of examples kept out of every client for the server's utility evaluation."""


class FederationConfig(_Section):
    clients: int = Field(default=4, ge=1, le=100_000)
    rounds: int = Field(default=3, ge=1, le=1_000_000)
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(default=0.5, gt=0.0)
    """Dirichlet concentration (partition = "dirichlet"): smaller is more skewed."""
    seed: int = Field(default=0, ge=0, le=SEED_MAX)
    secure_aggregation_group: int = Field(default=1, ge=1)
    """Secure aggregation: the server sees only the sum of each group of K clients' updates
    (consecutive partition ids; the exact sum, as SecAgg+ would deliver it). 1 = no grouping."""
    ray_address: str | None = None
    """HOST:PORT of a Ray cluster to join for the simulation's clients and the audit tasks
    (``--ray-address``, the run config's ``ray-address``); None: a Ray instance of the run's own."""
    on_bad_update: Literal["reject", "fail"] = "reject"
    """A reply that does not fit the global model (names, shapes, dtypes), is not finite or has
    a bad num-examples: "reject" records it and goes on without it; "fail" stops the run."""


class TrainingConfig(_Section):
    mode: Literal["fedsgd", "fedavg"] = "fedsgd"
    batch_size: int = Field(default=8, ge=1, le=1_000_000)
    """Examples a client uses per round (fedsgd: the one batch; fedavg: its local data for the round)."""
    local_epochs: int = Field(default=1, ge=1, le=10_000)
    mini_batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-4, gt=0.0, le=1e6)
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Local optimizer in fedavg mode (fedsgd clients send the gradient; the server steps with SGD)."""
    max_seq_len: int = Field(default=64, ge=2, le=1_000_000)


class DPSGDConfig(_Section):
    """``defenses.dp_sgd``: DP-SGD on the client with Opacus (per-example clipping, Gaussian noise).

    The privacy unit is one example of the client's data for the round (``training.batch_size``
    examples); each step samples mini-batches at rate mini_batch_size / batch_size (FedSGD: one
    step over the whole batch, rate 1), and rounds compose, so epsilon after round t accounts
    for t rounds of steps."""

    noise_multiplier: float = Field(default=1.0, ge=0.0, le=1e6)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    poisson_sampling: bool = False
    """True: each step draws every example independently with the sampling rate (Opacus's
    assumption for its subsampled guarantees); False: shuffled mini-batches."""
    accountant: Literal["prv", "rdp"] = "prv"
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)


class CentralDPConfig(_Section):
    """``defenses.central_dp``: Flower's central DP with fixed clipping. The server (or each
    client, ``clipping = "client"``) clips every update to ``clipping_norm``; the server adds
    Gaussian noise to the aggregate only. The auditor sits where a curious server does: it sees
    each client's clipped, un-noised update."""

    noise_multiplier: float = Field(default=1.0, ge=0.0, le=1e6)
    clipping_norm: float = Field(default=1.0, gt=0.0)
    clipping: Literal["server", "client"] = "server"


class LocalDPConfig(_Section):
    """``defenses.local_dp``: Flower's ``LocalDpMod``: each client clips its update to
    ``clipping_norm`` and adds Gaussian noise for (epsilon, delta)-DP before sending."""

    clipping_norm: float = Field(default=1.0, gt=0.0)
    sensitivity: float = Field(default=1.0, gt=0.0)
    epsilon: float = Field(default=1.0, gt=0.0)
    delta: float = Field(default=1e-5, gt=0.0, lt=1.0)


class PruneDefense(_Section):
    """Zero the smallest-magnitude entries of every update tensor."""

    fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of each tensor's entries set to zero (the top 1 - fraction by magnitude are kept)."""
    threshold: float | None = Field(default=None, ge=0.0)
    """Instead of a fraction: zero every entry with |value| < threshold."""


class QuantizeDefense(_Section):
    """Round every update tensor: fp16, or int8 with one symmetric scale per tensor (max |x| / 127)."""

    format: Literal["fp16", "int8"] = "int8"


class NoiseDefense(_Section):
    """Add i.i.d. noise of standard deviation ``scale`` to every update entry."""

    distribution: Literal["gaussian", "laplace"] = "gaussian"
    scale: float = Field(default=0.0, ge=0.0)
    seed: int = Field(default=0, ge=0, le=SEED_MAX)


class ClipDefense(_Section):
    """Scale the whole update (all tensors together) down to L2 norm ``max_norm`` if it is larger."""

    max_norm: float = Field(default=1.0, gt=0.0)


#: Update defenses a client applies to what it sends, by their key in ``[defenses]``.
UPDATE_DEFENSES = ("prune", "quantize", "noise", "clip")


class DefensesConfig(_Section):
    """``[defenses]``: training-time DP (``dp_sgd``), Flower's DP settings (``central_dp``,
    ``local_dp``) and update transforms (``prune``, ``quantize``, ``noise``, ``clip``), applied by
    the client to its update (FedAvg: to its weight difference) in the order they are listed."""

    dp_sgd: DPSGDConfig | None = None
    central_dp: CentralDPConfig | None = None
    local_dp: LocalDPConfig | None = None
    prune: PruneDefense | None = None
    quantize: QuantizeDefense | None = None
    noise: NoiseDefense | None = None
    clip: ClipDefense | None = None
    order: list[str] = Field(default_factory=list)
    """Order of the update transforms; by default the order of their tables in the scenario."""

    @model_validator(mode="before")
    @classmethod
    def _listed_order(cls, data: Any) -> Any:
        if isinstance(data, dict) and "order" not in data:
            data = {**data, "order": [k for k in data if k in UPDATE_DEFENSES and data[k] is not None]}
        return data

    @model_validator(mode="after")
    def _order_names_the_transforms(self) -> DefensesConfig:
        configured = [k for k in UPDATE_DEFENSES if getattr(self, k) is not None]
        if sorted(self.order) != sorted(configured):
            raise ValueError(
                f"defenses.order = {self.order!r}: must list each configured update defense once "
                f"({', '.join(configured) or 'none configured'})"
            )
        return self

    def update_transforms(self) -> list[tuple[str, _Section]]:
        """(name, settings) of each update transform, in the order they apply."""
        return [(name, getattr(self, name)) for name in self.order]


class OutputConfig(_Section):
    dir: str = "runs"


class Scenario(_Section):
    name: str = "scenario"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    defenses: DefensesConfig = Field(default_factory=DefensesConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        t = self.training
        if t.mode == "fedavg" and t.mini_batch_size > t.batch_size:
            raise ValueError(
                f"training.mini_batch_size = {t.mini_batch_size}: must be <= training.batch_size "
                f"({t.batch_size}) in fedavg mode"
            )
        if t.mode == "fedsgd" and t.optimizer != "sgd":
            raise ValueError(
                f"training.optimizer = {t.optimizer!r}: only fedavg clients run a local optimizer "
                f'(fedsgd clients send the gradient); set training.mode = "fedavg"'
            )
        fed, d = self.federation, self.defenses
        if fed.clients % fed.secure_aggregation_group:
            raise ValueError(
                f"federation.secure_aggregation_group = {fed.secure_aggregation_group}: must divide "
                f"federation.clients ({fed.clients})"
            )
        audit = self.audit
        if isinstance(audit.clients, list) and max(audit.clients) >= fed.clients:
            raise ValueError(f"audit.clients = {audit.clients}: partition ids are 0..{fed.clients - 1}")
        if isinstance(audit.rounds, list) and max(audit.rounds) > fed.rounds:
            raise ValueError(f"audit.rounds = {audit.rounds}: the run has rounds 1..{fed.rounds}")
        for key in ("central_dp", "local_dp"):
            if getattr(d, key) is not None and t.mode == "fedsgd":
                raise ValueError(
                    f"defenses.{key}: Flower's DP clips the weight difference a client sends, "
                    f'so it needs training.mode = "fedavg"'
                )
        return self

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(exclude_none=True))


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        section = _section_model(first["loc"][:-1])
        allowed = ", ".join(section.model_fields) if section else ""
        return f"unknown key {loc!r}; allowed keys here: {allowed}{more}"
    msg = first["msg"].removeprefix("Value error, ")
    if not loc or isinstance(first["input"], dict):  # a cross-field check names its own keys
        return msg + more
    return f"{loc} = {echo_value(first['input'])}: {msg}{more}"


def echo_value(value: Any) -> str:
    """``repr(value)`` cut to ``ECHO_CHARS`` (a value can be a whole pasted file)."""
    return shorten(repr(value), ECHO_CHARS)


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Scenario
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        # an optional section (``X | None``) is the section X
        annotation = next(
            (a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), annotation
        )
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value read as TOML, else the raw string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.batch_size=16")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = child
        node[path[-1]] = value
    return data


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def read_scenario(path: str | Path | None = None, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario file (default: simulations/quickstart.toml), apply ``--set`` overrides and
    validate it against the schema. The attacks it names are checked one layer up
    (``fedaudit.scenario.load_scenario`` does both)."""
    path = Path(path) if path is not None else DEFAULT_SCENARIO
    if not path.is_file():
        raise ConfigError(f"scenario file not found: {path}")
    try:
        # utf-8-sig: a scenario saved by an editor that writes a byte-order mark loads too.
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"scenario file {path}: not UTF-8 text (byte {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"scenario file {path}: invalid TOML: {err}") from None
    except OSError as err:
        raise ConfigError(f"scenario file {path}: cannot be read ({err.strerror})") from None
    data.setdefault("name", path.stem)
    return scenario_from_dict(apply_overrides(data, list(overrides or [])))


def scenario_from_toml(text: str) -> Scenario:
    try:
        return scenario_from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"scenario text: invalid TOML: {err}") from None
