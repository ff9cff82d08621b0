"""Image and table models written in torch: an MLP and a small LeNet-style ConvNet.

Both take float inputs (images N x C x H x W in [0, 1], table rows N x F) and return logits.
``model.config`` keys (all optional):

* ``mlp``: ``hidden`` (list of widths, default [1000]), ``bias`` (default true).
* ``cnn``: ``channels`` (default 12), ``activation`` ("relu" | "sigmoid", default "relu"; the
  sigmoid LeNet is the model of the DLG paper), ``fc_hidden`` (list of widths of ReLU layers
  between the convolutions and the head, default [] as in DLG's LeNet), ``init`` ("default" |
  "uniform"): "default" is torch's (uniform in +-1/sqrt(fan_in)); "uniform" draws every weight and
  bias from U(-0.5, 0.5) as DLG's reference code does (``weights_init`` in Zhu et al.'s LeNet). The
  choice matters for the optimization attacks: with torch's small weights the sigmoids all sit near
  0.5 and the gradient hardly depends on the input, so inverting it is badly conditioned.

Every ``nn.Linear`` followed by a ReLU is a place SPEAR can attack (``dense_layers``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fedaudit.config import ConfigError

MLP_DEFAULTS: dict[str, Any] = {"hidden": [1000], "bias": True}
CNN_DEFAULTS: dict[str, Any] = {"channels": 12, "activation": "relu", "fc_hidden": [], "init": "default"}


def _options(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"model.config.{unknown[0]}: not an option of {name}; allowed: {', '.join(defaults)}")
    options = {**defaults, **given}
    for key in ("hidden", "fc_hidden"):
        widths = options.get(key)
        if widths is not None and (
            not isinstance(widths, list) or not all(isinstance(w, int) and w >= 1 for w in widths)
        ):
            raise ConfigError(f"model.config.{key} = {widths!r}: expected a list of positive integers")
    return options


class MLP(nn.Module):
    """Flatten, then Linear + ReLU per hidden width, then a linear head."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: list[int], bias: bool = True) -> None:
        super().__init__()
        widths = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out, bias=bias), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ConvNet(nn.Module):
    """LeNet as in DLG (Zhu et al. 2019): three 5x5 convolutions (strides 2, 2, 1), then the head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: int,
        activation: str,
        fc_hidden: list[int],
        init: str = "default",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model.name = 'cnn' needs images (C x H x W inputs), got inputs of shape {input_shape}")
        if activation not in ("relu", "sigmoid"):
            raise ConfigError(f"model.config.activation = {activation!r}: allowed: relu, sigmoid")
        if init not in ("default", "uniform"):
            raise ConfigError(f"model.config.init = {init!r}: allowed: default, uniform")
        act = nn.ReLU if activation == "relu" else nn.Sigmoid
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 5, stride=2, padding=2),
            act(),
            nn.Conv2d(channels, channels, 5, stride=2, padding=2),
            act(),
            nn.Conv2d(channels, channels, 5, stride=1, padding=2),
            act(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = int(self.features(torch.zeros(1, c, h, w)).shape[1])
        layers: list[nn.Module] = []
        for n_in, n_out in zip([width, *fc_hidden][:-1], fc_hidden):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fc_hidden[-1] if fc_hidden else width, num_classes)
        if init == "uniform":
            with torch.no_grad():
                for p in self.parameters():
                    p.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.features(x)))


def build_dense(name: str, config: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if name == "mlp":
        return MLP(input_shape, num_classes, **_options("mlp", MLP_DEFAULTS, config))
    return ConvNet(input_shape, num_classes, **_options("cnn", CNN_DEFAULTS, config))
