"""Differentiable augmentation for the discriminator's inputs (Zhao et al. 2020, DiffAugment).

The same random transforms are applied to every image D sees, real or fake, in the D step and
in the G step; because they are differentiable, G learns through them and D cannot memorise
the training set's exact pixels. Transforms are drawn from PyTorch's global generator, whose
state every checkpoint saves, so a resumed run draws the same ones.

Adapted to one-channel digits: the empty space a translation or cutout uncovers is filled with
the background value (-1 for tanh-range images, 0 for sigmoid-range ones), not mid-grey.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

Transform = Callable[[torch.Tensor, float], torch.Tensor]


def brightness(x: torch.Tensor, background: float) -> torch.Tensor:
    return x + (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5)


def contrast(x: torch.Tensor, background: float) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5) + mean


def translation(x: torch.Tensor, background: float, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size (4 pixels on 28) in each direction."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1], value=background).permute(0, 2, 3, 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, background: float, ratio: float = 0.5) -> torch.Tensor:
    """Blank one square of `ratio` of the image's side (14 pixels on 28) at a random place."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)).unsqueeze(1)
    return torch.where(hole, torch.full_like(x, background), x)


TRANSFORMS: dict[str, Transform] = {
    "brightness": brightness, "contrast": contrast, "translation": translation, "cutout": cutout,
}


def augment(x: torch.Tensor, names: Sequence[str], background: float) -> torch.Tensor:
    """Apply the named transforms, in the order given."""
    for name in names:
        x = TRANSFORMS[name](x, background)
    return x
