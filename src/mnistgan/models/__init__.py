"""Networks, built from the `generator` and `discriminator` sections of a config."""

from __future__ import annotations

from torch import nn

from ..config import Config, ConvGeneratorConfig, MLPGeneratorConfig
from .common import Discriminator
from .conv import ConvGenerator, conv_discriminator
from .mlp import MLPGenerator, mlp_discriminator

__all__ = ["build_generator", "build_discriminator", "Discriminator"]


def build_generator(config: Config) -> nn.Module:
    g, conditional = config.generator, config.data.conditional
    if isinstance(g, MLPGeneratorConfig):
        return MLPGenerator(config.noise.dim, g, conditional)
    if isinstance(g, ConvGeneratorConfig):
        return ConvGenerator(config.noise.dim, g, conditional)
    raise TypeError(f"no generator for {type(g).__name__}")


def build_discriminator(config: Config) -> Discriminator:
    d = config.discriminator
    conditioning = d.conditioning if config.data.conditional else "none"
    build = mlp_discriminator if d.arch == "mlp" else conv_discriminator
    return build(d, conditioning)
