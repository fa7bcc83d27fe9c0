"""This package's own convolution kernels against PyTorch's (oneDNN), in whole training steps
of the presets that have them: `ThinConv2d` (the one-channel convolutions as matrix products)
or `ProductGradConv2d` (strided convolutions whose bfloat16 weight gradient is matrix products).

One process per preset builds the preset's GAN once and times windows of its bare training
step with the layer class's `fused` off and on, taking turns, so that a slow spell of the
machine hits both alike. Prints one row per preset: the median rate of each side, their ratio,
and every window. (The layers alone, forward and backward: `benchmarks/layer_rate.py`.)

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/conv_kernels.py --layer thin \
        --presets seed-000 seed-004
    MNISTGAN_DATA=../shared/data/mnist python benchmarks/conv_kernels.py --layer product \
        --presets seed-004 --set train.precision=bf16-d
"""

from __future__ import annotations

import argparse
import statistics
import time

from mnistgan.config import load_config
from mnistgan.models.common import ProductGradConv2d, ThinConv2d
from mnistgan.train import bare_gan

LAYERS = {"thin": ThinConv2d, "product": ProductGradConv2d}


def window_rate(gan, seconds: float) -> float:
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        gan.train_step()
        steps += 1
    return steps / (time.perf_counter() - start)


def measure(preset: str, layer: type, overrides: list[str], threads: int | None, seconds: float,
            rounds: int) -> dict:
    overrides = overrides + ([f"train.threads={threads}"] if threads else [])
    gan = bare_gan(load_config(preset, overrides))
    count = sum(isinstance(m, layer) for net in (gan.G, gan.D) for m in net.modules())
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for fused in (False, True):  # warm-up: each side's kernels and buffers
            layer.fused = fused
            window_rate(gan, seconds / 4)
        for _ in range(rounds):
            for fused in (False, True):
                layer.fused = fused
                rates[fused].append(window_rate(gan, seconds))
    finally:
        layer.fused = True
    plain, fast = statistics.median(rates[False]), statistics.median(rates[True])
    return {"preset": preset, "threads": gan.config.train.threads, "layers": count, "plain": plain,
            "own": fast, "ratio": fast / plain, "windows": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", choices=sorted(LAYERS), default="thin")
    parser.add_argument("--presets", nargs="+", default=["seed-000", "seed-004"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every preset, e.g. train.precision=bf16-d")
    parser.add_argument("--threads", type=int, help="train.threads (default: each preset's own)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per timed window")
    parser.add_argument("--rounds", type=int, default=4, help="windows per side")
    args = parser.parse_args()
    layer = LAYERS[args.layer]
    print(f"bare training step, {layer.__name__} off and on, windows of {args.seconds:g} s, "
          f"{args.rounds} per side, sides alternating; overrides: {' '.join(args.overrides) or 'none'}\n")
    print(f"| preset | threads | {args.layer} layers | PyTorch's convs it/s | own convs it/s "
          "| own / PyTorch's | windows (PyTorch's; own) |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        r = measure(preset, layer, args.overrides, args.threads, args.seconds, args.rounds)
        windows = "; ".join(", ".join(f"{v:.2f}" for v in r["windows"][side]) for side in (False, True))
        print(f"| {preset} | {r['threads']} | {r['layers']} | {r['plain']:.2f} | {r['own']:.2f} "
              f"| **{r['ratio']:.2f}** | {windows} |", flush=True)


if __name__ == "__main__":
    main()
