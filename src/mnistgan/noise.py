"""Latent noise: the distributions the tutorials feed their generators."""

from __future__ import annotations

import math

import torch

from .config import NoiseConfig

DISTRIBUTIONS = ("normal", "uniform", "semicircle")


def sample_noise(
    config: NoiseConfig,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw `n` latent vectors of size `config.dim` as float32.

    - normal: standard normal (text 001's ``np.random.normal(0, 1, ...)``).
    - uniform: uniform on [low, high] (text 000: [-1, 1]; text 004's code: [0, 1]).
    - semicircle: Wigner's semicircle on [centre - r, centre + r], r = (high - low) / 2
      (text 000's alternative). The x-coordinate of a point drawn uniformly from a disc has
      exactly this density, which needs only uniform draws (and so honours `generator`).
    """
    shape = (n, config.dim)
    if config.dist == "normal":
        return torch.randn(shape, generator=generator, device=device)
    if config.dist == "uniform":
        u = torch.rand(shape, generator=generator, device=device)
        return config.low + (config.high - config.low) * u
    if config.dist == "semicircle":
        radius = (config.high - config.low) / 2
        centre = (config.high + config.low) / 2
        u = torch.rand((2, *shape), generator=generator, device=device)
        return centre + radius * u[0].sqrt() * torch.cos(2 * math.pi * u[1])
    raise ValueError(f"unknown noise distribution {config.dist!r}")  # config validation prevents
