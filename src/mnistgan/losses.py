"""Adversarial losses on the discriminator's output: one logit (or critic score) per image.

Each loss says how D is penalised for its verdict on a batch whose target is "real" (1,
or 1 - smoothing) or "fake" (0), and how G is penalised for D's verdict on its fakes. A
target may be a tensor (a mixed batch of real and fake images, as in text 004).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _target(logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
    if isinstance(target, torch.Tensor):
        return target
    return torch.full_like(logits, float(target))


class BinaryCrossEntropy:
    """The tutorials' loss. D is a binary classifier (binary or 2-way categorical
    cross-entropy, the same thing on one logit); G is trained through the stacked model with
    "real" labels, i.e. it minimises -log D(G(z)): the non-saturating form of Goodfellow's
    game, which is what `gan.train_on_batch(noise, ones)` computes."""

    def discriminator(self, logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, _target(logits, target))

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


class Minimax(BinaryCrossEntropy):
    """Goodfellow et al.'s original (saturating) generator loss: G minimises
    log(1 - D(G(z))), whose gradient vanishes while D rejects the fakes confidently."""

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -F.softplus(fake_logits).mean()  # log(1 - sigmoid(l)) = -softplus(l)


class Hinge:
    """Hinge loss (Lim & Ye; Miyato et al.): D wants scores >= 1 on real, <= -1 on fake."""

    def discriminator(self, logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        sign = torch.where(_target(logits, target) > 0.5, 1.0, -1.0)
        return F.relu(1.0 - sign * logits).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


class LeastSquares:
    """LSGAN (Mao et al.): D regresses real to its target (1, or 1 - smoothing) and fake to 0;
    G pulls its fakes' scores to 1."""

    def discriminator(self, logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        return 0.5 * (logits - _target(logits, target)).pow(2).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return 0.5 * (fake_logits - 1.0).pow(2).mean()


class WassersteinGP:
    """WGAN-GP (Gulrajani et al.): D is a critic maximising score(real) - score(fake), with a
    penalty lambda * (|grad D(x_hat)| - 1)^2 on points x_hat between a real and a fake image,
    the interpolation weight drawn uniformly per image."""

    def __init__(self, weight: float = 10.0) -> None:
        self.weight = weight

    def discriminator(self, logits: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        sign = torch.where(_target(logits, target) > 0.5, -1.0, 1.0)
        return (sign * logits).mean()

    def generator(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()

    def penalty(self, D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        n = min(len(real), len(fake))
        eps = torch.rand(n, 1, 1, 1, device=real.device, generator=generator)
        x_hat = (eps * real[:n] + (1 - eps) * fake[:n]).requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        return self.weight * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


LOSSES: dict[str, type] = {
    "bce": BinaryCrossEntropy,
    "minimax": Minimax,
    "hinge": Hinge,
    "lsgan": LeastSquares,
    "wgan-gp": WassersteinGP,
}


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as the pairs of the mode-seeking term: row i with row half + i (an odd last
    row has no partner)."""
    half = len(x) // 2
    return x[:half], x[half:2 * half]


def paired(labels: torch.Tensor) -> torch.Tensor:
    """Labels whose second half repeats the first, so that each pair of the mode-seeking term
    shows one digit twice."""
    first, second = _halves(labels)
    second.copy_(first)
    return labels


def mode_seeking(fakes: torch.Tensor, z: torch.Tensor, weight: float) -> torch.Tensor:
    """Mao et al. 2019 (MSGAN): weight / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over the pairs
    of a batch. Small when different noise makes different images, so adding it to G's loss
    pushes apart what a collapsing G would make alike."""
    (f1, f2), (z1, z2) = _halves(fakes), _halves(z)
    return weight / ((f1 - f2).abs().mean() / (z1 - z2).abs().mean() + 1e-5)


def top_k(fake_logits: torch.Tensor, keep: float) -> torch.Tensor:
    """The ceil(keep * n) fakes D scores as most real (Sinha et al. 2020, "Top-k training of
    GANs"): G's loss on these alone drops the gradient of the fakes D rejects most, which late
    in training point away from the nearest mode rather than towards it."""
    k = max(1, math.ceil(keep * len(fake_logits)))
    return fake_logits if k >= len(fake_logits) else fake_logits.topk(k, dim=0).values


def build_loss(name: str) -> BinaryCrossEntropy | Hinge | LeastSquares | WassersteinGP:
    return LOSSES[name]()
