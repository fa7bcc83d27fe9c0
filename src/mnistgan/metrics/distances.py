"""Sample-quality statistics on classifier features and class probabilities.

Pure functions on tensors: no models, no files. Features are the reference classifier's
embedding (N, D); probabilities are its softmax outputs (N, 10). Everything that compares
all points with all points works in row chunks, so 10,000 x 50,000 distances never sit in
memory at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "class_histogram",
    "classifier_score",
    "entropy",
    "fid",
    "kid",
    "knn_radii",
    "memorisation_threshold",
    "memorised_share",
    "nearest_distances",
    "precision_recall",
]

# Rows per chunk are chosen so one chunk of a distance matrix holds about this many float32
# values (80 MB).
_CHUNK_VALUES = 20_000_000


def _rows(n_other: int) -> int:
    return max(1, _CHUNK_VALUES // max(n_other, 1))


@contextmanager
def _one_thread() -> Iterator[None]:
    # MKL's threaded eigensolver spends ~1 s in thread hand-offs on a 128 x 128 matrix when the
    # other cores are busy (e.g. training in the same process); one thread does it in ~2 ms.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets:
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is the sum of square roots of the eigenvalues of S_a S_b, which are
    those of the symmetric S_a^(1/2) S_b S_a^(1/2), hence real and >= 0 (round-off negatives
    are clipped). Computed that way in float64 with two symmetric eigendecompositions, so no
    general matrix square root (SciPy's sqrtm) is needed.
    """
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 points per set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    with _one_thread():
        vals, vecs = torch.linalg.eigh(s_a)
        root_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
        cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * cross
    # Identical sets give a round-off value of either sign around 0.
    return max(float(value), 0.0)


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD^2 estimate with the
    kernel k(x, y) = (x.y / d + 1)^3, over `subsets` random subsets of `subset_size` points
    (drawn without replacement within a subset; fewer when a set is smaller); returns the
    mean and standard deviation over subsets. Can be slightly negative for equal distributions.
    """
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 points per set, got {len(a)} and {len(b)}")
    a, b = a.float(), b.float()
    d = a.shape[1]
    g = torch.Generator().manual_seed(seed)

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The dot products in float32 agree with float64 to ~1e-9 in the estimate (its spread
        # over subsets is ~1e-3) at a quarter of the cost; the cube and the sums, where the
        # unbiased estimate cancels large terms, are float64.
        return (x @ y.T).double().div_(d).add_(1).pow_(3)

    values = torch.empty(subsets, dtype=torch.float64)
    for i in range(subsets):
        x = a[torch.randperm(len(a), generator=g)[:m]]
        y = b[torch.randperm(len(b), generator=g)[:m]]
        kxx, kyy = kernel(x, x), kernel(y, y)
        within = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
        values[i] = within / (m * (m - 1)) - 2 * kernel(x, y).mean()
    std = float(values.std()) if subsets > 1 else 0.0
    return float(values.mean()), std


def knn_radii(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself
    excluded): the radii of the k-NN balls whose union is the set's manifold estimate."""
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} points, got {len(x)}")
    x = x.float()
    step = _rows(len(x))
    # k + 1 smallest, since each point is its own nearest neighbour at distance 0.
    return torch.cat([torch.cdist(x[s:s + step], x).topk(k + 1, dim=1, largest=False).values[:, -1]
                      for s in range(0, len(x), step)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point: does it fall inside any centre's ball?"""
    points, centres = points.float(), centres.float()
    step = _rows(len(centres))
    return torch.cat([(torch.cdist(points[s:s + step], centres) <= radii).any(dim=1)
                      for s in range(0, len(points), step)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): precision is the share of
    fakes inside the real manifold (the union of k-NN balls around the real points), recall
    the share of real points inside the fake manifold. `real_radii` (from `knn_radii(real,
    k)`) saves recomputing them when the same real set is used again."""
    if real_radii is None:
        real_radii = knn_radii(real, k)
    precision = _covered(fake, real, real_radii).float().mean()
    recall = _covered(real, fake, knn_radii(fake, k)).float().mean()
    return float(precision), float(recall)


def classifier_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """The Inception Score with the MNIST classifier: exp E_x[KL(p(y|x) || p(y))], mean and
    std over `splits` equal parts (p(y) is each part's own marginal). 10 for confident,
    balanced digits; 1 for a single class."""
    probs = probs.double().clamp_min(1e-12)
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (part.log() - marginal.log())).sum(1).mean()
        scores.append(math.exp(float(kl)))
    t = torch.tensor(scores)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0


def class_histogram(probs_or_labels: torch.Tensor, n_classes: int = 10) -> torch.Tensor:
    """How many samples fall in each class: from (N, n_classes) probabilities or logits
    (argmax) or from (N,) integer labels."""
    labels = probs_or_labels.argmax(1) if probs_or_labels.ndim == 2 else probs_or_labels.long()
    return torch.bincount(labels, minlength=n_classes)


def entropy(counts: torch.Tensor) -> float:
    """Shannon entropy (nats) of a histogram: log 10 = 2.30 for ten equal classes, 0 for one."""
    p = counts.double() / counts.sum().clamp_min(1)
    p = p[p > 0]
    return max(0.0, float(-(p * p.log()).sum()))  # no -0.0 for a single class


def nearest_distances(points: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Each point's Euclidean distance to its nearest neighbour in `others`."""
    points, others = points.float(), others.float()
    # |p - o|^2 = |p|^2 + |o|^2 - 2 p.o: the minimum over o needs only |o|^2 - 2 p.o, so the
    # square roots are taken for one value per point instead of one per pair.
    o_sq = others.pow(2).sum(1)
    step = _rows(len(others))
    out = []
    for s in range(0, len(points), step):
        p = points[s:s + step]
        partial = torch.addmm(o_sq, p, others.T, alpha=-2).min(1).values
        out.append((partial + p.pow(2).sum(1)).clamp_min(0).sqrt())
    return torch.cat(out) if out else torch.empty(0)


def memorisation_threshold(heldout: torch.Tensor, train: torch.Tensor, quantile: float = 0.01) -> float:
    """The distance to the nearest training image below which only `quantile` of held-out real
    images (never trained on) lie: real data's own closest approach to the training set."""
    return float(torch.quantile(nearest_distances(heldout, train), quantile))


def memorised_share(fake: torch.Tensor, train: torch.Tensor, threshold: float) -> float:
    """Share of samples closer to a training image than `threshold` (from
    `memorisation_threshold`). Held-out real images score the threshold's quantile (about
    0.01) by construction; copies of training images score 1."""
    return float((nearest_distances(fake, train) < threshold).float().mean())
