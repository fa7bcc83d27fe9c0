"""Building blocks shared by the MLP and convolutional networks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data import CLASSES
from .dense import Dense, eager_cpu, eager_cpu_float32


class ClampStraightThrough(nn.Module):
    """[-1, 1] going forward, the identity going back (a straight-through estimator).

    As a generator's output it can put pixels at MNIST's exact black and white, as the data
    has them (80 % of its pixels are 0), where tanh only approaches them and a linear output
    scatters the background around them; beyond the bounds a pixel keeps its gradient, so it
    is never stuck there as under a hard clamp."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (x.clamp(-1.0, 1.0) - x).detach()


class ClampBlackTanhWhite(nn.Module):
    """Below 0 the identity clamped at -1 (the black end), above 0 tanh (the white end).

    The clamp gives the background MNIST's exact black, where tanh leaves faint grey; tanh keeps
    the strokes' white from over-shooting to 255. Below -1 the gradient is zero, as for a ReLU:
    passing it straight through instead lets D's gradients on background that is already black
    push the pre-activations without bound, and training broke down in a first look. The two
    halves meet at 0 with the same value and slope."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 0, x.clamp(min=-1.0), torch.tanh(x))


# The registry of activations (config keys `activation`, `output`, `hidden_activation`):
# name -> layer, given LeakyReLU's slope.
ACTIVATIONS: dict[str, Callable[[float], nn.Module]] = {
    "relu": lambda slope: nn.ReLU(),
    "leaky_relu": nn.LeakyReLU,
    "tanh": lambda slope: nn.Tanh(),
    "sigmoid": lambda slope: nn.Sigmoid(),
    "none": lambda slope: nn.Identity(),
    "clamp": lambda slope: ClampStraightThrough(),
    "clamp_black": lambda slope: ClampBlackTanhWhite(),
}


def activation(name: str, slope: float = 0.2) -> nn.Module:
    return ACTIVATIONS[name](slope)


def batch_norm(
    kind: str, features: int, keras_momentum: float, eps: float, batch_stats: bool = False,
    per_class: bool = False,
) -> nn.Module:
    """Batch norm with Keras's momentum convention (weight of the *old* running value).

    `batch_stats` is Keras 1's ``mode=2``: always normalise with the current batch's statistics,
    at sampling time too; PyTorch does that when it keeps no running statistics. `per_class`:
    a ClassBatchNorm (scale and shift per class label).
    """
    cls = nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d
    norm = cls(features, eps=eps, momentum=1.0 - keras_momentum, track_running_stats=not batch_stats,
               affine=not per_class)
    return ClassBatchNorm(norm) if per_class else norm


class ClassBatchNorm(nn.Module):
    """Batch norm whose scale and shift are learned per class (conditional batch norm, de Vries
    et al. 2017; the generator of Miyato & Koyama's projection GAN): the digit steers every
    layer of G, not only its input. Called as `layer(x, labels)`."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm  # without scale and shift of its own
        self.scale = nn.Embedding(CLASSES, norm.num_features)
        self.shift = nn.Embedding(CLASSES, norm.num_features)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = (len(x), -1) + (1,) * (x.dim() - 2)
        return self.norm(x) * self.scale(labels).view(shape) + self.shift(labels).view(shape)


def run_with_labels(layers: nn.Sequential, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """`layers(x)`, with the labels given to the layers that take them (ClassBatchNorm)."""
    for layer in layers:
        x = layer(x, labels) if isinstance(layer, ClassBatchNorm) else layer(x)
    return x


class Dropout(nn.Module):
    """Inverted dropout, as ``nn.Dropout``, drawing its mask from 16 or 32 random bits an element.

    PyTorch's CPU ``bernoulli_`` costs ~9 ns an element, a third of text 004's step; random
    integers compared with ``p * 2**bits`` give the same Bernoulli(1 - p) mask. ``random_``
    draws 64 bits an element over a range of 2**28 or more (int32's), 32 below it, so the bits
    come as full-range int64 words split into halves or quarters, every drawn bit used: a
    3.2M-element mask of 32-bit draws took 9.7-14.7 ms, of 16-bit ones 5.1-6.7 (BENCHMARKS.md).
    16 bits where they hold p exactly (0.25, 0.5: text 004's rate), else 32 (p rounded to
    2**-32, finer than a float32 uniform's 2**-24).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {p}")
        self.p = p
        bits = 16 if (p * 2**16).is_integer() else 32
        self.bits = {16: torch.int16, 32: torch.int32}[bits]
        # the drawn integers are uniform on [-2**(bits-1), 2**(bits-1))
        self.threshold = round(p * 2**bits) - 2 ** (bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        n, per_word = x.numel(), 8 // self.bits.itemsize  # elements an int64 word holds
        words = torch.empty(-(-n // per_word), dtype=torch.int64, device=x.device)
        bits = words.random_(-(2**63), None).view(self.bits)[:n]
        keep = (bits >= self.threshold).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        # The mask in x's own memory layout (channels-last or not), so the product stays one pass.
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        return x * (keep.as_strided(x.shape, x.stride()) if dense else keep.view(x.shape))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MinibatchStd(nn.Module):
    """Append one feature map: the standard deviation of each feature over a group of `group`
    images, averaged (Karras et al. 2018). D can then tell a batch of look-alike fakes from
    real variety, which pushes G towards diversity. Groups are consecutive images, so that a
    batch of reals followed by as many fakes never mixes the two in one group."""

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        group = math.gcd(n, self.group)  # a batch the group size does not divide: smaller groups
        std = x.float().reshape(n // group, group, -1).var(1, unbiased=False).add(1e-8).sqrt()
        feature = std.mean(1).to(x.dtype).repeat_interleave(group)
        return torch.cat([x, feature.view(n, 1, 1, 1).expand(n, 1, h, w)], 1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


def _nearest_fold(k: int) -> tuple[torch.Tensor, int]:
    """How a k-tap 'same' kernel applied after nearest 2x upsampling reads the small image.

    Output row 2i + a (phase a) with tap d reads small-image row i + (a + d) // 2. A stride-2
    transposed convolution with padding p reads input row i + off through its tap a + p - 2 off,
    so the k taps fold into L = k + 1 taps (the two phases use taps of opposite parity).
    Returns the (L, k) 0/1 fold matrix and p.
    """
    h = k // 2
    reads = [(a, d, (a + d) // 2) for a in (0, 1) for d in range(-h, h + 1)]
    pad = max(2 * off - a for a, _, off in reads)
    fold = torch.zeros(k + 1, k)
    for a, d, off in reads:
        fold[a + pad - 2 * off, d + h] += 1.0
    return fold, pad


class UpsampleConv2d(nn.Conv2d):
    """Nearest-neighbour 2x upsampling followed by this 'same' convolution (odd kernel,
    stride 1), as texts 000 and 004 write it, computed as one stride-2 transposed convolution
    on the small image: the same function and parameters in (k+1)^2 / (4 k^2) of the
    multiply-adds (0.44x for 3x3, 0.36x for 5x5) and without the upsampled copy.
    ``fused = False`` computes it as written (benchmarks count the tutorials' work with it)."""

    fused = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        if kernel_size % 2 == 0:
            raise ValueError(f"upsample + conv needs an odd kernel, not {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        fold, self.fold_padding = _nearest_fold(kernel_size)
        self.register_buffer("fold", fold, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return super().forward(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        # weight (out, in, k, k) -> transposed-conv weight (in, out, k+1, k+1), in the weight's
        # memory layout: oneDNN runs channels-last only where a tensor it is given is.
        kernel = torch.einsum("ak,oikl,bl->ioab", self.fold, self.weight, self.fold)
        if self.kernel_size[0] > 1 and self.weight.is_contiguous(memory_format=torch.channels_last):
            kernel = kernel.contiguous(memory_format=torch.channels_last)
        return nn.functional.conv_transpose2d(x, kernel, self.bias, stride=2,
                                              padding=self.fold_padding)


class ThinConv2d(nn.Conv2d):
    """A 'same'-padded convolution with one input channel (D's first layer) or one output
    channel (G's last), computed as one matrix product and an unfold or fold. oneDNN has no
    vector kernel for a single channel and runs these at ~5-9 % of its matmul rate, 1.5-3x
    slower than this for 5x5 kernels (BENCHMARKS.md, "The one-channel convolutions"). Same
    parameters, same function to float rounding; ``fused = False`` runs PyTorch's own."""

    fused = True

    @staticmethod
    def computes(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> bool:
        return kernel_size % 2 == 1 and (in_channels == 1 or (out_channels == 1 and stride == 1))

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        if not self.computes(in_channels, out_channels, kernel_size, stride):
            raise ValueError(f"a thin conv has an odd kernel, one input channel or one output channel "
                             f"at stride 1, not {in_channels} -> {out_channels}, {kernel_size}x{kernel_size} "
                             f"stride {stride}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fused and eager_cpu_float32(x)):
            return super().forward(x)
        k = self.kernel_size[0]
        n, _, height, width = x.shape
        pad, stride = self.padding[0], self.stride[0]
        if self.in_channels == 1:
            # (n, k*k, L) patches; every output channel is one row of the weight times them.
            patches = nn.functional.unfold(x, k, padding=pad, stride=stride)
            weight = self.weight.reshape(1, self.out_channels, k * k).expand(n, -1, -1)
            y = torch.baddbmm(self.bias.view(1, -1, 1), weight, patches)
            return y.view(n, self.out_channels, (height + 2 * pad - k) // stride + 1,
                          (width + 2 * pad - k) // stride + 1)
        # One output channel: every tap's weighted channel sum at every pixel, then fold adds
        # the k*k shifted maps; fold's sliding blocks read the kernel mirrored, hence the flip.
        taps = self.weight[0].flip(1, 2).permute(1, 2, 0).reshape(k * k, self.in_channels)
        per_tap = torch.matmul(taps, x.reshape(n, self.in_channels, height * width))
        return nn.functional.fold(per_tap, (height, width), k, padding=pad) + self.bias.view(1, 1, 1, 1)


def conv_weight_grad(grad: torch.Tensor, x: torch.Tensor, kernel_size: int, stride: int,
                     padding: int) -> torch.Tensor:
    """The weight gradient of a square convolution (no dilation, one group) as matrix products:
    the strided views of the padded input that each kernel tap reads, copied side by side
    channels-last, against the output gradient. Each product sums over every image and pixel,
    so the result is rounded once, as oneDNN's is. Returns (out, in, k, k)."""
    n, c, h, w = x.shape
    _, o, out_h, out_w = grad.shape
    k, s, p = kernel_size, stride, padding
    if grad.numel() == 0 or x.numel() == 0:
        return x.new_zeros(o, c, k, k)
    padded = x.new_zeros(n, h + 2 * p, w + 2 * p, c)
    padded[:, p:p + h, p:p + w] = x.permute(0, 2, 3, 1)
    rows = grad.permute(0, 2, 3, 1).reshape(-1, o)  # a view where grad is channels-last
    taps = [(ky, kx) for ky in range(k) for kx in range(k)]
    # Taps in groups whose copies stay below 16 MB: under glibc's mmap threshold (which
    # memory.keep_freed_memory raises to 32 MB), so the block is reused, not faulted in anew.
    group = min(len(taps), max(1, (16 << 20) // (rows.shape[0] * c * x.element_size())))
    product = x.new_empty(k * k * c, o)  # rows (ky, kx, c)
    block = x.new_empty(n * out_h * out_w * group * c)
    for first in range(0, len(taps), group):
        chosen = taps[first:first + group]
        columns = block[:n * out_h * out_w * len(chosen) * c].view(n, out_h, out_w, len(chosen), c)
        for t, (ky, kx) in enumerate(chosen):
            columns[:, :, :, t] = padded[:, ky:ky + s * (out_h - 1) + 1:s, kx:kx + s * (out_w - 1) + 1:s]
        torch.mm(columns.view(rows.shape[0], -1).t(), rows,
                 out=product[first * c:(first + len(chosen)) * c])
    return product.view(k, k, c, o).permute(3, 2, 0, 1)


class _ProductWeightGradConv(torch.autograd.Function):
    """conv2d whose backward takes the input gradient from oneDNN and the weight gradient from
    conv_weight_grad."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return nn.functional.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        grad_x = grad_w = grad_b = None
        # A gradient of this gradient (R1) needs differentiable ops: PyTorch's whole backward.
        products = ctx.needs_input_grad[1] and not torch.is_grad_enabled()
        if ctx.needs_input_grad[0] or not products:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not products, False])
        if products:
            memory = (torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
                      else torch.contiguous_format)
            grad_w = conv_weight_grad(grad, x, weight.shape[-1], s, p).contiguous(memory_format=memory)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


class ProductGradConv2d(nn.Conv2d):
    """A 'same'-padded strided convolution whose weight gradient, in bfloat16, is matrix
    products (conv_weight_grad) instead of oneDNN's, which computes it at under half its
    bfloat16 matmul rate for these (text 004's 256 -> 512 5x5 stride 2, 64 images: 99.8 ms
    against 61.5 on the AVX512-BF16 host; BENCHMARKS.md, "D's weight gradient as matrix
    products"). The forward pass and the input gradient stay oneDNN's. In float32 PyTorch's
    own runs (there the products are no faster). Same parameters, same function to float
    rounding; ``fused = False`` runs PyTorch's own throughout."""

    fused = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.fused and torch.is_autocast_enabled("cpu") and eager_cpu(x)
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return super().forward(x)
        # Cast as autocast would, then run the product-gradient conv outside it: the casts'
        # own backward returns float32 gradients to the float32 parameters.
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            return _ProductWeightGradConv.apply(x.to(torch.bfloat16), self.weight.to(torch.bfloat16),
                                                bias, self.stride[0], self.padding[0])


def same_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A 'same'-padded convolution: a ThinConv2d where one side has one channel and the kernel
    is 5x5 or larger (for 3x3 and 1x1 oneDNN is level with it or faster); a ProductGradConv2d
    where it is strided and has 2**20 weights or more (for stride 1 oneDNN's weight gradient is
    2-2.7x faster than the products; text 000's D, with 0.2M and 0.8M weights, stepped 6 %
    slower with them though each layer's weight gradient alone was 7-16 % faster); else
    PyTorch's."""
    if kernel_size >= 5 and ThinConv2d.computes(in_channels, out_channels, kernel_size, stride):
        return ThinConv2d(in_channels, out_channels, kernel_size, stride)
    if stride > 1 and in_channels * out_channels * kernel_size**2 >= 1 << 20:
        return ProductGradConv2d(in_channels, out_channels, kernel_size, stride)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def maybe_spectral(layer: nn.Module, enabled: bool) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer) if enabled else layer


# The registry of weight initialisations (config key `init`): name -> in-place init of a
# weight, None for PyTorch's own. "keras" is Keras's default (Glorot-uniform weights, zero
# biases), so the seed presets start from the tutorials' distribution; "dcgan" is N(0, 0.02)
# from Radford et al.
INITS: dict[str, Callable[[torch.Tensor], Any] | None] = {
    "keras": nn.init.xavier_uniform_,
    "torch": None,
    "glorot_uniform": nn.init.xavier_uniform_,
    "glorot_normal": nn.init.xavier_normal_,
    "dcgan": lambda w: nn.init.normal_(w, 0.0, 0.02),
}


def initialise(module: nn.Module, scheme: str) -> None:
    """Re-initialise every dense and conv layer in `module` by `INITS[scheme]`."""
    init = INITS[scheme]
    if init is None:
        return
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            continue
        weight = getattr(layer, "parametrizations", None)
        with torch.no_grad():
            init(weight.weight.original if weight is not None else layer.weight)
            if layer.bias is not None:
                layer.bias.zero_()


def with_label(z: torch.Tensor, labels: torch.Tensor | None, conditional: bool) -> torch.Tensor:
    """A conditional generator's input: the noise with the label's one-hot code appended
    (Mirza & Osindero 2014); an unconditional one's: the noise."""
    if not conditional:
        return z
    if labels is None:
        raise ValueError("this generator is class-conditional: pass the digit labels")
    return torch.cat([z, nn.functional.one_hot(labels, CLASSES).to(z.dtype)], 1)


class Discriminator(nn.Module):
    """A feature trunk plus a real-vs-fake head that always returns one logit per image.

    Text 004's head is a 2-way softmax trained with categorical cross-entropy. A softmax over
    two units is the sigmoid of their difference, so its loss equals binary cross-entropy on
    ``logit = z[real] - z[fake]`` exactly, gradients included. Keeping the two units preserves
    the tutorial's parameters while every loss works on a single logit.

    Class-conditional discriminators either project (Miyato & Koyama 2018: the logit gains
    the inner product of a learned class embedding with the trunk's features) or see the
    label as ten extra one-hot input channels ("input").
    """

    def __init__(self, trunk: nn.Module, features: int, head: str, real_index: int,
                 spectral: bool = False, conditioning: str = "none") -> None:
        super().__init__()
        self.trunk = trunk
        self.head_kind = head
        self.real_index = real_index
        self.conditioning = conditioning
        self.out = maybe_spectral(Dense(features, 1 if head == "sigmoid" else 2), spectral)
        if conditioning == "projection":
            self.embed = maybe_spectral(nn.Embedding(CLASSES, features), spectral)
            nn.init.normal_(self.embed.weight if not spectral else
                            self.embed.parametrizations.weight.original, 0.0, 0.02)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioning != "none" and labels is None:
            raise ValueError("this discriminator is class-conditional: pass the digit labels")
        if self.conditioning == "input":
            planes = nn.functional.one_hot(labels, CLASSES).to(images.dtype)[:, :, None, None]
            images = torch.cat([images, planes.expand(-1, -1, *images.shape[2:])], 1)
        h = self.trunk(images)
        z = self.out(h)
        logit = z.squeeze(1) if self.head_kind == "sigmoid" else (
            z[:, self.real_index] - z[:, 1 - self.real_index])
        if self.conditioning == "projection":
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit


def dense_discriminator(trunk: list[nn.Module], features: int, hidden: list[int], act: str,
                        c: Any, conditioning: str) -> Discriminator:
    """Finish a discriminator: [Dense -> act -> Dropout] per hidden size after `trunk`, then
    the real-vs-fake head; `c` is the discriminator's config section."""
    layers = list(trunk)
    for h in hidden:
        layers += [maybe_spectral(Dense(features, h), c.spectral_norm),
                   activation(act, c.slope)]
        if c.dropout:
            layers.append(Dropout(c.dropout))
        features = h
    net = Discriminator(nn.Sequential(*layers), features, c.head, c.real_index, c.spectral_norm,
                        conditioning)
    initialise(net, c.init)
    return net
