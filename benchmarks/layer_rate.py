"""Which layers a preset's training step spends its arithmetic in, and how fast each runs alone.

One training step is watched with forward hooks on every dense and convolution layer, which
record each call's input shape. Each call is then replayed alone, forward and backward (input
and weight gradients), on random data of that shape: its FLOPs (torch.utils.flop_counter) and
its time, hot in cache, at the preset's thread count, in the precision the step ran it in
(train.precision: bfloat16 autocast for the networks it names, measured against a bfloat16
matmul). The table lists the layers by time; the
last line compares the sum of those times with the whole step (an overestimate: a replay computes
every gradient, where the step's G update needs no weight gradients of the frozen D). A layer
that takes most of the step while running near the CPU's matmul rate is the step's hardware
limit.

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/layer_rate.py seed-004
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from dense_kernel import product_rate  # benchmarks/, the script's own folder
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnistgan.config import PRECISIONS, load_config
from mnistgan.models.common import UpsampleConv2d
from mnistgan.models.dense import use_dense_kernel
from mnistgan.train import bare_gan

LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, UpsampleConv2d)


def replay(layer: nn.Module, shape: tuple[int, ...], channels_last: bool, bf16: bool,
           reps: int) -> tuple[float, float]:
    """(FLOPs, seconds) of one forward and backward of `layer` on an input of `shape`, in the
    memory layout the step gave it (oneDNN picks other kernels for channels-last tensors) and
    under bfloat16 autocast where the step's precision put its network."""
    memory = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).to(memory_format=memory).requires_grad_(True)

    def forward() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return layer(x)

    kernel = getattr(layer, "kernel", None)
    if kernel is not None:  # the FLOP counter knows PyTorch's own matmul, not oneDNN's op
        use_dense_kernel(layer, "blas")
    with FlopCounterMode(display=False) as counter:
        y = forward()
        y.backward(torch.randn_like(y))
    if kernel is not None:
        use_dense_kernel(layer, kernel)
    for _ in range(2):
        forward().backward(torch.randn_like(y))
    t0 = time.perf_counter()
    for _ in range(reps):
        forward().backward(torch.randn_like(y))
    return counter.get_total_flops(), (time.perf_counter() - t0) / reps


def call(x: torch.Tensor) -> tuple[tuple[int, ...], bool]:
    """A layer call's input shape, and whether it came channels-last."""
    return tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


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

    calls: collections.Counter[tuple[str, tuple[int, ...], bool]] = collections.Counter()
    layers: dict[str, nn.Module] = {}
    hooks = []
    for net_name, net in (("G", gan.G), ("D", gan.D)):
        for name, layer in net.named_modules():
            if isinstance(layer, LAYERS):
                key = f"{net_name}.{name}"
                layers[key] = layer
                hooks.append(layer.register_forward_hook(
                    lambda mod, inputs, out, key=key: calls.update([(key, *call(inputs[0]))])))
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
    for (key, shape, channels_last), n in calls.items():
        bf16 = key.split(".")[0] in in_bf16
        flops, seconds = replay(layers[key], shape, channels_last, bf16, args.reps)
        layout = (" channels-last" if channels_last else "") + (" bf16" if bf16 else "")
        rows.append((key, "x".join(map(str, shape)) + layout, n, flops, seconds, references[bf16]))
    rows.sort(key=lambda r: -r[2] * r[4])
    print(f"{args.preset}, {torch.get_num_threads()} thread(s), precision {config.train.precision}: "
          f"{step_s * 1e3:.0f} ms a step; reference: {said}\n")
    print("| layer | input | calls a step | GFLOP a call (fwd + bwd) | ms a call alone | GFLOP/s | "
          "of the matmul rate (same precision) | ms a step |")
    print("|---|---|---|---|---|---|---|---|")
    total = 0.0
    for key, inputs, n, flops, seconds, reference in rows:
        total += n * seconds
        rate = flops / seconds / 1e9
        print(f"| {key} | {inputs} | {n} | {flops / 1e9:.3g} | {seconds * 1e3:.3g} | "
              f"{rate:.0f} | {rate / reference:.0%} | {n * seconds * 1e3:.0f} |")
    print(f"\nthe layers alone, forward and backward: {total * 1e3:.0f} ms of the step's "
          f"{step_s * 1e3:.0f} ms ({total / step_s:.0%})")


if __name__ == "__main__":
    main()
