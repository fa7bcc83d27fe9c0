import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mnistgan.config import load_config
from mnistgan.errors import UserError
from mnistgan.losses import BinaryCrossEntropy
from mnistgan.models import build_discriminator, build_generator
from mnistgan.models.common import (
    ClampBlackTanhWhite,
    ClampStraightThrough,
    Dropout,
    MinibatchStd,
    ProductGradConv2d,
    ThinConv2d,
    UpsampleConv2d,
    conv_weight_grad,
    same_conv,
)


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
    assert kinds[:3] == ["Dense", "LeakyReLU", "BatchNorm1d"]
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


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("size", [5, 7, 14])
def test_upsample_conv_is_upsample_then_conv(kernel, size):
    """The fused layer computes what texts 000 and 004 write, outputs and gradients alike."""
    torch.manual_seed(kernel * 100 + size)
    fused = UpsampleConv2d(6, 4, kernel)
    upsample, conv = nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(6, 4, kernel,
                                                                           padding=kernel // 2)
    conv.load_state_dict(fused.state_dict())
    x = torch.randn(3, 6, size, size, requires_grad=True)
    y, expected = fused(x), conv(upsample(x))
    assert y.shape == expected.shape == (3, 4, 2 * size, 2 * size)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, fused.weight, fused.bias), g)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    fused.fused = False  # as written: the same module, the same numbers
    torch.testing.assert_close(fused(x), y, rtol=1e-5, atol=1e-5)


def test_upsample_conv_refuses_an_even_kernel():
    with pytest.raises(ValueError, match="odd kernel"):
        UpsampleConv2d(2, 2, 4)


@pytest.mark.parametrize(("channels", "kernel", "stride", "shape"), [
    ((1, 6), 5, 2, (3, 1, 28, 28)),   # seed-000's and seed-004's first D layer
    ((1, 4), 7, 1, (2, 1, 9, 11)),
    ((5, 1), 5, 1, (3, 5, 28, 28)),   # seed-000's last G layer
    ((3, 1), 7, 1, (2, 3, 10, 13)),
])
def test_thin_conv_is_the_convolution(channels, kernel, stride, shape):
    """Output, input and weight gradients, and a gradient of a gradient (R1) equal PyTorch's
    own convolution with the same parameters."""
    torch.manual_seed(kernel + stride)
    thin = ThinConv2d(*channels, kernel, stride)
    conv = nn.Conv2d(*channels, kernel, stride=stride, padding=kernel // 2)
    conv.load_state_dict(thin.state_dict())
    x = torch.randn(shape, requires_grad=True)
    y, expected = thin(x), conv(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, thin.weight, thin.bias), g, create_graph=True)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias), g, create_graph=True)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.autograd.grad(got[0].square().sum(), thin.weight)[0],
                               torch.autograd.grad(want[0].square().sum(), conv.weight)[0],
                               rtol=1e-4, atol=1e-4)


def test_thin_conv_refuses_what_it_cannot_compute():
    for args in [(2, 3, 5), (1, 3, 4), (3, 1, 5, 2)]:
        with pytest.raises(ValueError, match="thin conv"):
            ThinConv2d(*args)


@pytest.mark.parametrize(("channels", "kernel", "stride", "size", "channels_last"), [
    ((6, 10), 5, 2, 14, False),   # seed-004's D 256 -> 512, narrowed
    ((3, 4), 3, 2, 7, True),      # best's D at 7x7: an odd image, the last window past the edge
    ((2, 3), 3, 1, 9, False),
    ((4, 2), 1, 3, 8, True),
])
def test_weight_gradient_as_products_is_the_convolutions(channels, kernel, stride, size, channels_last):
    """conv_weight_grad equals PyTorch's weight gradient in float64, in either memory layout."""
    torch.manual_seed(kernel * 10 + stride)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, channels[0], size, size, dtype=torch.float64).contiguous(memory_format=memory)
    weight = torch.randn(channels[1], channels[0], kernel, kernel, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(x, weight, stride=stride, padding=kernel // 2)
    g = torch.randn_like(y).contiguous(memory_format=memory)
    (want,) = torch.autograd.grad(y, weight, g)
    got = conv_weight_grad(g, x, kernel, stride, kernel // 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("channels_last", [False, True])
def test_product_grad_conv_is_the_convolution_under_bfloat16(channels_last, monkeypatch):
    """Under bfloat16 autocast the output is PyTorch's to the bit, and the input and bias
    gradients are PyTorch's to far below bfloat16's rounding (2**-8). The weight gradient (from
    the products) is the exact one rounded once to bfloat16, within one unit in the last place
    where the order of float32 sums tips a rounding, so it is at least as accurate as PyTorch's:
    on a CPU without AVX512 (AVX2 only) PyTorch's own rounds partial sums and lands twice as far
    from the exact gradient. A gradient of a gradient (R1) takes PyTorch's backward and gives its
    result. Outside autocast the layer is PyTorch's own."""
    from mnistgan.models import common

    calls = []
    monkeypatch.setattr(common, "conv_weight_grad",
                        lambda *args: calls.append(1) or conv_weight_grad(*args))
    torch.manual_seed(4)
    own = ProductGradConv2d(16, 24, 5, 2)
    conv = nn.Conv2d(16, 24, 5, stride=2, padding=2)
    conv.load_state_dict(own.state_dict())
    memory = torch.channels_last if channels_last else torch.contiguous_format
    own.to(memory_format=memory), conv.to(memory_format=memory)
    x = torch.randn(8, 16, 14, 14).contiguous(memory_format=memory).requires_grad_()

    def forward(layer):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return layer(x)

    y, expected = forward(own), forward(conv)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, own.weight, own.bias), g)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias), g)
    assert calls == [1]  # the weight gradient came from the products
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype == torch.float32 and a.stride() == b.stride()
    assert relative_error(got[0], want[0]) < 1e-4 and relative_error(got[2], want[2]) < 1e-4
    exact = nn.grad.conv2d_weight(x.detach().bfloat16().double(), own.weight.shape, g.double(),
                                  stride=own.stride, padding=own.padding)
    assert ((got[1].double() - exact).abs() <= exact.abs() * 2**-7).all()
    assert relative_error(got[1], exact) <= 1.01 * relative_error(want[1], exact)
    r1 = [torch.autograd.grad(torch.autograd.grad(forward(layer).float().sum(), x, create_graph=True)[0]
                              .square().sum(), layer.weight)[0] for layer in (own, conv)]
    assert relative_error(*r1) < 1e-3
    torch.testing.assert_close(own(x), conv(x), rtol=0, atol=0)


def test_weight_gradient_as_products_of_an_empty_batch_is_zero():
    x, g = torch.zeros(0, 4, 7, 7), torch.zeros(0, 6, 4, 4)
    assert torch.equal(conv_weight_grad(g, x, 3, 2, 1), torch.zeros(6, 4, 3, 3))


def test_large_strided_convs_take_their_weight_gradient_from_products():
    layers = {name: sorted({type(m).__name__ for m in build_discriminator(load_config(name)).trunk.modules()
                            if isinstance(m, nn.Conv2d)})
              for name in ("seed-000", "seed-004")}
    assert layers == {"seed-000": ["Conv2d", "ThinConv2d"],  # 64 -> 128 and 128 -> 256: too small
                      "seed-004": ["ProductGradConv2d", "ThinConv2d"]}  # 256 -> 512, 5x5
    assert type(same_conv(512, 512, 5, 1)) is nn.Conv2d  # stride 1, however large: oneDNN's


def test_a_channels_last_upsample_conv_runs_channels_last():
    """train.channels_last moves the weights; the transposed-conv kernel UpsampleConv2d derives
    from its weight follows it, so that oneDNN runs the layer channels-last, to the same images."""
    torch.manual_seed(0)
    config = load_config("seed-004")
    g = build_generator(config).train()
    last = build_generator(config).train()
    last.load_state_dict(g.state_dict())
    last.to(memory_format=torch.channels_last)
    layouts = []
    first = next(m for m in last.body if isinstance(m, UpsampleConv2d))
    first.register_forward_hook(
        lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    z = torch.rand(8, config.noise.dim)
    torch.testing.assert_close(last(z), g(z), rtol=1e-4, atol=1e-5)
    assert layouts == [True]


def test_one_channel_convs_are_thin_where_the_kernel_is_5x5():
    """seed-000 (5x5) takes the thin kernels at both ends; best's 3x3 ones stay plain convs, as
    does a D whose first layer has more than one channel (one-hot label planes)."""
    def thin_layers(config):
        return [m.in_channels for net in (build_generator(config), build_discriminator(config))
                for m in net.modules() if isinstance(m, ThinConv2d)]
    assert sorted(thin_layers(load_config("seed-000"))) == [1, 32]
    assert thin_layers(load_config("best")) == []
    assert thin_layers(load_config("best", ["discriminator.kernel=5", "generator.out_kernel=5",
                                            "discriminator.conditioning=input"])) == [32]


def test_seed_generators_keep_the_conv_parameters_of_upsample_then_conv():
    g = build_generator(load_config("seed-004"))
    fused = [m for m in g.modules() if isinstance(m, UpsampleConv2d)]
    assert len(fused) == 1 and fused[0].weight.shape == (100, 200, 3, 3)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.3])
def test_dropout_drops_p_and_rescales(p):
    torch.manual_seed(0)
    drop = Dropout(p)
    x = torch.ones(400, 1000, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.005  # 400k draws: sd 0.0007
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, y.detach())  # the same mask scales the gradient
    torch.manual_seed(0)
    assert torch.equal(Dropout(p)(x), y)  # the seed fixes the mask
    assert drop.bits == (torch.int16 if p in (0.25, 0.5) else torch.int32)  # 16 bits where they hold p
    if drop.bits == torch.int16:  # the threshold keeps exactly 1 - p of all 2**16 draws
        every = torch.arange(-(2**15), 2**15).to(torch.int16)
        assert (every >= drop.threshold).sum().item() == round((1 - p) * 2**16)
    odd = drop(torch.ones(3, 5, 7))  # 105 elements: not whole words
    assert odd.shape == (3, 5, 7) and bool(((odd == 0) | (odd == torch.tensor(1 / (1 - p)))).all())
    drop.eval()
    assert torch.equal(drop(x), x)


def test_dropout_refuses_p_outside_0_1():
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


def test_weights_written_before_the_fused_upsampling_still_load(tmp_path):
    """Runs saved while upsample and conv were two layers (an nn.Upsample, no parameters,
    one index before the conv) load into the fused layout and sample the same images."""
    import copy

    from mnistgan import TrainedGenerator, load_generator
    from mnistgan.checkpoint import save_weights

    config = load_config("seed-000")
    torch.manual_seed(0)
    g = build_generator(config)
    old = copy.deepcopy(g)
    old.body = nn.Sequential(*[layer for m in g.body for layer in (
        [nn.Upsample(scale_factor=2, mode="nearest"), m] if isinstance(m, UpsampleConv2d) else [m])])
    assert set(old.state_dict()) != set(g.state_dict())  # the old numbering
    save_weights(old, tmp_path / "generator.safetensors", config, "generator")
    loaded = load_generator(tmp_path / "generator.safetensors")
    for name, value in g.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], value), name
    g.eval()
    torch.testing.assert_close(loaded.sample(8, seed=3), TrainedGenerator(g, config).sample(8, seed=3))


def test_minibatch_std_channel_sees_its_group_only():
    """D's logit for an image changes when another image of its group of 4 changes, and only
    then; reals and fakes batched together (reals first) never share a group."""
    torch.manual_seed(0)
    config = load_config("best", ["discriminator.minibatch_std=4"])
    D = build_discriminator(config).eval()
    images, labels = torch.rand(16, 1, 28, 28) * 2 - 1, torch.arange(16) % 10
    before = D(images, labels)
    changed = images.clone()
    changed[5] = -changed[5]
    after = D(changed, labels)
    moved = (after - before).abs() > 1e-6
    assert moved[4:8].all() and not moved[:4].any() and not moved[8:].any()
    # Without the channel, changing image 5 moves its own logit alone.
    plain = build_discriminator(load_config("best")).eval()
    assert ((plain(changed, labels) - plain(images, labels)).abs() > 1e-6).sum() == 1
    # A batch that 4 does not divide falls back to groups that divide it (6: pairs).
    assert D(images[:6], labels[:6]).shape == (6,)
    # The layout training uses (channels_last) gives the same logits.
    nhwc = D.to(memory_format=torch.channels_last)
    assert torch.allclose(nhwc(images.to(memory_format=torch.channels_last), labels), before, atol=1e-5)


def test_minibatch_std_feature_is_the_mean_group_standard_deviation():
    x = torch.randn(8, 3, 2, 2)
    out = MinibatchStd(4)(x)
    assert out.shape == (8, 4, 2, 2) and torch.equal(out[:, :3], x)
    for g in range(2):
        group = x[4 * g:4 * g + 4].reshape(4, -1).double()
        expected = ((group - group.mean(0)).pow(2).mean(0) + 1e-8).sqrt().mean()
        assert torch.allclose(out[4 * g:4 * g + 4, 3].double(), expected.expand(4, 2, 2), atol=1e-6)


def test_transposed_upsampling_takes_an_even_kernel_without_a_checkerboard():
    config = load_config("best", ["generator.kernels=4,4,3"])
    G = build_generator(config)
    assert G(torch.randn(3, 64), torch.arange(3)).shape == (3, 1, 28, 28)
    # Each interior pixel of a 4x4 stride-2 transposed conv sums 2x2 taps: with all-ones
    # weights a constant input gives a constant output (a 3x3 kernel alternates 1, 2, 4 taps).
    up = next(m for m in G.body if isinstance(m, nn.ConvTranspose2d))
    single = nn.ConvTranspose2d(1, 1, 4, stride=2, padding=up.padding, output_padding=up.output_padding,
                                bias=False)
    nn.init.ones_(single.weight)
    out = single(torch.ones(1, 1, 7, 7))[0, 0, 1:-1, 1:-1]
    assert out.shape == (12, 12) and torch.all(out == 4)
    with pytest.raises(UserError, match="must be odd"):
        load_config("best", ["generator.kernels=4,4,3", "generator.upsample_mode=nearest"])


def test_dense_on_onednn_computes_what_linear_computes_gradients_of_gradients_too():
    from mnistgan.models.dense import Dense

    torch.manual_seed(0)
    dense, linear = Dense(30, 20), nn.Linear(30, 20)
    linear.load_state_dict(dense.state_dict())
    x = torch.randn(16, 30, requires_grad=True)
    y, expected = dense(x), linear(x)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, dense.weight, dense.bias), g)
    want = torch.autograd.grad(expected, (x, linear.weight, linear.bias), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    # R1 and WGAN-GP differentiate a gradient: the backward must itself be differentiable.
    for net in (dense, linear):
        (gx,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
        gx.square().sum().backward()
    torch.testing.assert_close(dense.weight.grad, linear.weight.grad)
    # Under bfloat16 autocast both are PyTorch's own bf16 matmul.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dense(x).dtype == torch.bfloat16


def test_clamp_output_is_in_range_forward_and_passes_gradients_straight_through():
    x = torch.tensor([-3.0, -1.0, -0.25, 0.5, 1.0, 2.5], requires_grad=True)
    y = ClampStraightThrough()(x)
    assert torch.equal(y.detach(), x.detach().clamp(-1, 1))
    (y * torch.arange(1.0, 7.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(1.0, 7.0))  # also beyond the bounds, unlike clamp's zero
    gen = build_generator(load_config("best", ["generator.output=clamp"]))
    assert isinstance(list(gen.modules())[-1], ClampStraightThrough)


def test_clamp_black_output_clamps_at_minus_one_below_zero_and_is_tanh_above():
    x = torch.tensor([-3.0, -0.25, 0.0, 0.5, 2.5], requires_grad=True)
    y = ClampBlackTanhWhite()(x)
    expected = torch.tensor([-1.0, -0.25, 0.0, math.tanh(0.5), math.tanh(2.5)])
    torch.testing.assert_close(y.detach(), expected)
    assert y.min() == -1 and y.max() < 1  # exact black, never exact white
    y.sum().backward()
    assert torch.equal(x.grad[:2], torch.tensor([0.0, 1.0]))  # no gradient where the clamp holds
    torch.testing.assert_close(x.grad[2:], 1 - torch.tanh(x.detach()[2:]) ** 2)
    gen = build_generator(load_config("best", ["generator.output=clamp_black"]))
    assert isinstance(list(gen.modules())[-1], ClampBlackTanhWhite)
