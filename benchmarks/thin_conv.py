"""The one-channel convolutions as matrix products (`models.common.ThinConv2d`) against
PyTorch's own (oneDNN), in whole training steps of the presets that have them.

One process per preset builds the preset's GAN once and times windows of its bare training
step with `ThinConv2d.fused` off and on, taking turns, so that a slow spell of the machine hits
both alike. Prints one row per preset: the median rate of each side, their ratio, and every
window. (The layers alone, forward and backward: `benchmarks/layer_rate.py`.)

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/thin_conv.py --presets seed-000 seed-004
"""

from __future__ import annotations

import argparse
import statistics
import time

from mnistgan.config import load_config
from mnistgan.models.common import ThinConv2d
from mnistgan.train import bare_gan


def window_rate(gan, seconds: float) -> float:
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < seconds:
        gan.train_step()
        steps += 1
    return steps / (time.perf_counter() - start)


def measure(preset: str, threads: int | None, seconds: float, rounds: int) -> dict:
    overrides = [f"train.threads={threads}"] if threads else []
    gan = bare_gan(load_config(preset, overrides))
    thin = sum(isinstance(m, ThinConv2d) for net in (gan.G, gan.D) for m in net.modules())
    rates: dict[bool, list[float]] = {False: [], True: []}
    try:
        for fused in (False, True):  # warm-up: each side's kernels and buffers
            ThinConv2d.fused = fused
            window_rate(gan, seconds / 4)
        for _ in range(rounds):
            for fused in (False, True):
                ThinConv2d.fused = fused
                rates[fused].append(window_rate(gan, seconds))
    finally:
        ThinConv2d.fused = True
    plain, fast = statistics.median(rates[False]), statistics.median(rates[True])
    return {"preset": preset, "threads": gan.config.train.threads, "layers": thin, "plain": plain,
            "thin": fast, "ratio": fast / plain, "windows": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed-000", "seed-004"])
    parser.add_argument("--threads", type=int, help="train.threads (default: each preset's own)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per timed window")
    parser.add_argument("--rounds", type=int, default=4, help="windows per side")
    args = parser.parse_args()
    print(f"bare training step, windows of {args.seconds:g} s, {args.rounds} per side, sides alternating\n")
    print("| preset | threads | thin layers | PyTorch's convs it/s | thin convs it/s | thin / PyTorch's "
          "| windows (PyTorch's; thin) |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        r = measure(preset, args.threads, args.seconds, args.rounds)
        windows = "; ".join(", ".join(f"{v:.2f}" for v in r["windows"][side]) for side in (False, True))
        print(f"| {preset} | {r['threads']} | {r['layers']} | {r['plain']:.2f} | {r['thin']:.2f} "
              f"| **{r['ratio']:.2f}** | {windows} |", flush=True)


if __name__ == "__main__":
    main()
