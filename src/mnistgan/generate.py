"""Generation from saved files alone: a run folder or a generator .safetensors file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .average import standing_statistics
from .checkpoint import (
    Weights,
    checkpoint_step,
    load_state,
    load_weights,
    newer_checkpoints,
    read_checkpoint,
)
from .config import Config, config_from_dict
from .data import to_uint8
from .errors import UserError
from .models import build_generator
from .noise import DISTRIBUTIONS, interpolate, label_classes, sample_labels, sample_noise

# Images per forward pass when sampling: text 004's generator holds 200 channels at 28x28
# (0.6 MB an image per layer), so larger chunks cost memory and gain no speed.
SAMPLE_CHUNK = 256
LABEL_SEED_OFFSET = 1_000_003  # labels of seed s come from stream s + this


class TrainedGenerator:
    """A generator with the config it was trained under."""

    def __init__(self, net: nn.Module, config: Config, source: str = "", origin: str | None = None,
                 step: int | None = None) -> None:
        self.net = net.eval()
        self.config = config
        self.source = source  # the file or checkpoint folder it was loaded from
        self.step = step  # the training step of these weights (None: not recorded)
        # Where the weights came from when that is not a finished run's generator file: one
        # line for the user, e.g. "RUN is unfinished: using its checkpoint at step 400".
        self.origin = origin
        # The digits a conditional model can be asked for; empty for an unconditional one.
        self.classes: list[int] = (label_classes(config.data.digits).tolist()
                                   if config.data.conditional else [])

    @property
    def name(self) -> str:
        """The run's folder name (outside a run folder: the weights file's name)."""
        path = Path(self.source)
        if path.parent.name == "checkpoints":
            return path.parent.parent.name
        return path.parent.name if path.name == "generator.safetensors" else path.name

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def noise(self, n: int, seed: int = 0, noise: str | None = None) -> torch.Tensor:
        """`n` latent vectors from the trained distribution, or from `noise` (normal, uniform,
        semicircle) to see what the generator makes of one it was not trained on."""
        if n < 1:
            raise UserError(f"--n {n}: ask for at least one image")
        noise_config = self.config.noise
        if noise is not None:
            if noise not in DISTRIBUTIONS:
                raise UserError(f"unknown noise '{noise}': choose one of {', '.join(DISTRIBUTIONS)}")
            noise_config = replace(noise_config, dist=noise)
        return sample_noise(noise_config, n, torch.Generator(self.device).manual_seed(seed), self.device)

    def labels(self, n: int, digit: int | None = None, seed: int = 0) -> torch.Tensor | None:
        """Labels for n images: all `digit`, or the model's digits drawn at random with their
        shares of the training images, `data.digit_frequencies` (the same `seed`, the same
        draw); None if the model is unconditional (then asking for a digit is an error)."""
        if not self.classes:
            if digit is not None:
                raise UserError(f"--digit {digit}: this generator is not class-conditional (it was "
                                "trained without labels): sample without --digit, or train with "
                                "--set data.conditional=true (e.g. --preset best)")
            return None
        if digit is None:
            # A stream of its own, so that the labels do not echo the noise of the same seed.
            draw = torch.Generator(self.device).manual_seed(seed + LABEL_SEED_OFFSET)
            return sample_labels(torch.tensor(self.classes, device=self.device), n, draw,
                                 self.config.data.digit_frequencies)
        if digit not in self.classes:
            raise UserError(f"--digit {digit}: this generator knows digits "
                            f"{','.join(map(str, self.classes))}: ask for one of those")
        return torch.full((n,), digit, dtype=torch.long, device=self.device)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
        """Images (uint8, (n, 28, 28)) for latent vectors `z` (and digit `labels`)."""
        with torch.inference_mode():
            images = torch.cat([self.net(z[i:i + SAMPLE_CHUNK],
                                         None if labels is None else labels[i:i + SAMPLE_CHUNK])
                                for i in range(0, len(z), SAMPLE_CHUNK)])
        return to_uint8(images.cpu(), self.config.data.value_range).squeeze(1).numpy()

    def sample(self, n: int, seed: int = 0, noise: str | None = None,
               digit: int | None = None) -> np.ndarray:
        """`n` digits as a uint8 array (n, 28, 28); `digit` asks a conditional model for one
        digit (else its digits are drawn at random)."""
        labels = self.labels(n, digit, seed)
        return self.decode(self.noise(n, seed, noise), labels)

    def sample_by_class(self, per_digit: int, seed: int = 0, noise: str | None = None) -> np.ndarray:
        """`per_digit` images of each of a conditional model's digits, one digit after another
        (a grid with `per_digit` images a row has one row per digit)."""
        if not self.classes:
            raise UserError("--grid-by-class needs a class-conditional generator (this one was "
                            "trained without labels): train one with --preset best")
        return np.concatenate([self.sample(per_digit, seed=seed, noise=noise, digit=d)
                               for d in self.classes])

    def interpolation(self, seed_a: int, seed_b: int, steps: int = 16, noise: str | None = None,
                      digit: int | None = None) -> np.ndarray:
        """`steps` images (uint8, (steps, 28, 28)) on a path through latent space from the
        first image of `sample(seed=seed_a)` to that of `sample(seed=seed_b)`. A conditional
        model keeps one digit all the way: `digit`, or by default its first digit."""
        if steps < 2:
            raise UserError(f"steps {steps}: an interpolation needs at least 2 frames")
        path = interpolate(self.noise(1, seed_a, noise)[0], self.noise(1, seed_b, noise)[0],
                           steps, noise or self.config.noise.dist)
        if self.classes and digit is None:
            digit = self.classes[0]
        return self.decode(path, self.labels(steps, digit))


def load_generator(path: str | Path) -> TrainedGenerator:
    """Load a generator from a run folder, one of its checkpoint folders or a weights file (no
    pickle involved). A run that is unfinished (killed, or still training) is read from its
    newest whole checkpoint, the moving average of G where it keeps one;
    `TrainedGenerator.origin` then says so."""
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").is_file():  # one checkpoint of a run
        return _from_checkpoint(path, f"using checkpoint {path}")
    if path.is_dir():
        return _from_run(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run folder or a generator .safetensors file")
    return _from_file(path, load_weights(path))


def _from_file(file: Path, weights: Weights) -> TrainedGenerator:
    if weights.role != "generator":
        raise UserError(f"{file} holds {weights.role or 'unknown'} weights, not a generator: "
                        "use generator.safetensors")
    return _built(weights.tensors, weights.config, str(file), step=weights.step)


def _built(tensors: dict[str, torch.Tensor], config: Config, source: str,
           origin: str | None = None, step: int | None = None) -> TrainedGenerator:
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise UserError(f"{source} holds NaN or infinite weights ({broken[0]}): the run diverged "
                        "there; use generator_best.safetensors or an earlier checkpoint")
    net = build_generator(config)
    load_state(net, tensors, source)
    return TrainedGenerator(net, config, source, origin, step)


def _from_checkpoint(folder: Path, origin: str) -> TrainedGenerator:
    """The generator of one checkpoint folder: the moving average of G where it keeps one."""
    state = read_checkpoint(folder)
    config = config_from_dict(state["config"])
    gan = state["gan"]
    average = "G_ema" in gan
    tensors = ({k[len("module."):]: v for k, v in gan["G_ema"].items() if k.startswith("module.")}
               if average else gan["G"])
    generator = _built(tensors, config, str(folder),
                       origin + (" (the moving average of G)" if average else ""),
                       checkpoint_step(folder))
    # A checkpoint keeps the training state; a run's generator file is written as it samples.
    generator.net = standing_statistics(generator.net, config)
    return generator


def _from_run(run: Path) -> TrainedGenerator:
    file = run / "generator.safetensors"
    failed: UserError | None = None
    # Newest first. A training run deletes old checkpoints as it writes new ones: a folder
    # that vanished (or is damaged) gives way to the one before, and the list is read again.
    for _ in range(3):
        newer = newer_checkpoints(run)
        for folder in reversed(newer):
            try:
                return _from_checkpoint(folder, f"{run} is unfinished: using its checkpoint at "
                                                f"step {checkpoint_step(folder)}")
            except UserError as exc:
                failed = exc
        if not newer:
            break
    if file.is_file():
        return _from_file(file, load_weights(file))
    if failed is not None:
        raise failed
    if not (run / "config.json").is_file():
        raise UserError(f"{run} is not a run folder (no config.json, no generator.safetensors): "
                        "give the folder mnistgan train wrote, or a generator .safetensors file")
    raise UserError(f"{run} has no generator yet (it stopped before its first checkpoint): "
                    f"continue it with mnistgan train --resume {run}, or wait for its first checkpoint")
