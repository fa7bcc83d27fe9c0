"""Chaos test: kill training at random moments and check that the run is usable every time.

For each preset, one run trains without interruption (the reference) and another is killed
again and again with SIGKILL, SIGTERM or SIGINT at a random moment after it has started
training. After each kill, on the run exactly as it was left:

- `mnistgan sample RUN` writes a grid,
- `mnistgan evaluate RUN --n 100` prints its scores (--n N: another count); the two run
  side by side, as neither reads what the other writes,
- `mnistgan train --resume RUN` continues it (the next round, or the last one to the end).

A kill before the first checkpoint leaves nothing to use: then sample and evaluate must refuse
in one line saying so, and the run starts again from nothing. A signal that lands as the run
ends may end the process by itself (exit -N) rather than through its handler (128 + N).

At the end the resumed run must equal the reference: the same weights bit for bit and the
same metric rows (timings aside); where they differ, the tensors and the first row are named.
Prints a row per kill and the tally; exits 1 if any check failed. --jobs 2 works on both
presets at once (their rows then interleave).

    python benchmarks/chaos.py                        # 20 kills over seed-002 and seed-000
    python benchmarks/chaos.py --kills 4 --short --n 10   # what the test suite runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mnistgan.checkpoint import checkpoint_step, list_checkpoints

# Per preset: a few steps a second or hundreds, with checkpoints and grids often, so that kills
# land in steps, in checkpoint writes and in grid writes.
SETTINGS = {
    "seed-002": ["--set", "train.checkpoint_every=25", "--log-every", "10", "--sample-every", "200"],
    "seed-000": ["--set", "train.checkpoint_every=4", "--log-every", "2", "--sample-every", "20",
                 "--batch-size", "16"],
}
STEPS = {"seed-002": (12000, 600), "seed-000": (240, 24)}  # (full, --short)
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
TIMING = ("wall_s", "images_per_s")


def mnistgan(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "mnistgan", *map(str, args)]


def run_ok(*commands: list[str | Path]) -> list[tuple[bool, str]]:
    """Run the mnistgan commands at once; per command: whether it succeeded, and its last
    line on stderr."""
    processes = [subprocess.Popen(mnistgan(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for args in commands]
    said = []
    for process in processes:
        _, err = process.communicate(timeout=600)
        last = (err.strip().splitlines() or [""])[-1]
        said.append((process.returncode == 0 and "Traceback" not in err, last))
    return said


def metric_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a last line cut by SIGKILL
            rows.append({k: v for k, v in json.loads(line).items() if k not in TIMING})
    return rows


def newest_step(run: Path) -> int:
    checkpoints = list_checkpoints(run / "checkpoints")
    return checkpoint_step(checkpoints[-1]) if checkpoints else 0


def differences(a: Path, b: Path) -> list[str]:
    """Where run b differs from run a: tensors of the final weights (with the largest gap)
    and the first metric row that differs. Empty when they are the same."""
    from safetensors.torch import load_file

    found = []
    for name in ("generator.safetensors", "discriminator.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        if wa.keys() != wb.keys():
            found.append(f"{name}: other tensors")
            continue
        for k in wa:
            if not (wa[k] == wb[k]).all():
                gap = (wa[k].double() - wb[k].double()).abs().max().item()
                found.append(f"{name}:{k} (largest gap {gap:.3g})")
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    for row_a, row_b in zip(rows_a, rows_b, strict=False):
        if row_a != row_b:
            found.append(f"metric row at step {row_a.get('step')}: {row_a} vs {row_b}")
            break
    if len(rows_a) != len(rows_b):
        found.append(f"{len(rows_a)} metric rows vs {len(rows_b)}")
    return found


def kill_moments(rng: random.Random) -> Iterator[tuple[float, signal.Signals]]:
    """(seconds to wait once the run trains, signal) for one kill after another."""
    while True:
        delay = rng.uniform(0.0, 1.5)
        yield delay, rng.choice(SIGNALS)


def chaos(preset: str, kills: int, steps: int, work: Path, moments: Iterator[tuple[float, signal.Signals]],
          n: int = 100) -> tuple[int, int, list[str]]:
    """Kill a run of `preset` up to `kills` times, at `moments`; returns (kills, kills that
    left a usable run, where the finished run differs from the uninterrupted one)."""
    settings = ["--preset", preset, "--steps", str(steps), "--no-progress", *SETTINGS[preset]]
    ref, run = work / f"{preset}-reference", work / f"{preset}-killed"
    subprocess.run(mnistgan("train", *settings, "--out", ref), check=True, capture_output=True)
    done = usable = 0
    start = command = mnistgan("train", *settings, "--out", run)
    for _ in range(kills):
        if newest_step(run) >= steps:
            break  # finished before this kill: nothing left to interrupt
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        rows = len(metric_rows(run))
        deadline = time.monotonic() + 120
        while len(metric_rows(run)) <= rows and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until it trains (a new metric row)
        delay, sig = next(moments)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=600)
        # A handled signal exits 128 + its number; one that lands as the run ends (its handler
        # gone) ends the process by the signal itself.
        clean_exit = "Traceback" not in err and proc.returncode in (0, -sig, 128 + sig)
        (sampled, sample_says), (evaluated, evaluate_says) = run_ok(
            ["sample", run, "--n", "16", "--out", work / "grid.png"], ["evaluate", run, "--n", str(n)])
        newest = newest_step(run)
        if newest == 0:
            # Killed before its first checkpoint: nothing to use yet. Sample and evaluate must
            # refuse in one line that says so; the run starts again from nothing.
            sampled = not sampled and "first checkpoint" in sample_says
            evaluated = not evaluated and "first checkpoint" in evaluate_says
            shutil.rmtree(run)
            command = start
        else:
            command = mnistgan("train", "--resume", run, "--no-progress")
        ok = clean_exit and sampled and evaluated
        done, usable = done + 1, usable + ok
        said = err.strip()[-200:] or sample_says or evaluate_says
        note = "" if ok else f" | {said}"
        print(f"| {preset} | {signal.Signals(sig).name} | {newest} | {proc.returncode} | "
              f"{'ok' if sampled else 'FAILED'} | {'ok' if evaluated else 'FAILED'} |{note}", flush=True)
    if newest_step(run) < steps:
        subprocess.run(command, capture_output=True, check=True)
    return done, usable, differences(ref, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="kills in all, shared by the presets")
    parser.add_argument("--presets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--short", action="store_true", help="short runs (the test suite's setting)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments and signals")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--n", type=int, default=100,
                        help="images evaluate scores after each kill (default 100; at least 10)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="presets at once (default 1); each keeps the kill moments and signals "
                             "it gets one at a time, and its runs' thread counts")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="mnistgan-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print("| preset | signal | newest checkpoint after the kill | exit code | sample | "
          f"evaluate --n {args.n} |")
    print("|---|---|---|---|---|---|")
    kills = {preset: args.kills // len(args.presets) + (i < args.kills % len(args.presets))
             for i, preset in enumerate(args.presets)}
    moments = kill_moments(rng)
    # One at a time, the presets draw from one stream as their kills come; at once, each gets
    # its share of the same stream up front (the same draws unless a run finished early).
    plans = ({preset: moments for preset in args.presets} if args.jobs == 1 else
             {preset: iter([next(moments) for _ in range(kills[preset])]) for preset in args.presets})
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(chaos, preset, kills[preset], STEPS[preset][args.short], work / preset,
                               plans[preset], args.n) for preset in args.presets]
        results = [future.result() for future in futures]
    usable, attempts, equal, found = 0, 0, [], []
    for preset, (tried, got, differ) in zip(args.presets, results, strict=True):
        usable, attempts = usable + got, attempts + tried
        equal.append(f"{preset}: {'DIFFERENT' if differ else 'equal'}")
        found += [f"{preset}: {where}" for where in differ]
    print(f"\nusable after the kill: {usable}/{attempts}; resumed to the end vs never stopped: "
          f"{', '.join(equal)}")
    for where in found[:20]:
        print(f"  differs: {where}")
    if usable < attempts or found:
        sys.exit(1)


if __name__ == "__main__":
    main()
