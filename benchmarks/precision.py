"""bfloat16 autocast against float32 for one preset: the same training (steps, overrides) for
several seeds in each precision, then FID etc. of N samples of each saved generator.

The unstable presets spread widely from seed to seed (text 004's FID after 2,000 steps ranged
over 2x between two float32 seeds), so one pair says little: this prints every run, the mean
per precision, and a bootstrap interval for the ratio of the means. Runs go through the CLI,
one thread each, `--jobs` at a time; a run whose evaluation is already in OUT is reused, an
unfinished or shorter one resumed, so more seeds (or precisions) can be added to the same
OUT later. The first of --precisions is the baseline the others are compared with.

    python benchmarks/precision.py --preset seed-004 --steps 2000 --seeds 0 1 2 3 4 \\
        --precisions fp32 bf16 bf16-d --set train.pretrain_images=2000 --jobs 2 \\
        --out runs/precision-seed-004
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

from mnistgan.checkpoint import list_checkpoints
from mnistgan.config import Precision


def run_step(run: Path) -> int:
    """The step of the run's newest checkpoint (0 for none)."""
    newest = list_checkpoints(run / "checkpoints")
    return int(newest[-1].name.removeprefix("step_")) if newest else 0


def run_and_evaluate(args: argparse.Namespace, precision: str, seed: int) -> dict:
    """Train (or resume, or reuse) one run and return its evaluation."""
    name = f"{args.preset}-{precision}-seed{seed}"
    run, result = args.out / name, args.out / f"{name}-step{args.steps}.json"
    if not result.exists():
        start = time.perf_counter()
        commands = []
        if run_step(run) < args.steps:
            train = [sys.executable, "-m", "mnistgan", "train", "--steps", str(args.steps),
                     "--no-progress"]
            if (run / "config.json").exists():
                train += ["--resume", str(run)]  # its config keeps its one thread
            else:
                train += ["--preset", args.preset, "--precision", precision, "--seed", str(seed),
                          "--threads", "1", "--out", str(run), *(f"--set={kv}" for kv in args.set)]
            commands.append(train)
        commands.append([sys.executable, "-m", "mnistgan", "evaluate", str(run), "--n", str(args.n),
                         "--json", str(result)])
        log = args.out / f"{name}.log"
        with log.open("a") as out:
            for command in commands:
                if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                    sys.exit(f"precision.py: {' '.join(command)} failed: see {log}")
        print(f"  {name}: {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr, flush=True)
    return json.loads(result.read_text())["generated"]


def bootstrap_ratio(a: list[float], b: list[float], rounds: int = 10000) -> tuple[float, float]:
    """95 % interval of mean(b) / mean(a), resampling the runs of each side."""
    rng = random.Random(0)
    ratios = sorted(statistics.fmean(rng.choices(b, k=len(b))) /
                    statistics.fmean(rng.choices(a, k=len(a))) for _ in range(rounds))
    return ratios[int(0.025 * rounds)], ratios[int(0.975 * rounds) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed-004")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=get_args(Precision), help="the first is the baseline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (repeatable)")
    parser.add_argument("--n", type=int, default=5000, help="samples per evaluation")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    jobs = [(p, s) for s in args.seeds for p in args.precisions]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(jobs, pool.map(lambda job: run_and_evaluate(args, *job), jobs), strict=True))

    print(f"| {args.preset}, {args.steps} steps | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | median |")
    print("|---" * (len(args.seeds) + 3) + "|")
    fids = {p: [results[p, s]["fid"] for s in args.seeds] for p in args.precisions}
    for p in args.precisions:
        print(f"| FID, {p} | " + " | ".join(f"{f:.2f}" for f in fids[p])
              + f" | {statistics.fmean(fids[p]):.2f} | {statistics.median(fids[p]):.2f} |")
    for p in args.precisions:
        print(f"| missing / rare digits, {p} | " + " | ".join(
            f"{results[p, s]['missing_digits']:.0f} / {results[p, s]['rare_digits']:.0f}"
            for s in args.seeds) + " | | |")
    base = args.precisions[0]
    print()
    for p in args.precisions[1:]:
        ratio = statistics.fmean(fids[p]) / statistics.fmean(fids[base])
        low, high = bootstrap_ratio(fids[base], fids[p])
        better = sum(b < f for b, f in zip(fids[p], fids[base], strict=True))
        print(f"mean FID {p} / {base}: {ratio:.3f} (95 % bootstrap interval {low:.2f}-{high:.2f}); "
              f"{p} lower in {better} of {len(args.seeds)} seeds")
    print(f"{args.n} samples each; overrides: {' '.join(args.set) or '-'}")


if __name__ == "__main__":
    main()
