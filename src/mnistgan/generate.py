"""Generation from saved files alone: a run folder or a generator .safetensors file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import load_state, load_weights
from .config import Config
from .data import to_uint8
from .errors import UserError
from .models import build_generator
from .noise import DISTRIBUTIONS, sample_noise


class TrainedGenerator:
    """A generator with the config it was trained under."""

    def __init__(self, net: nn.Module, config: Config) -> None:
        self.net = net.eval()
        self.config = config

    def sample(self, n: int, seed: int = 0, noise: str | None = None) -> np.ndarray:
        """`n` digits as a uint8 array (n, 28, 28). `noise` swaps the latent distribution
        (normal, uniform, semicircle) for one the generator was not trained on."""
        if n < 1:
            raise UserError(f"--n {n}: ask for at least one image")
        noise_config = self.config.noise
        if noise is not None:
            if noise not in DISTRIBUTIONS:
                raise UserError(f"unknown noise '{noise}': choose one of {', '.join(DISTRIBUTIONS)}")
            noise_config = replace(noise_config, dist=noise)
        device = next(self.net.parameters()).device
        z = sample_noise(noise_config, n, torch.Generator(device).manual_seed(seed), device)
        with torch.inference_mode():
            images = torch.cat([self.net(chunk) for chunk in z.split(1024)])
        return to_uint8(images.cpu(), self.config.data.value_range).squeeze(1).numpy()


def weights_path(path: str | Path) -> Path:
    """A run folder's generator, or the given .safetensors file."""
    path = Path(path)
    if path.is_dir():
        path = path / "generator.safetensors"
        if not path.exists():
            raise UserError(f"{path.parent} holds no generator.safetensors: "
                            "is it a finished mnistgan run folder?")
    elif not path.exists():
        raise UserError(f"{path} does not exist: give a run folder or a generator .safetensors file")
    return path


def load_generator(path: str | Path) -> TrainedGenerator:
    """Load a generator from a run folder or its weights file (no pickle involved)."""
    file = weights_path(path)
    tensors, config, role = load_weights(file)
    if role != "generator":
        raise UserError(f"{file} holds {role or 'unknown'} weights, not a generator: "
                        "use generator.safetensors")
    net = build_generator(config)
    load_state(net, tensors, str(file))
    return TrainedGenerator(net, config)
