"""The attack contract: what an attack receives, what it returns, and the registry of attacks.

An attack is a plain class over tensors with a ``name``, an ``Options`` dataclass (its
settings, validated here from the scenario's ``[audit.<name>]`` table) and two methods:
``applicable(observation) -> (bool, why)`` and ``run(observation, budget) -> Reconstruction``.
It receives an :class:`Observation` (what an honest-but-curious server legitimately sees) and a
:class:`Budget`; it never receives ground truth, and it states honestly how sure it is.

This module sits at the bottom of ``fedaudit.attacks``: it imports nothing from the auditor,
the scenario schema, the data, the metrics or Flower. An Observation names the model bundle
type only; attacks that run the model ask ``observation.model_at(...)`` for a private copy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as options_dataclass

if TYPE_CHECKING:
    from fedaudit.models import ModelBundle

Status = Literal["exact", "partial", "failed"]

#: Decorator for an attack's options: a frozen dataclass whose fields carry their ranges
#: (``pydantic.Field(ge=...)``), validated when built, unknown keys refused.
options = options_dataclass(frozen=True, config=ConfigDict(extra="forbid"))


@options
class NoOptions:
    """The options of an attack that has none."""


def resolve_device(device: str) -> torch.device:
    """``audit.device``: "auto" is CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------- time


class BudgetExceeded(Exception):
    """Raised by ``Budget.check()`` when an attack has used up its time, or by an attack that ran
    out of it with nothing to show: the audit is then a ``timeout``. ``stage`` says where."""

    def __init__(self, message: str = "", stage: str = "") -> None:
        super().__init__(message or f"time budget used up{f' {stage}' if stage else ''}")
        self.stage = stage


class Budget:
    """A wall-clock allowance; long loops call ``check()`` so the auditor can move on."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self._deadline = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._deadline

    def check(self) -> None:
        if self.expired():
            raise BudgetExceeded(f"time budget of {self.seconds:g} s used up")


# ---------------------------------------------------------------- what an attack sees


@dataclass(frozen=True)
class Protocol:
    """Public training protocol: the server sets these, so a real server knows them."""

    mode: Literal["fedsgd", "fedavg"]
    lr: float
    local_epochs: int
    batch_size: int
    mini_batch_size: int
    max_seq_len: int
    num_examples: int
    """Examples behind the update (Flower's ``num-examples``; under secure aggregation, the group's total)."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    group_size: int = 1
    """Clients whose updates the server sees only as one sum (secure aggregation); 1 = one client."""
    lossy_transforms: tuple[str, ...] = ()
    """Update defenses that changed values before sending (pruning, quantization): public settings."""
    noise_std: float = 0.0
    """Standard deviation of the noise each entry of the update carries by protocol (DP-SGD, local
    DP, a noise defense), in the units of ``Observation.update``: public, like the defense settings."""

    @property
    def local_steps(self) -> int:
        """Local steps each client took (FedAvg: epochs times mini-batches of its share of examples)."""
        if self.mode == "fedsgd":
            return 1
        return self.local_epochs * math.ceil(self.num_examples / self.group_size / self.mini_batch_size)


@dataclass(frozen=True)
class Observation:
    """What the server legitimately sees of one client's round: the round, which client, the
    model it sent out (architecture, tokenizer, global weights), the update that came back and
    the public protocol parameters. Read-only: the mappings are frozen views."""

    round: int
    client: str
    model: ModelBundle
    """Public architecture knowledge (adapter, tokenizer, input shape). Never run it directly:
    ``model_at()`` gives a private copy with the weights an attack asks for."""
    global_weights: Mapping[str, torch.Tensor]
    update: Mapping[str, torch.Tensor]
    """FedSGD: the gradient the client sent. FedAvg: weights after local training minus
    ``global_weights``, in float64."""
    protocol: Protocol
    privacy: Mapping[str, float] = field(default_factory=dict)
    """What the client reported of its privacy budget (DP-SGD: ``epsilon`` at ``delta``)."""

    def __post_init__(self) -> None:
        for key in ("global_weights", "update", "privacy"):
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key))))

    @property
    def gradient_noise_std(self) -> float:
        """``protocol.noise_std`` in the units of ``gradient()`` (FedAvg divides the update by lr * S)."""
        if self.protocol.mode == "fedsgd":
            return self.protocol.noise_std
        return self.protocol.noise_std / (self.protocol.lr * self.protocol.local_steps)

    @property
    def exact_gradient(self) -> bool:
        """True when ``gradient()`` is the batch gradient itself, not an estimate (one SGD step)."""
        return self.protocol.local_steps == 1 and self.protocol.optimizer == "sgd"

    def model_at(
        self,
        weights: Mapping[str, torch.Tensor] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> ModelBundle:
        """A private copy of the public model carrying ``weights`` (default: the round's global
        weights), on ``device``, in ``dtype`` (default: the model's), in eval mode. The attack
        owns it: changing it changes nothing anyone else sees."""
        return self.model.loaded(self.global_weights if weights is None else weights, device, dtype)

    def gradient(self, name: str) -> torch.Tensor:
        """The mean batch gradient of parameter ``name``, or its estimate after several steps.

        FedAvg with plain SGD gives W_E = W_0 - lr * sum_s g_s, so -(W_E - W_0) / (lr * S) is the
        mean of the S step gradients: exact for S = 1, and for S > 1 each g_s is taken at
        moving weights (and rows touched by any step stay non-zero). With Adam the step is
        rescaled per entry, so this is only a direction-preserving-per-entry proxy.
        """
        value = self.update[name]
        if self.protocol.mode == "fedsgd":
            return value
        return -value / (self.protocol.lr * self.protocol.local_steps)


# ---------------------------------------------------------------- what an attack returns


@dataclass
class Reconstruction:
    """What an attack recovered, in the attack's own words.

    ``tokens``: token ids known to be in the batch (unordered, no counts).
    ``sequences``: ordered token sequences, at most one per example (at most B in all).
    ``labels``: the multiset of labels, one per recovered example.
    ``inputs``: recovered examples as the model reads them (images N x C x H x W, table rows
    N x F, or an inner layer's features), at most one per example.
    """

    status: Status
    reason: str = ""
    tokens: set[int] | None = None
    sequences: list[list[int]] | None = None
    labels: list[int] | None = None
    inputs: Any = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Attack:
    """The base of every attack: its ``name``, its ``Options`` (a dataclass decorated with
    ``@options``) and the device it computes on. Subclasses implement ``applicable`` and ``run``."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None, device: str = "auto") -> None:
        self.options = self.Options() if options is None else options
        self.device = resolve_device(device)

    def applicable(self, observation: Observation) -> tuple[bool, str]:
        """Whether the attack can say anything about this update, and if not, why."""
        raise NotImplementedError

    def run(self, observation: Observation, budget: Budget) -> Reconstruction:
        """Reconstruct what the client trained on, within ``budget``."""
        raise NotImplementedError


# ---------------------------------------------------------------- the registry


class OptionsError(ValueError):
    """An attack's options table is wrong; the message is one line naming the key."""


class Registry:
    """Attacks by name. ``options(name, table)`` validates a scenario's ``[audit.<name>]`` table
    against the attack's ``Options``; ``make(name, device, options)`` builds the attack.

    >>> registry = Registry([Dager, Spear])
    >>> attack = registry.make("spear", device="cpu", options={"layer": 1})
    """

    def __init__(self, attacks: Iterable[type]) -> None:
        self._attacks: dict[str, type] = {}
        for cls in attacks:
            if cls.name in self._attacks:
                raise ValueError(f"two attacks are named {cls.name!r}")
            self._attacks[cls.name] = cls

    def __contains__(self, name: object) -> bool:
        return name in self._attacks

    def __getitem__(self, name: str) -> type:
        return self._attacks[name]

    def names(self) -> list[str]:
        return sorted(self._attacks)

    def options(self, name: str, table: Mapping[str, Any] | None = None, key: str | None = None) -> Any:
        """The attack's ``Options`` built from ``table``; errors name ``key`` (default ``audit.<name>``)."""
        kind = getattr(self._attacks[name], "Options", NoOptions)
        key = key or f"audit.{name}"
        if not isinstance(table, Mapping) and table is not None:
            raise OptionsError(f"{key} = {table!r}: expected a table of options")
        try:
            return TypeAdapter(kind).validate_python(dict(table or {}))
        except ValidationError as err:
            raise OptionsError(_one_line(err, key, kind)) from None

    def make(self, name: str, device: str = "auto", options: Any = None) -> Any:
        """Attack ``name`` computing on ``device``, with ``options``: its ``Options`` instance, or a
        table of them (validated), or None for the defaults."""
        kind = getattr(self._attacks[name], "Options", NoOptions)
        if not isinstance(options, kind):
            options = self.options(name, options)
        return self._attacks[name](options, device=device)


def _one_line(err: ValidationError, key: str, kind: type) -> str:
    first = err.errors()[0]
    where = ".".join([key, *(str(p) for p in first["loc"])])
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        allowed = ", ".join(f.name for f in dataclasses.fields(kind)) or "none"
        return f"unknown key {where!r}; allowed keys here: {allowed}{more}"
    value = repr(first["input"])
    value = value if len(value) <= 60 else value[:57] + "..."
    return f"{where} = {value}: {first['msg']}{more}"
