"""Building blocks shared by the MLP and convolutional networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def activation(name: str, slope: float = 0.2) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


def batch_norm(
    kind: str, features: int, keras_momentum: float, eps: float, batch_stats: bool = False
) -> nn.Module:
    """Batch norm with Keras's momentum convention (weight of the *old* running value).

    `batch_stats` is Keras 1's ``mode=2``: always normalise with the current batch's statistics,
    at sampling time too; PyTorch does that when it keeps no running statistics.
    """
    cls = nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d
    return cls(features, eps=eps, momentum=1.0 - keras_momentum, track_running_stats=not batch_stats)


def maybe_spectral(layer: nn.Module, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if enabled else layer


def initialise(module: nn.Module, scheme: str) -> None:
    """Re-initialise every dense and conv layer in `module`.

    "keras" is Keras's default (Glorot-uniform weights, zero biases), so the seed presets start
    from the same distribution as the tutorials; "torch" keeps PyTorch's defaults; "dcgan" is
    N(0, 0.02) from Radford et al.
    """
    if scheme == "torch":
        return
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            continue
        weight = getattr(layer, "parametrizations", None)
        w = weight.weight.original if weight is not None else layer.weight
        with torch.no_grad():
            if scheme in ("keras", "glorot_uniform"):
                nn.init.xavier_uniform_(w)
            elif scheme == "glorot_normal":
                nn.init.xavier_normal_(w)
            elif scheme == "dcgan":
                nn.init.normal_(w, 0.0, 0.02)
            else:
                raise ValueError(f"unknown init {scheme!r}")
            if layer.bias is not None:
                layer.bias.zero_()


CLASSES = 10  # class-conditional models take a digit label 0-9


def with_label(z: torch.Tensor, labels: torch.Tensor | None, conditional: bool) -> torch.Tensor:
    """A conditional generator's input: the noise with the label's one-hot code appended
    (Mirza & Osindero 2014); an unconditional one's: the noise."""
    if not conditional:
        return z
    if labels is None:
        raise ValueError("this generator is class-conditional: pass the digit labels")
    return torch.cat([z, nn.functional.one_hot(labels, CLASSES).to(z.dtype)], 1)


class Discriminator(nn.Module):
    """A feature trunk plus a real-vs-fake head that always returns one logit per image.

    Text 004's head is a 2-way softmax trained with categorical cross-entropy. A softmax over
    two units is the sigmoid of their difference, so its loss equals binary cross-entropy on
    ``logit = z[real] - z[fake]`` exactly, gradients included. Keeping the two units preserves
    the tutorial's parameters while every loss works on a single logit.

    Class-conditional discriminators either project (Miyato & Koyama 2018: the logit gains
    the inner product of a learned class embedding with the trunk's features) or see the
    label as ten extra one-hot input channels ("input").
    """

    def __init__(self, trunk: nn.Module, features: int, head: str, real_index: int,
                 spectral: bool = False, conditioning: str = "none") -> None:
        super().__init__()
        self.trunk = trunk
        self.head_kind = head
        self.real_index = real_index
        self.conditioning = conditioning
        self.out = maybe_spectral(nn.Linear(features, 1 if head == "sigmoid" else 2), spectral)
        if conditioning == "projection":
            self.embed = maybe_spectral(nn.Embedding(CLASSES, features), spectral)
            nn.init.normal_(self.embed.weight if not spectral else
                            self.embed.parametrizations.weight.original, 0.0, 0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning != "none" and labels is None:
            raise ValueError("this discriminator is class-conditional: pass the digit labels")
        if self.conditioning == "input":
            planes = nn.functional.one_hot(labels, CLASSES).to(images.dtype)[:, :, None, None]
            images = torch.cat([images, planes.expand(-1, -1, *images.shape[2:])], 1)
        h = self.trunk(images)
        z = self.out(h)
        logit = z.squeeze(1) if self.head_kind == "sigmoid" else (
            z[:, self.real_index] - z[:, 1 - self.real_index])
        if self.conditioning == "projection":
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit


def dense_discriminator(trunk: list[nn.Module], features: int, hidden: list[int], act: str,
                        c: Any, conditioning: str) -> Discriminator:
    """Finish a discriminator: [Dense -> act -> Dropout] per hidden size after `trunk`, then
    the real-vs-fake head; `c` is the discriminator's config section."""
    layers = list(trunk)
    for h in hidden:
        layers += [maybe_spectral(nn.Linear(features, h), c.spectral_norm),
                   activation(act, c.slope)]
        if c.dropout:
            layers.append(nn.Dropout(c.dropout))
        features = h
    net = Discriminator(nn.Sequential(*layers), features, c.head, c.real_index, c.spectral_norm,
                        conditioning)
    initialise(net, c.init)
    return net
