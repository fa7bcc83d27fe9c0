"""Training and sampling throughput of every preset at its own batch size.

Prints one table: per preset, training iterations/s and images/s (median of --repeats timed
windows after a warm-up), sampling images/s, FLOPs per training step (counted by
torch.utils.flop_counter; in brackets, as the tutorials' upsample + conv would compute them),
the machine's float32 matmul rate measured here at the same thread count, the fraction of it
achieved, and the peak resident memory of the process. Each preset runs in a fresh subprocess
so that its peak memory is its own.

    python benchmarks/throughput.py                       # all presets, PyTorch's thread default
    python benchmarks/throughput.py --presets seed-001 --threads 1 --repeats 5
    python benchmarks/throughput.py --presets seed-000 seed-004 --precision fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

PRESETS = ["seed-000", "seed-001", "seed-002", "seed-004", "best"]


def matmul_gflops(threads: int, n: int = 1024, seconds: float = 1.0,
                  dtype: torch.dtype = torch.float32) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def count_flops(gan) -> tuple[int, int]:
    """FLOPs of one training step as we run it, and with each upsample + conv computed as the
    texts write it (the work the tutorials' own code does) rather than as one transposed
    convolution; the second count needs a step of its own only where the two differ."""
    from mnistgan.models.common import UpsampleConv2d

    def one_step() -> int:
        # Counted op by op: a compiled step (train.compile_step) does the same arithmetic, but
        # the counter cannot see inside its graph.
        graph, gan.step_graph = gan.step_graph, None
        with FlopCounterMode(display=False) as counter:
            gan.train_step()
        gan.step_graph = graph
        return counter.get_total_flops()

    ours = one_step()
    layers = [m for m in gan.G.modules() if isinstance(m, UpsampleConv2d)]
    if not layers:
        return ours, ours
    for m in layers:
        m.fused = False
    written = one_step()
    for m in layers:
        m.fused = True
    return ours, written


def measure(preset: str, threads: int, repeats: int, window: float, precision: str) -> dict:
    from mnistgan.config import load_config
    from mnistgan.train import bare_gan

    config = load_config(preset, [f"train.precision={precision}", f"train.threads={threads}"])
    gan = bare_gan(config)
    flops, written = count_flops(gan)
    for _ in range(2):
        gan.train_step()
    rates = []
    for _ in range(repeats):
        steps, t0 = 0, time.perf_counter()
        while steps < 2 or time.perf_counter() - t0 < window:
            gan.train_step()
            steps += 1
        rates.append(steps / (time.perf_counter() - t0))
    its = statistics.median(rates)
    z, y = gan.noise(1000), gan.labels(1000)
    gan.sample(z[:100], None if y is None else y[:100])
    t0 = time.perf_counter()
    gan.sample(z, y)
    sample_ips = len(z) / (time.perf_counter() - t0)
    peak = matmul_gflops(threads, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    return {
        "preset": preset, "threads": threads, "batch": config.train.batch_size, "precision": precision,
        "it_s": its, "img_s": its * config.train.batch_size, "sample_img_s": sample_ips,
        "gflop_step": flops / 1e9, "gflop_written": written / 1e9, "gflops": its * flops / 1e9,
        "matmul_gflops": peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "runs": [round(r, 2) for r in rates],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window", type=float, default=3.0, help="seconds per timed window")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                        help="bf16: bfloat16 autocast, compared with the bf16 matmul rate")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.presets[0], args.threads[0], args.repeats, args.window,
                                 args.precision[0])))
        return
    head = ("| preset | batch | precision | threads | train it/s | train img/s | sample img/s | "
            "GFLOP/step (as written) | GFLOP/s | matmul GFLOP/s | of peak | peak RSS MB |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1), flush=True)
    rows = []
    for preset in args.presets:
        for precision in args.precision:
            for threads in args.threads:
                out = subprocess.run(
                    [sys.executable, __file__, "--one", "--presets", preset, "--threads",
                     str(threads), "--repeats", str(args.repeats), "--window", str(args.window),
                     "--precision", precision],
                    capture_output=True, text=True, check=True, env=os.environ.copy())
                r = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(r)
                print(f"| {r['preset']} | {r['batch']} | {r['precision']} | {r['threads']} | "
                      f"{r['it_s']:.1f} | {r['img_s']:.0f} | {r['sample_img_s']:.0f} | "
                      f"{r['gflop_step']:.3f} ({r['gflop_written']:.3f}) | {r['gflops']:.1f} | "
                      f"{r['matmul_gflops']:.0f} | "
                      f"{100 * r['gflops'] / r['matmul_gflops']:.0f}% | {r['peak_rss_mb']:.0f} |",
                      flush=True)
    print(f"\nmedian of {args.repeats} windows of {args.window:.0f} s each; torch "
          f"{torch.__version__}; timed windows per row: "
          + "; ".join(f"{r['preset']}/{r['precision']}/{r['threads']}t {r['runs']}" for r in rows))


if __name__ == "__main__":
    main()
