"""Soak test: train for a long stretch with checkpointing (and evaluation, where the preset
turns it on) and watch resident memory and step time for growth.

Runs `mnistgan train` in a child process, samples its resident set size from /proc every few
seconds and reads its step times from the run's metrics, then prints one row per time slice
and the growth between the first slice after warm-up and the last.

    python benchmarks/soak.py --minutes 30 --preset seed-001 --set train.checkpoint_every=500
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def rows(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    out = []
    for line in metrics.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written right now
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--preset", default="seed-001")
    parser.add_argument("--slices", type=int, default=10, help="rows in the table")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="soak-")) / "run"
    cmd = [sys.executable, "-m", "mnistgan", "train", "--preset", args.preset,
           "--steps", "100000000", "--out", str(run), "--no-progress"]
    for item in args.overrides:
        cmd += ["--set", item]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    t0 = time.time()
    end = t0 + args.minutes * 60
    while time.time() < end and child.poll() is None:
        mem = rss_mb(child.pid)
        if mem is not None:
            samples.append((time.time() - t0, mem))
        time.sleep(2.0)
    child.terminate()
    _, err = child.communicate(timeout=600)
    if not samples or not (run / "config.json").exists():
        sys.exit(f"training did not run: {err.strip()}")

    logged = rows(run / "metrics.jsonl")
    span = args.minutes * 60 / args.slices
    batch = json.loads((run / "config.json").read_text())["train"]["batch_size"]
    print(f"preset {args.preset}, {args.minutes:g} min, overrides {args.overrides or 'none'}")
    print("| minutes | step | RSS MB (max in slice) | ms/step (median in slice) |")
    print("|---|---|---|---|")
    table = []
    for i in range(args.slices):
        lo, hi = i * span, (i + 1) * span
        mem = [m for t, m in samples if lo <= t < hi]
        steps = [r for r in logged if lo <= r["wall_s"] < hi and r.get("images_per_s")]
        ms = [1000 * batch / r["images_per_s"] for r in steps]
        if mem and ms:
            table.append((hi / 60, steps[-1]["step"], max(mem), statistics.median(ms)))
            print(f"| {hi / 60:.1f} | {steps[-1]['step']} | {max(mem):.0f} | "
                  f"{statistics.median(ms):.2f} |")
    if len(table) >= 3:
        first, last = table[1], table[-1]  # slice 0 is warm-up
        print(f"\nRSS growth from {first[0]:.1f} to {last[0]:.1f} min: {last[2] - first[2]:+.0f} MB; "
              f"step time: {first[3]:.2f} -> {last[3]:.2f} ms ({100 * (last[3] / first[3] - 1):+.1f}%)")
    print(f"checkpoints kept: {sorted(p.name for p in (run / 'checkpoints').glob('step_*'))}")
    last_line = err.strip().splitlines()[-1] if err.strip() else ""
    print(f"run folder: {run} (exit {child.returncode}: {last_line})")


if __name__ == "__main__":
    main()
