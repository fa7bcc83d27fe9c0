"""Training speed on a machine whose other cores are busy: how many threads to use.

PyTorch's CPU default is one OpenMP thread per core. When another program keeps a core busy,
a thread placed there runs only part of the time, and the threads that finished their share
of a convolution wait for it at every parallel region. This script trains a preset with each
thread count, with the machine idle and with `--busy` cores kept busy by spinning processes,
and under each OpenMP wait policy, and prints the median images/s of the logged rows.

    python benchmarks/busy_threads.py --presets seed-000 seed-004 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SPIN = "while True: pass"


def images_per_s(preset: str, threads: int, steps: int, env: dict[str, str], out: Path) -> float:
    subprocess.run([sys.executable, "-m", "mnistgan", "train", "--preset", preset, "--steps", str(steps),
                    "--threads", str(threads), "--log-every", "2", "--sample-every", "100000",
                    "--set", "train.checkpoint_every=100000", "--set", "train.pretrain_images=0",
                    "--no-progress", "--out", str(out)], check=True, capture_output=True, env=env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows[len(rows) // 4:])  # warm-up left out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed-000", "seed-004"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    parser.add_argument("--busy", type=int, default=1, help="cores to keep busy (default 1)")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mnistgan-busy-"))
    columns = " | ".join(f"{t} thread(s), img/s" for t in args.threads)
    print(f"| preset | other cores | OMP_WAIT_POLICY | {columns} |")
    print("|---|---|---|" + "---|" * len(args.threads))
    for preset in args.presets:
        for busy in (0, args.busy):
            spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
            try:
                for policy in ("", "PASSIVE"):
                    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
                    if policy:
                        env["OMP_WAIT_POLICY"] = policy
                    rates = [images_per_s(preset, t, args.steps, env, work / f"{preset}-{busy}-{policy}-{t}")
                             for t in args.threads]
                    print(f"| {preset} | {f'{busy} busy' if busy else 'idle'} | {policy or '(default)'} | "
                          + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()


if __name__ == "__main__":
    main()
