"""Where one preset's training step spends its time: torch.profiler over a run of steps.

Prints the step time (for a compiled step also its split, unprofiled, between the graph and
the host's work around it), the share taken by matrix multiplications (each shape's time and
its GFLOP/s against the same multiplication timed alone: in a loop with its operands hot in
cache, and with its operands evicted to memory before each call), and the costliest ops. This
is the "profile before changing" tool behind the table of hypotheses in BENCHMARKS.md.

    python benchmarks/profile_step.py seed-001 --threads 1
"""

from __future__ import annotations

import argparse
import ast
import collections
import time

import torch
from dense_kernel import product_rate  # benchmarks/, the script's own folder
from torch.profiler import ProfilerActivity, profile

from mnistgan.config import load_config
from mnistgan.train import bare_gan

# PyTorch's own products (MKL), and oneDNN's (train.dense_kernel = "onednn": its operands are
# the input and the weight as (out, in), the product input @ weight.T).
GEMM_OPS = ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise")


def alone_ms(a_shape: list[int], b_shape: list[int], onednn: bool, reps: int = 200,
             cold: bool = False) -> float:
    """One multiplication of these shapes timed alone, on the same kernel as in the step: what
    the hardware gives it hot in cache, or with its operands fetched from memory (`cold`)."""
    (rows, inner), (_, cols) = a_shape, b_shape
    rate = product_rate(rows, inner, cols, "onednn" if onednn else "blas", reps, cold=cold)
    return 2 * rows * inner * cols / rate / 1e6


def rate_cell(gflop_s: float) -> str:
    """A rate for the table: whole GFLOP/s, two digits below 10 (D's one-unit head runs at ~1)."""
    return f"{gflop_s:.0f}" if gflop_s >= 10 else f"{gflop_s:.2g}"


def unprofiled_ms(gan: object, steps: int) -> tuple[float, float | None]:
    """ms a step, and of it ms inside the compiled graph (train.compile_step; None without one),
    both clocked over the same steps. The rest of a step is the host's: the random draws,
    learning rates and counters."""
    step_graph = getattr(gan, "step_graph", None)
    graph = None if step_graph is None else step_graph.compiled
    inside = [0.0]

    def clocked(*args: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        row = graph(*args)
        inside[0] += time.perf_counter() - t0
        return row

    if graph is not None:
        step_graph.compiled = clocked
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            gan.train_step()
        total = time.perf_counter() - t0
    finally:
        if graph is not None:
            step_graph.compiled = graph
    return total / steps * 1e3, None if graph is None else inside[0] / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=50, help="profiled steps (default 50)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    config = load_config(args.preset, [*args.overrides, f"train.threads={args.threads}"])
    gan = bare_gan(config)
    for _ in range(max(20, args.steps)):  # warm-up
        gan.train_step()
    step_ms, in_graph = unprofiled_ms(gan, args.steps)

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            gan.train_step()
    per_step = collections.Counter()
    for event in prof.key_averages():
        per_step[event.key] += event.self_cpu_time_total / args.steps / 1e3
    gemms: dict[str, tuple[float, float]] = {}  # operand shapes: (ms, calls) a step
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in GEMM_OPS:
            key = f"{event.key} {event.input_shapes}"
            ms, calls = gemms.get(key, (0.0, 0.0))
            gemms[key] = (ms + event.self_cpu_time_total / args.steps / 1e3,
                                              calls + event.count / args.steps)

    print(f"{args.preset}, {args.threads} thread(s): {step_ms:.2f} ms a step unprofiled "
          f"({1e3 / step_ms:.1f} it/s); profiled self time {sum(per_step.values()):.2f} ms, "
          f"of which matmuls {sum(ms for ms, _ in gemms.values()):.2f} ms")
    if in_graph is not None:
        print(f"unprofiled, the compiled graph {in_graph:.2f} ms a step; the host around it "
              f"{step_ms - in_graph:.2f} ms (draws, learning rates, counters)")
    print("\n| matmul (op, operands) | calls a step | ms a step | GFLOP/s in the step | GFLOP/s alone, hot "
          "| GFLOP/s alone, cold |")
    print("|---|---|---|---|---|---|")
    total_alone = total_cold = 0.0
    for key, (ms, calls) in sorted(gemms.items(), key=lambda item: -item[1][0]):
        op, shapes = key.split(" ", 1)
        onednn = op.startswith("mkldnn")
        matrices = [s for s in ast.literal_eval(shapes) if len(s) == 2]
        a, b = (matrices[0], matrices[1][::-1]) if onednn else matrices[-2:]
        flop = 2 * a[0] * a[1] * b[1] * calls
        alone = alone_ms(a, b, onednn) * calls
        cold = alone_ms(a, b, onednn, reps=50, cold=True) * calls
        total_alone += alone
        total_cold += cold
        print(f"| {op.split('::')[1]} {a[0]}x{a[1]} @ {b[0]}x{b[1]} | {calls:.0f} | {ms:.3f} | "
              + " | ".join(rate_cell(flop / t / 1e6) for t in (ms, alone, cold)) + " |")
    print(f"\nthe same matmuls timed alone: {total_alone:.2f} ms a step hot in cache, "
          f"{total_cold:.2f} ms with their operands in memory")
    print("\n| op | ms a step |\n|---|---|")
    for key, ms in per_step.most_common(12):
        print(f"| {key} | {ms:.3f} |")


if __name__ == "__main__":
    main()
