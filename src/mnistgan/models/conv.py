"""Convolutional GANs: text 000 (dense -> 7x7 -> upsample + conv) and text 004 (dense ->
14x14x200 -> upsample -> 3x3 convs), with strided-conv discriminators."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .common import (
    CLASSES,
    Discriminator,
    Dropout,
    MinibatchStd,
    UpsampleConv2d,
    activation,
    batch_norm,
    dense_discriminator,
    initialise,
    maybe_spectral,
    run_with_labels,
    same_conv,
    with_label,
)
from .dense import Dense

if TYPE_CHECKING:
    from ..config import ConvDiscriminatorConfig, ConvGeneratorConfig


class ConvGenerator(nn.Module):
    """noise -> Dense(C*S*S) -> BN -> act -> reshape (C, S, S) -> Dropout
    -> [Upsample x2? -> Conv k x k ('same') -> BN -> act -> Dropout] per layer (the pair run as
       one UpsampleConv2d; or a learned stride-2 transposed conv, upsample_mode = "transpose")
    -> Conv(out_kernel) to 1 channel -> output activation."""

    def __init__(self, noise_dim: int, c: ConvGeneratorConfig, conditional: bool = False) -> None:
        super().__init__()
        self.conditional = conditional
        self.start = (c.start_channels, c.start_size, c.start_size)
        features = c.start_channels * c.start_size**2
        self.dense = Dense(noise_dim + CLASSES * conditional, features)

        def norm(kind: str, width: int) -> nn.Module:
            return batch_norm(kind, width, c.bn_momentum, c.bn_eps, c.bn_batch_stats,
                              per_class=c.class_norm and conditional)

        stem: list[nn.Module] = []
        if c.batch_norm:
            stem.append(norm("1d", features))
        stem.append(activation(c.activation, c.slope))
        self.stem = nn.Sequential(*stem)
        body: list[nn.Module] = [Dropout(c.dropout)] if c.dropout else []
        width = c.start_channels
        for ch, k, up in zip(c.channels, c.kernels, c.upsample, strict=True):
            if up and c.upsample_mode == "transpose":
                # Sizes double for odd and even k; an even k (4) makes every output pixel the
                # sum of as many taps as its neighbours' (no checkerboard, Odena et al. 2016).
                body.append(nn.ConvTranspose2d(width, ch, k, stride=2, padding=(k - 1) // 2,
                                               output_padding=k % 2))
            elif up:
                body.append(UpsampleConv2d(width, ch, k))
            else:
                body.append(same_conv(width, ch, k))
            if c.batch_norm:
                body.append(norm("2d", ch))
            body.append(activation(c.activation, c.slope))
            if c.dropout:
                body.append(Dropout(c.dropout))
            width = ch
        body += [same_conv(width, 1, c.out_kernel), activation(c.output)]
        self.body = nn.Sequential(*body)
        initialise(self, c.init)
        if c.init_first is not None:
            initialise(self.dense, c.init_first)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dense(with_label(z, labels, self.conditional))
        x = run_with_labels(self.stem, x, labels).view(-1, *self.start)
        return run_with_labels(self.body, x, labels)


def conv_discriminator(c: ConvDiscriminatorConfig, conditioning: str = "none") -> Discriminator:
    """image -> [Conv k x k stride s ('same') -> BN? -> act -> Dropout] per channel count
    -> [minibatch standard deviation as one more channel] -> Flatten
    -> [Dense -> act -> Dropout] per hidden size -> head."""
    layers: list[nn.Module] = []
    width, size = 1 + CLASSES * (conditioning == "input"), 28
    for ch in c.channels:
        layers.append(maybe_spectral(same_conv(width, ch, c.kernel, c.stride), c.spectral_norm))
        if c.batch_norm:
            layers.append(batch_norm("2d", ch, c.bn_momentum, c.bn_eps))
        layers.append(activation(c.activation, c.slope))
        if c.dropout:
            layers.append(Dropout(c.dropout))
        width = ch
        size = (size + 2 * (c.kernel // 2) - c.kernel) // c.stride + 1
    if c.minibatch_std:
        layers.append(MinibatchStd(c.minibatch_std))
        width += 1
    layers.append(nn.Flatten())
    return dense_discriminator(layers, width * size * size, c.hidden, c.hidden_activation, c,
                               conditioning)
