import math

import pytest
import torch

from mnistgan.config import NoiseConfig
from mnistgan.noise import sample_labels, sample_noise


def draw(dist, n=200_000, **kw):
    return sample_noise(NoiseConfig(dim=1, dist=dist, **kw), n, torch.Generator().manual_seed(0))


def test_shapes_and_dtype():
    z = sample_noise(NoiseConfig(dim=64, dist="uniform"), 5)
    assert z.shape == (5, 64) and z.dtype == torch.float32


def test_normal_moments():
    z = draw("normal")
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


def test_uniform_range_and_mean():
    z = draw("uniform", low=0.0, high=1.0)
    assert z.min() >= 0 and z.max() <= 1 and abs(z.mean() - 0.5) < 0.01


def test_semicircle_matches_wigner_density():
    # Wigner semicircle of radius R: variance R^2 / 4, density 2/(pi R^2) sqrt(R^2 - x^2).
    z = draw("semicircle", low=-1.0, high=1.0)
    assert z.min() >= -1 and z.max() <= 1
    assert abs(z.mean()) < 0.01 and abs(z.var() - 0.25) < 0.005
    hist = torch.histc(z, bins=10, min=-1, max=1) / len(z)
    edges = torch.linspace(-1, 1, 11)

    def cdf(x):
        return 0.5 + (x * math.sqrt(1 - x * x) + math.asin(x)) / math.pi

    expected = torch.tensor([cdf(float(b)) - cdf(float(a)) for a, b in zip(edges, edges[1:], strict=False)])
    assert torch.allclose(hist, expected, atol=0.005)


@pytest.mark.parametrize("dist", ["normal", "uniform", "semicircle"])
def test_seeded_draws_repeat(dist):
    c = NoiseConfig(dim=8, dist=dist)
    a = sample_noise(c, 4, torch.Generator().manual_seed(3))
    b = sample_noise(c, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sample_labels_draws_only_the_given_digits_uniformly_and_repeatably():
    classes = torch.tensor([2, 5, 7])
    labels = sample_labels(classes, 30_000, torch.Generator().manual_seed(3))
    counts = torch.bincount(labels, minlength=10)
    assert set(labels.unique().tolist()) == {2, 5, 7}
    assert (counts[classes] - 10_000).abs().max() < 400  # ~7 sd of a binomial count
    again = sample_labels(classes, 30_000, torch.Generator().manual_seed(3))
    assert torch.equal(labels, again)


def test_sample_labels_follows_given_frequencies_and_never_draws_a_zero_share():
    classes = torch.tensor([2, 5, 7])
    labels = sample_labels(classes, 30_000, torch.Generator().manual_seed(3), [0.7, 0.0, 0.3])
    counts = torch.bincount(labels, minlength=10)
    assert counts[5] == 0 and counts.sum() == 30_000
    assert abs(counts[2].item() - 21_000) < 450  # ~6 sd of a binomial count
    again = sample_labels(classes, 30_000, torch.Generator().manual_seed(3), [0.7, 0.0, 0.3])
    assert torch.equal(labels, again)
