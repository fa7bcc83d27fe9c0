"""`mnistgan train` end to end under two or more sets of overrides, the runs alternating.

Each arm runs `mnistgan train --preset P --steps N --set ...` in a fresh process, --rounds
times, arms taking turns so that a slow spell of the machine hits them alike. Per run: the
training seconds the run's own log reports (start-up excluded), the process's wall time,
its kernel (system) CPU seconds and its minor page faults. Prints one row per arm: medians
over the rounds, and every run's training seconds.

    python benchmarks/command_line_ab.py --preset best --steps 600 --rounds 3 \\
        --arms "train.reuse_memory=false" "train.reuse_memory=true"
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FINISHED = re.compile(r"finished \d+ steps; this session ([\d.]+) s")


def run_once(preset: str, steps: int, overrides: list[str], out: Path) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, "-m", "mnistgan", "train", "--preset", preset, "--steps", str(steps),
               "--out", str(out), "--no-progress", *(f"--set={o}" for o in overrides)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise SystemExit(f"mnistgan train {' '.join(overrides)} exited with {done.returncode}: {lines[-1]}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = FINISHED.search((out / "log.txt").read_text(encoding="utf-8"))
    if match is None:
        raise SystemExit(f"{out}/log.txt has no 'finished ... steps' line: did the run stop early?")
    return {"train_s": float(match.group(1)), "wall_s": wall,
            "sys_s": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", required=True, metavar="'KEY=VALUE ...'",
                        help="one quoted, space-separated set of overrides per arm ('' for none)")
    args = parser.parse_args()
    arms = [arm.split() for arm in args.arms]
    runs: list[list[dict[str, float]]] = [[] for _ in arms]
    with tempfile.TemporaryDirectory(prefix="command-line-ab-") as scratch:
        for round_ in range(args.rounds):
            for index, overrides in enumerate(arms):
                runs[index].append(run_once(args.preset, args.steps, overrides,
                                            Path(scratch) / f"{round_}-{index}"))
    print(f"`mnistgan train --preset {args.preset} --steps {args.steps}`, medians of {args.rounds} "
          "alternating runs\n")
    print("| overrides | training s | steps/s | process wall s | kernel CPU s | minor page faults | "
          "training s, each run |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in zip(args.arms, runs, strict=True):
        def median(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.median(r[key] for r in rows)
        seconds = median("train_s")
        print(f"| {name or '(preset as is)'} | {seconds:.1f} | {args.steps / seconds:.2f} | "
              f"{median('wall_s'):.1f} | {median('sys_s'):.1f} | {median('faults'):,.0f} | "
              + ", ".join(f"{r['train_s']:.1f}" for r in rows) + " |")


if __name__ == "__main__":
    main()
