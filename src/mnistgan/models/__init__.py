"""Networks, built from the `generator` and `discriminator` sections of a config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .common import Discriminator
from .conv import ConvGenerator, conv_discriminator
from .dense import use_dense_kernel
from .mlp import MLPGenerator, mlp_discriminator

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["build_generator", "build_discriminator", "Discriminator"]

# The networks of each `arch` (config.GENERATOR_CONFIGS / DISCRIMINATOR_CONFIGS hold their keys).
GENERATORS = {"mlp": MLPGenerator, "conv": ConvGenerator}
DISCRIMINATORS = {"mlp": mlp_discriminator, "conv": conv_discriminator}


def build_generator(config: Config) -> nn.Module:
    net = GENERATORS[config.generator.arch](config.noise.dim, config.generator, config.data.conditional)
    return use_dense_kernel(net, config.train.dense_kernel)


def build_discriminator(config: Config) -> Discriminator:
    d = config.discriminator
    net = DISCRIMINATORS[d.arch](d, d.conditioning if config.data.conditional else "none")
    return use_dense_kernel(net, config.train.dense_kernel)
