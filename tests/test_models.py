import pytest
import torch
import torch.nn.functional as F

from mnistgan.config import load_config
from mnistgan.losses import BinaryCrossEntropy
from mnistgan.models import build_discriminator, build_generator


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", ["seed-000", "seed-001", "seed-002", "seed-004"])
def test_shapes_and_output_range(name):
    c = load_config(name)
    G, D = build_generator(c), build_discriminator(c)
    x = G(torch.randn(6, c.noise.dim))
    assert x.shape == (6, 1, 28, 28)
    low = -1 if c.data.value_range == "tanh" else 0
    assert x.min() >= low and x.max() <= 1
    assert D(x).shape == (6,)


def test_text_002_parameter_counts_match_the_keras_summary():
    c = load_config("seed-002")
    assert n_params(build_generator(c)) == 114_064  # "Total params: 114,064"
    assert n_params(build_discriminator(c)) == 100_609  # "Total params: 100,609"


def test_text_000_discriminator_flattens_4096_features():
    D = build_discriminator(load_config("seed-000"))
    assert D.out.in_features == 4 * 4 * 256  # "[4*4*256] -> [4096] -> [1]"


def test_text_001_generator_layer_order():
    G = build_generator(load_config("seed-001"))
    kinds = [type(m).__name__ for m in G.net]
    assert kinds[:3] == ["Linear", "LeakyReLU", "BatchNorm1d"]
    assert G.net[2].momentum == pytest.approx(0.2)  # Keras momentum 0.8


def test_text_004_batch_norm_uses_batch_statistics_when_sampling():
    c = load_config("seed-004")
    G = build_generator(c).eval()
    assert all(not m.track_running_stats for m in G.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    z = torch.rand(8, 100)
    # Batch statistics: an image depends on the rest of its batch, even in eval mode.
    assert not torch.allclose(G(z)[:4], G(torch.cat([z[:4], z[:4] * 0]))[:4])


def test_softmax_head_equals_categorical_cross_entropy():
    """2-way softmax + categorical CE (text 004) == BCE on the logit difference."""
    c = load_config("seed-004")
    D = build_discriminator(c).eval()  # no dropout: both passes must see the same net
    x = torch.rand(5, 1, 28, 28)
    two = D.out(D.trunk(x))
    target = torch.tensor([1, 0, 1, 1, 0])  # 1 = real (real_index = 1)
    ce = F.cross_entropy(two, target)
    bce = BinaryCrossEntropy().discriminator(D(x), target.float())
    assert torch.allclose(ce, bce, atol=1e-6)


def test_keras_init_zeroes_biases():
    G = build_generator(load_config("seed-001"))
    first = G.net[0]
    assert torch.count_nonzero(first.bias) == 0
    bound = (6 / (first.in_features + first.out_features)) ** 0.5
    assert first.weight.abs().max() <= bound
