"""The training step op by op against the step compiled as one graph (`train.compile_step`).

Per preset, two GANs from the same seed, one with each setting, take turns in one process: a
timed window of one, then of the other, for --rounds rounds (the order alternating), so that
the VM's drift falls on both alike. Prints the time the first compiled step took (tracing and
inductor's compile; a warm inductor cache makes it shorter), both rates (median it/s over the
windows) and their ratio.

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/compile_step.py --presets seed-001 seed-002
"""

from __future__ import annotations

import argparse
import statistics
import time

from mnistgan.config import load_config
from mnistgan.train import bare_gan

SETTINGS = ("false", "true")


def rates(preset: str, seconds: float, rounds: int) -> tuple[float, dict[str, list[float]]]:
    """(seconds of the first compiled step, {setting: it/s per window})."""
    gans, first = {}, 0.0
    for setting in SETTINGS:
        config = load_config(preset, [f"train.compile_step={setting}"])
        gan = bare_gan(config)
        t0 = time.perf_counter()
        gan.train_step()
        if setting == "true":
            first = time.perf_counter() - t0
            if gan.step_graph is None:
                raise SystemExit(f"{preset}: the step did not compile (see the note above)")
        for _ in range(5):
            gan.train_step()
        gans[setting] = gan
    windows: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(rounds):
        for setting in SETTINGS if r % 2 == 0 else SETTINGS[::-1]:
            gan, n, t0 = gans[setting], 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < seconds:
                gan.train_step()
                n += 1
            windows[setting].append(n / (time.perf_counter() - t0))
    return first, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed-001", "seed-002"])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one window")
    parser.add_argument("--rounds", type=int, default=6, help="windows per setting")
    args = parser.parse_args()
    print("| preset | first compiled step s | op by op it/s | compiled it/s | compiled / op by op "
          "| windows (op by op; compiled) |\n|---|---|---|---|---|---|")
    for preset in args.presets:
        first, windows = rates(preset, args.seconds, args.rounds)
        eager, compiled = (statistics.median(windows[s]) for s in SETTINGS)
        shown = "; ".join(", ".join(f"{x:.0f}" for x in windows[s]) for s in SETTINGS)
        print(f"| {preset} | {first:.1f} | {eager:.1f} | {compiled:.1f} | **{compiled / eager:.2f}** "
              f"| {shown} |", flush=True)


if __name__ == "__main__":
    main()
