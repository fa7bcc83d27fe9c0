"""Adversarial losses on the discriminator's logit (one per image).

Each loss answers two questions: how D is penalised for its verdict on a batch whose target is
"real" (1) or "fake" (0), possibly smoothed, and how G is penalised for D's verdict on its fakes.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Loss(Protocol):
    def discriminator(self, logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        ...

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        ...


class BinaryCrossEntropy:
    """The tutorials' loss: D is a binary classifier (binary or 2-way categorical
    cross-entropy, the same thing on one logit); G is trained through the stacked model with
    "real" labels, i.e. it minimises -log D(G(z)) (the non-saturating form of Goodfellow's
    minimax game, which is what `gan.train_on_batch(noise, ones)` computes)."""

    def discriminator(self, logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        if not isinstance(target, torch.Tensor):
            target = torch.full_like(logits, float(target))
        return F.binary_cross_entropy_with_logits(logits, target)

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


LOSSES: dict[str, type] = {"bce": BinaryCrossEntropy}


def build_loss(name: str) -> Loss:
    return LOSSES[name]()
