"""Sample-quality statistics on classifier features and class probabilities.

Pure functions on tensors: no models, no files. Features are the reference classifier's
embedding (N, D); probabilities are its softmax outputs (N, 10).
"""

from __future__ import annotations

import math

import torch

PR_K = 3  # neighbours whose ball makes a point's share of the manifold (the paper's k)


def gaussian(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of a feature set (N, D)."""
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def frechet(mu_a: torch.Tensor, s_a: torch.Tensor, mu_b: torch.Tensor, s_b: torch.Tensor) -> float:
    """Fréchet distance between two Gaussians:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is the sum of square roots of the eigenvalues of S_a S_b, which are
    those of the symmetric S_a^(1/2) S_b S_a^(1/2), hence real and >= 0: computed that way in
    float64, so no general matrix square root (or SciPy) is needed.
    """
    mu_a, s_a, mu_b, s_b = (t.double() for t in (mu_a, s_a, mu_b, s_b))
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross
    return max(float(value), 0.0)


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D)."""
    return frechet(*gaussian(a), *gaussian(b))


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 with the kernel
    k(x, y) = (x.y / d + 1)^3, averaged over random subsets; returns (mean, std)."""
    a, b = a.double(), b.double()
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values.append(float(off - 2 * kxy.mean()))
    t = torch.tensor(values)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def knn_radius(x: torch.Tensor, k: int = PR_K, chunk: int = 2048) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    radii = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x)
        # The (k+1)-th smallest (the point itself is the first): topk of a few is the same value
        # as kthvalue's, at a quarter of its time on a 10,000-point set.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
             chunk: int = 2048) -> torch.Tensor:
    """For each point: does it fall inside any centre's k-NN ball?"""
    out = []
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], centres)
        out.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the share of
    fakes inside the real manifold (the union of k-NN balls around real points); recall the
    share of real points inside the fake manifold. `real_radii`: `knn_radius(real, k)` when the
    caller keeps it (a reference scored against many sample sets)."""
    real, fake = real.float(), fake.float()
    radii = knn_radius(real, k) if real_radii is None else real_radii
    precision = _covered(fake, real, radii).float().mean()
    return float(precision), recall(real, fake, k)


def recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> float:
    """The share of real points inside the fake manifold (precision_recall's second half)."""
    real, fake = real.float(), fake.float()
    return float(_covered(real, fake, knn_radius(fake, k)).float().mean())


def classifier_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """The Inception Score with the MNIST classifier: exp E[KL(p(y|x) || p(y))], mean and std
    over `splits` parts. 10 for confident, balanced digits; 1 for a single class."""
    probs = probs.double().clamp_min(1e-12)
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.log() - marginal.log())).sum(1).mean()
        scores.append(math.exp(float(kl)))
    t = torch.tensor(scores)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0


def class_histogram(probs: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """How many samples the classifier assigns to each digit."""
    return torch.bincount(probs.argmax(1), minlength=n_classes)


def entropy(counts: torch.Tensor) -> float:
    """Shannon entropy (nats) of a histogram: log 10 = 2.30 for ten equal classes."""
    p = counts.double() / counts.sum().clamp_min(1)
    return max(0.0, float(-(p[p > 0] * p[p > 0].log()).sum()))  # no -0.0 for one class


def nearest_distance(points: torch.Tensor, others: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    return torch.cat([torch.cdist(points[s:s + chunk].float(), others.float()).min(1).values
                      for s in range(0, len(points), chunk)])


def memorised_share(fake: torch.Tensor, train: torch.Tensor, threshold: float) -> float:
    """Share of samples whose nearest training image is closer than `threshold`: the distance
    below which only 1 % of held-out real images lie from their nearest training image (see
    `memorisation_threshold`). Held-out real data scores about 0.01 by construction; copies
    of training images score 1."""
    return float((nearest_distance(fake, train) < threshold).float().mean())


def memorisation_threshold(heldout: torch.Tensor, train: torch.Tensor, quantile: float = 0.01) -> float:
    return float(torch.quantile(nearest_distance(heldout, train), quantile))
