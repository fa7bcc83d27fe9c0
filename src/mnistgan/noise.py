"""What a generator is fed: latent noise from the tutorials' distributions, and the digits a
conditional generator is asked for."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .config import NoiseConfig

Sampler = Callable[["NoiseConfig", tuple[int, int], "torch.Generator | None", "torch.device | str"],
                   torch.Tensor]


def _normal(config: NoiseConfig, shape: tuple[int, int], generator: torch.Generator | None,
            device: torch.device | str) -> torch.Tensor:
    """Standard normal (text 001's ``np.random.normal(0, 1, ...)``)."""
    return torch.randn(shape, generator=generator, device=device)


def _uniform(config: NoiseConfig, shape: tuple[int, int], generator: torch.Generator | None,
             device: torch.device | str) -> torch.Tensor:
    """Uniform on [low, high] (text 000: [-1, 1]; text 004's code: [0, 1])."""
    u = torch.rand(shape, generator=generator, device=device)
    return config.low + (config.high - config.low) * u


def _semicircle(config: NoiseConfig, shape: tuple[int, int], generator: torch.Generator | None,
                device: torch.device | str) -> torch.Tensor:
    """Wigner's semicircle on [centre - r, centre + r], r = (high - low) / 2 (text 000's
    alternative). The x-coordinate of a point drawn uniformly from a disc has exactly this
    density, which needs only uniform draws (and so honours `generator`)."""
    radius = (config.high - config.low) / 2
    centre = (config.high + config.low) / 2
    u = torch.rand((2, *shape), generator=generator, device=device)
    return centre + radius * u[0].sqrt() * torch.cos(2 * math.pi * u[1])


# The registry of latent distributions: config.noise.dist, --noise and the server's `noise`
# parameter all take their names from here.
DISTRIBUTIONS: dict[str, Sampler] = {"normal": _normal, "uniform": _uniform, "semicircle": _semicircle}


def sample_noise(
    config: NoiseConfig,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw `n` latent vectors of size `config.dim` as float32 from `config.dist`."""
    return DISTRIBUTIONS[config.dist](config, (n, config.dim), generator, device)


def label_classes(digits: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The digits a conditional model is asked for: the run's `data.digits`, or all ten."""
    return torch.tensor(list(digits) or range(10), device=device)


def sample_labels(classes: torch.Tensor, n: int, generator: torch.Generator,
                  frequencies: Sequence[float] = ()) -> torch.Tensor:
    """`n` digits drawn from `classes` (on the generator's device): uniformly (the fakes of a
    conditional model in training), or with the given `frequencies`, one per class (sampling a
    trained model: `data.digit_frequencies`)."""
    if not frequencies:
        return classes[torch.randint(0, len(classes), (n,), generator=generator, device=classes.device)]
    weights = torch.tensor(frequencies, dtype=torch.float64, device=classes.device)
    return classes[torch.multinomial(weights, n, replacement=True, generator=generator)]


def interpolate(start: torch.Tensor, end: torch.Tensor, steps: int, dist: str) -> torch.Tensor:
    """`steps` latent vectors from `start` to `end` (both (dim,)), ends included.

    Normal noise is walked along the great circle (slerp): a straight line through a
    high-dimensional Gaussian passes near the origin, where no training sample ever lay, and
    the images fade out midway. Uniform and semicircle noise have bounded, convex supports, so
    the straight line stays where the generator was trained."""
    t = torch.linspace(0, 1, steps, device=start.device).unsqueeze(1)
    if dist == "normal":
        cos = torch.dot(start, end) / (start.norm() * end.norm()).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if omega.abs() > 1e-4:
            s = torch.sin(omega)
            return (torch.sin((1 - t) * omega) / s) * start + (torch.sin(t * omega) / s) * end
    return (1 - t) * start + t * end
