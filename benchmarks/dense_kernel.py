"""The dense layers on oneDNN or on MKL, on one or two threads: one process per preset, the
settings taking turns window by window so that the VM's drift falls on all of them alike.

First the bare products: a float32 matmul of each shape on MKL (`torch.mm`, PyTorch's own
path) and on oneDNN (what `train.dense_kernel = "onednn"` calls), in GFLOP/s. Then the whole
training step of each preset under every (kernel, threads) setting: medians of --rounds
windows of --seconds each, and each setting's ratio to MKL on the preset's own thread count.

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/dense_kernel.py --presets seed-001 seed-002
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mnistgan.config import load_config
from mnistgan.models.dense import onednn_linear, use_dense_kernel
from mnistgan.train import bare_gan

# (rows, inner, columns) of products the MLP presets make: a forward, and the two of a backward.
SHAPES = [(1024, 1024, 1024), (32, 1024, 784), (16, 784, 512), (64, 784, 128), (128, 64, 784)]
KERNELS = ("blas", "onednn")


def product_rate(rows: int, inner: int, cols: int, kernel: str, reps: int = 100,
                 dtype: torch.dtype = torch.float32, cold: bool = False) -> float:
    """GFLOP/s of one rows x inner @ inner x cols product, hot in cache (bfloat16: "blas" only,
    which PyTorch sends to oneDNN, on AMX where the CPU has it); with `cold`, its operands
    evicted before each call by writing a 64 MB buffer (twice the L3 of the hosts measured),
    the median call timed. A call slower than 0.1 s (bfloat16 emulated on a CPU without it: a
    1024^3 product at ~1 GFLOP/s) gets fewer warm-up calls and `reps`, about 2 s in all."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    bt = b.t().contiguous()  # oneDNN's linear takes the weight as (out, in), as nn.Linear stores it
    run = (lambda: torch.mm(a, b)) if kernel == "blas" else (lambda: onednn_linear(a, bt))
    t0 = time.perf_counter()
    run()
    once = time.perf_counter() - t0
    if once > 0.1:
        reps = max(2, min(reps, int(1.5 / once)))
    else:
        for _ in range(4):
            run()
    flop = 2 * rows * inner * cols
    if cold:
        evict, times = torch.empty(16 << 20), []
        for _ in range(reps):
            evict.add_(1.0)
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return flop / statistics.median(times) / 1e9
    t0 = time.perf_counter()
    for _ in range(reps):
        run()
    return flop * reps / (time.perf_counter() - t0) / 1e9


def step_rates(preset: str, threads: list[int], seconds: float,
               rounds: int) -> dict[tuple[str, int], list[float]]:
    config = load_config(preset, [])
    gan = bare_gan(config)
    settings = [(k, t) for k in KERNELS for t in threads]

    def use(setting: tuple[str, int]) -> None:
        use_dense_kernel(gan.G, setting[0])
        use_dense_kernel(gan.D, setting[0])
        torch.set_num_threads(setting[1])

    for setting in settings:  # warm-up: oneDNN builds its primitives on first use
        use(setting)
        for _ in range(5):
            gan.train_step()
    rates: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    for r in range(rounds):
        for setting in settings if r % 2 == 0 else settings[::-1]:
            use(setting)
            gan.train_step()
            n, t0 = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < seconds:
                gan.train_step()
                n += 1
            rates[setting].append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed-001", "seed-002"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one window")
    parser.add_argument("--rounds", type=int, default=8, help="windows per setting")
    args = parser.parse_args()

    print("| product | threads | MKL GFLOP/s | oneDNN GFLOP/s | oneDNN / MKL |\n|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for shape in SHAPES:
            mkl, dnnl = (product_rate(*shape, kernel) for kernel in KERNELS)
            print(f"| {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]} | {threads} | {mkl:.0f} | {dnnl:.0f} | "
                  f"{dnnl / mkl:.2f} |")

    print("\n| preset | kernel | threads | it/s (median) | windows | vs MKL, same threads |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        rates = step_rates(preset, args.threads, args.seconds, args.rounds)
        for (kernel, threads), values in rates.items():
            ratio = statistics.median(values) / statistics.median(rates["blas", threads])
            print(f"| {preset} | {kernel} | {threads} | {statistics.median(values):.1f} | "
                  f"{', '.join(f'{v:.3g}' for v in values)} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
