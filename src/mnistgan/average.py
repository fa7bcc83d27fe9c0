"""G's moving average, the generator that makes every image a run shows: its update, and the
batch-norm statistics it samples with.

The moving average of G's weights (`train.ema`) keeps a moving average of G's batch-norm
statistics beside them. Those are averages of statistics G had under earlier weights, not the
statistics of the averaged weights' own activations, so in inference mode its layers normalise
with a slightly wrong mean and variance. `train.standing_stats` replaces them with the
statistics of the sampling generator itself over fresh noise: BigGAN's "standing statistics"
(Brock et al. 2019). Training never sees them; they are computed on a copy whenever samples
are made or the generator is written.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .config import Config
from .noise import label_classes, sample_labels, sample_noise

# The draws of the standing-statistics passes: their own stream, fixed per run, so that the
# same weights always give the same statistics and no training stream is touched.
_STANDING_SEED_OFFSET = 5


def ema_with_warmup(decay: float) -> Callable[..., None]:
    """EMA update whose decay ramps up as (1 + n) / (10 + n) to `decay`: early averages would
    otherwise be dominated by the untrained initial weights for ~1 / (1 - decay) steps."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        weight = 1 - min(decay, (1 + float(n)) / (10 + float(n)))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # counters such as BN's num_batches_tracked
                a.copy_(c)
    return update


def _norms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


def standing_statistics(generator: nn.Module, config: Config) -> nn.Module:
    """`generator` for sampling: itself where `config.train.standing_stats` is 0 or it has no
    batch norm, else a copy whose batch-norm layers hold the mean and variance of its own
    activations over that many batches of `config.train.batch_size` fresh noise draws (and
    digits drawn at random for a conditional model), as it would see them in training."""
    batches = config.train.standing_stats
    if not batches or not _norms(generator):
        return generator
    net = copy.deepcopy(generator).eval()  # dropout stays off: no global random stream is used
    norms = _norms(net)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
        m.train()
    device = next(net.parameters()).device
    draw = torch.Generator(device).manual_seed(config.train.seed + _STANDING_SEED_OFFSET)
    classes = label_classes(config.data.digits, device)
    n = config.train.batch_size
    with torch.no_grad():
        for _ in range(batches):
            z = sample_noise(config.noise, n, draw, device)
            labels = sample_labels(classes, n, draw) if config.data.conditional else None
            net(z, labels)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return net.eval()
