"""Images/s of distributed training for 1, 2, ... processes on this machine, and the scaling
efficiency (images/s with N processes / (N x images/s with one)).

Each measurement is a real `mnistgan train` run through torchrun (gloo on CPU) of --steps
steps at the preset's batch size per process, timed by the trainer itself (the "images/s" of
its last line, which leaves out start-up); the median of --repeats runs is reported. One
process gets all --threads as OMP_NUM_THREADS, N processes threads / N each (at least one; a
preset that sets train.threads, like seed-001, uses its own count), so every row
uses the same cores.

    python benchmarks/scaling.py --presets seed-001 seed-000 --procs 1 2 --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def images_per_second(preset: str, procs: int, steps: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "mnistgan",
                   "train", "--preset", preset, "--steps", str(steps), "--no-progress",
                   "--out", f"{tmp}/run", "--set", "train.sample_every=1000000",
                   "--set", "train.checkpoint_every=1000000"]
        env = os.environ | {"OMP_NUM_THREADS": str(max(1, threads // procs))}
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"([\d.]+) images/s\)", out.stdout)
    if found is None:
        raise RuntimeError(f"no images/s in the output of {' '.join(command)}:\n{out.stdout}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed-001", "seed-000"])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print("| preset | processes | OMP_NUM_THREADS each | images/s (median) | efficiency | runs |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        base = None
        for procs in args.procs:
            runs = [images_per_second(preset, procs, args.steps, args.threads)
                    for _ in range(args.repeats)]
            ips = statistics.median(runs)
            base = base if base is not None else ips / procs
            print(f"| {preset} | {procs} | {max(1, args.threads // procs)} | {ips:.0f} | "
                  f"{100 * ips / (procs * base):.0f}% | {', '.join(f'{r:.0f}' for r in runs)} |",
                  flush=True)
    print(f"\n{args.steps} steps per run, batch per process as in the preset; torch {torch.__version__}")


if __name__ == "__main__":
    main()
