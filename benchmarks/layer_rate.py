"""Which layers a preset's training step spends its arithmetic in, and how fast each runs alone.

One training step is watched with forward hooks on every dense and convolution layer, which
record each call's input shape, layout and passes (a forward under no_grad has no backward, a
frozen D no weight gradient, an image no input gradient). Each call is then replayed alone with
those passes, on random data of that shape: its FLOPs (torch.utils.flop_counter) and its time,
hot in cache, at the preset's thread count, in the precision the step ran it in
(train.precision: bfloat16 autocast for the networks it names, measured against a bfloat16
matmul). The table lists the layers by time; a line compares the sum of those times with the
whole step. A layer that takes most of the step while running near the CPU's matmul rate is
the step's hardware limit.

Beside each layer: its passes timed as the matrix products they amount to, at the layer's own
shapes (im2col for a convolution; for a transposed one the faster of its col2im and per-phase
forms), each product on the faster of MKL and oneDNN, copies left out. The last line is the
step with every layer at that time: what faster kernels for these layers could reach at this
CPU's matmul speed for those shapes (optimistic: no copies, each product hot in cache).

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/layer_rate.py seed-004
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import time
from typing import NamedTuple

import torch
from dense_kernel import product_rate  # benchmarks/, the script's own folder
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnistgan.config import PRECISIONS, load_config
from mnistgan.models.common import UpsampleConv2d
from mnistgan.models.dense import use_dense_kernel
from mnistgan.train import bare_gan

LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, UpsampleConv2d)
Form = list[tuple[int, int, int, int]]  # (how many, rows, inner, columns) of matrix products


class Passes(NamedTuple):
    """Which passes a layer call ran in the step: a forward under no_grad (G making D's fakes)
    has no backward, a frozen D (G's update) no weight gradient, an image no input gradient."""

    input_grad: bool
    weight_grad: bool


def replay(layer: nn.Module, shape: tuple[int, ...], channels_last: bool, bf16: bool,
           passes: Passes, reps: int) -> tuple[float, float]:
    """(FLOPs, seconds) of one call of `layer` on an input of `shape` with the step's `passes`,
    in the memory layout the step gave it (oneDNN picks other kernels for channels-last
    tensors) and under bfloat16 autocast where the step's precision put its network."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).to(memory_format=memory).requires_grad_(passes.input_grad)

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = layer(x)
        if y.requires_grad:
            y.backward(torch.ones_like(y))

    trainable = [p.requires_grad for p in layer.parameters()]
    kernel = getattr(layer, "kernel", None)
    try:
        layer.requires_grad_(passes.weight_grad)
        for _ in range(2):
            run()
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        seconds = (time.perf_counter() - t0) / reps
        if kernel is not None:  # the FLOP counter knows PyTorch's own matmul, not oneDNN's op
            use_dense_kernel(layer, "blas")
        with FlopCounterMode(display=False) as counter:
            run()
    finally:  # the layer as the step left it, whatever happened
        if kernel is not None:
            use_dense_kernel(layer, kernel)
        for p, was in zip(layer.parameters(), trainable, strict=True):
            p.requires_grad_(was)
    return counter.get_total_flops(), seconds


def gemm_forms(layer: nn.Module, shape: tuple[int, ...]) -> list[list[Form]]:
    """For the forward, input-gradient and weight-gradient passes of `layer` on an input of
    `shape`: the ways to compute that pass as matrix products with the pass's own FLOPs."""
    if isinstance(layer, nn.Linear):
        n, i, o = math.prod(shape[:-1]), layer.in_features, layer.out_features
        return [[[(1, n, i, o)]], [[(1, n, o, i)]], [[(1, o, n, i)]]]
    n, c_in, height, width = shape
    if isinstance(layer, UpsampleConv2d) and not layer.fused:  # upsample, then a 'same' conv
        height, width = 2 * height, 2 * width
    if isinstance(layer, UpsampleConv2d) and layer.fused:  # a stride-2 transposed conv, k + 1 taps
        c_out, k, stride = layer.out_channels, layer.kernel_size[0] + 1, 2
    elif isinstance(layer, nn.ConvTranspose2d):
        c_out, k, stride = layer.out_channels, layer.kernel_size[0], layer.stride[0]
    else:  # im2col: one row per output pixel, one column per (input channel, tap)
        c_out, k, stride, pad = layer.out_channels, layer.kernel_size[0], layer.stride[0], layer.padding[0]
        pixels = n * ((height + 2 * pad - k) // stride + 1) * ((width + 2 * pad - k) // stride + 1)
        patch = c_in * k * k
        return [[[(1, pixels, patch, c_out)]], [[(1, pixels, c_out, patch)]], [[(1, c_out, pixels, patch)]]]
    # transposed: every input pixel times every tap (col2im), or per output phase the taps that
    # phase reads (where the stride divides the kernel)
    pixels, taps = n * height * width, k * k
    forms = [[[(1, pixels, c_in, c_out * taps)]], [[(1, pixels, c_out * taps, c_in)]],
             [[(1, c_in, pixels, c_out * taps)]]]
    if k % stride == 0:
        phases, patch = stride * stride, c_in * taps // (stride * stride)
        per_phase = [(pixels, patch, c_out), (pixels, c_out, patch), (c_out, pixels, patch)]
        for form, phase in zip(forms, per_phase, strict=True):
            form.append([(phases, *phase)])
    return forms


@functools.cache
def product_seconds(rows: int, inner: int, cols: int, bf16: bool) -> float:
    """One rows x inner @ inner x cols product, hot in cache, on the faster of MKL and oneDNN
    (bfloat16: oneDNN, which PyTorch's own matmul calls for it); each shape timed once."""
    flop = 2 * rows * inner * cols
    if bf16:
        return flop / (product_rate(rows, inner, cols, "blas", reps=5, dtype=torch.bfloat16) * 1e9)
    rate = max(product_rate(rows, inner, cols, kernel, reps=5) for kernel in ("blas", "onednn"))
    return flop / (rate * 1e9)


def gemm_seconds(layer: nn.Module, shape: tuple[int, ...], bf16: bool, passes: Passes) -> float:
    """Seconds of the passes `layer` ran as matrix products, each pass in its fastest form."""
    forward, input_grad, weight_grad = gemm_forms(layer, shape)
    return sum(min(sum(count * product_seconds(rows, inner, cols, bf16) for count, rows, inner, cols in form)
                   for form in forms)
               for forms in [forward] + [input_grad] * passes.input_grad + [weight_grad] * passes.weight_grad)


def call(layer: nn.Module, x: torch.Tensor) -> tuple[tuple[int, ...], bool, Passes]:
    """A layer call's input shape, whether it came channels-last, and the passes it will run."""
    grad = torch.is_grad_enabled()
    passes = Passes(input_grad=grad and x.requires_grad,
                    weight_grad=grad and any(p.requires_grad for p in layer.parameters()))
    return (tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
            passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--steps", type=int, default=5, help="steps timed for the whole-step rate")
    parser.add_argument("--reps", type=int, default=5, help="replays timed per layer call")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    # Layers are seen by their forward hooks, which a compiled step (train.compile_step) does not
    # call: the step is timed op by op.
    config = load_config(args.preset, ["train.compile_step=false", *args.overrides])
    gan = bare_gan(config)
    for _ in range(2):
        gan.train_step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        gan.train_step()
    step_s = (time.perf_counter() - t0) / args.steps

    calls: collections.Counter[tuple[str, tuple[int, ...], bool, Passes]] = collections.Counter()
    layers: dict[str, nn.Module] = {}
    hooks = []
    for net_name, net in (("G", gan.G), ("D", gan.D)):
        for name, layer in net.named_modules():
            if isinstance(layer, LAYERS):
                key = f"{net_name}.{name}"
                layers[key] = layer
                hooks.append(layer.register_forward_hook(
                    lambda mod, inputs, out, key=key: calls.update([(key, *call(mod, inputs[0]))])))
    gan.train_step()
    for hook in hooks:
        hook.remove()

    in_bf16 = PRECISIONS[config.train.precision]  # the networks the step ran under autocast
    references = {False: product_rate(1024, 1024, 1024, "onednn", reps=10)}  # GFLOP/s
    said = f"a 1024^3 float32 matmul on oneDNN at {references[False]:.0f} GFLOP/s"
    if in_bf16:
        references[True] = product_rate(1024, 1024, 1024, "blas", reps=10, dtype=torch.bfloat16)
        said += f", in bfloat16 at {references[True]:.0f}"
    rows = []
    for (key, shape, channels_last, passes), n in calls.items():
        bf16 = key.split(".")[0] in in_bf16
        flops, seconds = replay(layers[key], shape, channels_last, bf16, passes, args.reps)
        gemm = gemm_seconds(layers[key], shape, bf16, passes)
        layout = (" channels-last" if channels_last else "") + (" bf16" if bf16 else "")
        ran = "+".join(["fwd", *["in-grad"] * passes.input_grad, *["w-grad"] * passes.weight_grad])
        rows.append((key, "x".join(map(str, shape)) + layout, ran, n, flops, seconds, references[bf16], gemm))
    rows.sort(key=lambda r: -r[3] * r[5])
    print(f"{args.preset}, {torch.get_num_threads()} thread(s), precision {config.train.precision}: "
          f"{step_s * 1e3:.0f} ms a step; reference: {said}\n")
    print("| layer | input | passes | calls a step | GFLOP a call | ms a call alone | GFLOP/s | "
          "of the matmul rate (same precision) | ms a step | ms a call as matrix products | "
          "ms a step above that |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    total = above = 0.0
    for key, inputs, ran, n, flops, seconds, reference, gemm in rows:
        total += n * seconds
        above += n * max(0.0, seconds - gemm)
        rate = flops / seconds / 1e9
        print(f"| {key} | {inputs} | {ran} | {n} | {flops / 1e9:.3g} | {seconds * 1e3:.3g} | "
              f"{rate:.0f} | {rate / reference:.0%} | {n * seconds * 1e3:.0f} | {gemm * 1e3:.3g} | "
              f"{n * max(0.0, seconds - gemm) * 1e3:.0f} |")
    print(f"\nthe layers alone, each call's passes: {total * 1e3:.0f} ms of the step's "
          f"{step_s * 1e3:.0f} ms ({total / step_s:.0%})")
    print(f"the step with every layer as fast as its matrix products: {(step_s - above) * 1e3:.0f} ms "
          f"({step_s / (step_s - above):.2f}x the step)")


if __name__ == "__main__":
    main()
