"""Fully connected GANs: texts 001 (256-512-1024 with batch norm) and 002 (100-128-784)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .common import (
    CLASSES,
    Discriminator,
    Dropout,
    activation,
    batch_norm,
    dense_discriminator,
    initialise,
    with_label,
)
from .dense import Dense

if TYPE_CHECKING:
    from ..config import MLPDiscriminatorConfig, MLPGeneratorConfig

PIXELS = 28 * 28


class MLPGenerator(nn.Module):
    """noise -> [Dense -> activation -> BatchNorm -> Dropout] x len(hidden) -> Dense(784) -> out."""

    def __init__(self, noise_dim: int, c: MLPGeneratorConfig, conditional: bool = False) -> None:
        super().__init__()
        self.conditional = conditional
        layers: list[nn.Module] = []
        width = noise_dim + CLASSES * conditional
        for h in c.hidden:
            layers.append(Dense(width, h))
            act = activation(c.activation, c.slope)
            norm = batch_norm("1d", h, c.bn_momentum, c.bn_eps) if c.batch_norm else None
            if norm is not None and not c.bn_after_activation:
                layers += [norm, act]
            else:
                layers += [act] + ([norm] if norm is not None else [])
            if c.dropout:
                layers.append(Dropout(c.dropout))
            width = h
        layers += [Dense(width, PIXELS), activation(c.output)]
        self.net = nn.Sequential(*layers)
        initialise(self, c.init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(with_label(z, labels, self.conditional)).view(-1, 1, 28, 28)


def mlp_discriminator(c: MLPDiscriminatorConfig, conditioning: str = "none") -> Discriminator:
    """image -> Flatten -> [Dense -> activation -> Dropout] x len(hidden) -> head."""
    channels = 1 + CLASSES * (conditioning == "input")
    return dense_discriminator([nn.Flatten()], channels * PIXELS, c.hidden, c.activation, c,
                               conditioning)
