"""The tutorials' own Keras training loops beside ours: same architecture, batch and data, one run.

For each seed preset the Keras side builds the tutorial's models layer for layer from the
preset's values (a parameter count check against our networks guards that they match) and
runs the iteration as the texts write it: the fakes from the generator,
`discriminator.train_on_batch` on real and fake (two calls, or one on the mixed batch for
text 004), then `gan.train_on_batch(noise, ones)` on the stacked model with D frozen.

The fakes are made two ways. As written (AS_WRITTEN names the line each rests on), and with
`predict_on_batch`, the same model call without `predict()`'s per-call data pipeline (Keras 3:
tens of milliseconds a call, NOTES.md), which is Keras used well. Ratios are quoted against the
faster of the two. Text 002's author's notebook already calls `predict_on_batch`, so it has
one Keras loop.

Our side, twice: the bare step (`GAN.train_step()` with the preset as shipped, its own thread
count; where bfloat16 passed the five-seed quality rule, BF16_PASSED, also `--precision bf16`
in both networks and `bf16-d` in D only, on CPUs with bfloat16 arithmetic: `--bf16 auto`
skips these sides where oneDNN reports none, since PyTorch then emulates it at a tenth of
float32's speed and the windows take minutes for a figure no user would run),
and what users run: `mnistgan train --preset P` from the command line, with the preset's
logging, sample grids and checkpoints, its rate over the steps after the first 20 (process
start-up, text 004's D pre-training and the first 20 iterations left out). A clock on
`GAN.train_step` inside that process gives "end to end / bare": the share of the command's wall
time spent in the step, on the same steps, so the VM's drift between windows cannot bias it.

Method: each measurement runs in its own subprocess, so TensorFlow and PyTorch never share a
process, and the sides take turns (Keras, ours, Keras, ours, ...) with the machine to
themselves; warm-up iterations (Keras's tracing included) are excluded; each of --repeats
windows lasts --seconds; the table gives medians and the ratio of medians. Keras runs with its
defaults (all cores). Needs the optional extra: `pip install -e '.[bench-keras]'`.

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/vs_keras.py --repeats 5 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

# Presets whose bfloat16 runs passed the rule (mean FID over five seeds within 10 % of float32:
# BENCHMARKS.md, "bfloat16 and quality" and "bfloat16 for seed-001 under the five-seed rule").
BF16_PASSED = ("seed-000", "seed-004", "seed-001")

PRESETS = ["seed-000", "seed-001", "seed-002", "seed-004"]
# How each text makes its fakes, and where it says so.
AS_WRITTEN = {
    "seed-000": ("predict", "text 000: half_batch_mimics = self._generator.predict(half_batch_noise)"),
    "seed-001": ("predict", "text 001: gen_imgs = generator.predict(noise)"),
    "seed-002": ("predict_on_batch", "text 002 is silent; its author's notebook: "
                 "generator.predict_on_batch(noise)"),
    "seed-004": ("predict", "text 004: 'Generate images using G and random noise (forward pass "
                 "only)'; its author's code: generator.predict(noise_gen)"),
}


def timed(step: Any, seconds: float, warmup: int) -> float:
    """Iterations per second of `step()` over one window, after `warmup` calls."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


# -- the Keras side -------------------------------------------------------------------------


def keras_models(config: Any) -> tuple[Any, Any, Any]:
    """G, D (compiled) and the stacked GAN (compiled, D frozen), as the tutorials build them."""
    import keras
    from keras import layers

    def act(name: str, slope: float) -> Any:
        return layers.LeakyReLU(negative_slope=slope) if name == "leaky_relu" else layers.Activation(name)

    g, d, t = config.generator, config.discriminator, config.train
    G = keras.Sequential([keras.Input((config.noise.dim,))])
    if g.arch == "mlp":
        for h in g.hidden:
            G.add(layers.Dense(h))
            if g.batch_norm and not g.bn_after_activation:
                G.add(layers.BatchNormalization(momentum=g.bn_momentum, epsilon=g.bn_eps))
            G.add(act(g.activation, g.slope))
            if g.batch_norm and g.bn_after_activation:
                G.add(layers.BatchNormalization(momentum=g.bn_momentum, epsilon=g.bn_eps))
        G.add(layers.Dense(784, activation=g.output))
        G.add(layers.Reshape((28, 28, 1)))
    else:
        G.add(layers.Dense(g.start_channels * g.start_size**2))
        if g.batch_norm:
            G.add(layers.BatchNormalization(momentum=g.bn_momentum, epsilon=g.bn_eps))
        G.add(act(g.activation, g.slope))
        G.add(layers.Reshape((g.start_size, g.start_size, g.start_channels)))
        if g.dropout:
            G.add(layers.Dropout(g.dropout))
        for ch, k, up in zip(g.channels, g.kernels, g.upsample, strict=True):
            if up:
                G.add(layers.UpSampling2D())
            G.add(layers.Conv2D(ch, k, padding="same"))
            if g.batch_norm:
                G.add(layers.BatchNormalization(momentum=g.bn_momentum, epsilon=g.bn_eps))
            G.add(act(g.activation, g.slope))
            if g.dropout:
                G.add(layers.Dropout(g.dropout))
        G.add(layers.Conv2D(1, g.out_kernel, padding="same", activation=g.output))

    D = keras.Sequential([keras.Input((28, 28, 1))])
    if d.arch == "conv":
        for ch in d.channels:
            D.add(layers.Conv2D(ch, d.kernel, strides=d.stride, padding="same"))
            if d.batch_norm:
                D.add(layers.BatchNormalization(momentum=d.bn_momentum, epsilon=d.bn_eps))
            D.add(act(d.activation, d.slope))
            if d.dropout:
                D.add(layers.Dropout(d.dropout))
    D.add(layers.Flatten())
    hidden_act = d.hidden_activation if d.arch == "conv" else d.activation
    for h in d.hidden:
        D.add(layers.Dense(h))
        D.add(act(hidden_act, d.slope))
        if d.dropout:
            D.add(layers.Dropout(d.dropout))
    softmax = d.head == "softmax2"
    D.add(layers.Dense(2 if softmax else 1, activation="softmax" if softmax else "sigmoid"))
    loss = "categorical_crossentropy" if softmax else "binary_crossentropy"
    D.compile(keras.optimizers.Adam(t.d_lr, *t.d_betas, epsilon=t.adam_eps), loss=loss)
    gan = keras.Sequential([G, D])
    gan.compile(keras.optimizers.Adam(t.g_lr, *t.g_betas, epsilon=t.adam_eps), loss=loss)
    return G, D, gan


def keras_rates(preset: str, repeats: int, seconds: float, fakes: str) -> dict:
    import numpy as np

    from mnistgan import load_config
    from mnistgan.data import load_split

    config = load_config(preset)
    t = config.train
    images, labels = load_split("mnist", "train")
    if config.data.digits:
        images = images[np.isin(labels.numpy(), config.data.digits)]
    x = images.numpy().astype("float32")[..., None]
    x = (x - 127.5) / 127.5 if config.data.value_range == "tanh" else x / 255.0
    G, D, gan = keras_models(config)

    def trainable(model: Any) -> int:  # batch norm's moving statistics are not parameters
        D.trainable = True
        count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        D.trainable = False
        return count
    rng = np.random.default_rng(0)
    n = t.batch_size // 2 if t.d_batch == "half" else t.batch_size
    softmax = config.discriminator.head == "softmax2"

    def targets(real: bool, count: int) -> Any:
        if not softmax:
            return np.full((count, 1), 1.0 - t.label_smoothing if real else 0.0, "float32")
        y = np.zeros((count, 2), "float32")
        y[:, config.discriminator.real_index if real else 1 - config.discriminator.real_index] = 1
        return y

    g_targets = targets(True, t.batch_size)
    if not softmax:
        g_targets = np.ones_like(g_targets)

    def noise(count: int) -> Any:
        if config.noise.dist == "normal":
            return rng.standard_normal((count, config.noise.dim)).astype("float32")
        return rng.uniform(-1, 1, (count, config.noise.dim)).astype("float32")

    def step() -> None:
        real = x[rng.integers(0, len(x), n)]
        z = noise(n)
        fake = G.predict(z, verbose=0) if fakes == "predict" else G.predict_on_batch(z)
        # The texts freeze D once, and the Keras of their time fixed that at compile time.
        # Keras 3 reads `trainable` at each call instead, so it is set around each call: D
        # learns in its own step and stays frozen in the stacked model's (checked below).
        D.trainable = True
        if t.d_update == "separate":
            D.train_on_batch(real, targets(True, n))
            D.train_on_batch(fake, targets(False, n))
        else:
            D.train_on_batch(np.concatenate([real, fake]),
                             np.concatenate([targets(True, n), targets(False, n)]))
        D.trainable = False
        z_g = z if t.g_noise == "reuse" else noise(t.batch_size)
        gan.train_on_batch(z_g, g_targets[: len(z_g)])  # "real" labels, no smoothing

    def weights() -> list[Any]:
        return [w.copy() for w in D.get_weights()]

    rates = [timed(step, seconds, 5 if i == 0 else 1) for i in range(repeats)]
    before = weights()
    D.trainable = True
    D.train_on_batch(x[:n], targets(True, n))
    D.trainable = False
    after_d = weights()
    gan.train_on_batch(noise(t.batch_size), g_targets)
    d_learns = any(not np.array_equal(a, b) for a, b in zip(before, after_d, strict=True))
    frozen = all(np.array_equal(a, b) for a, b in zip(after_d, weights(), strict=True))
    return {"rates": rates, "params_g": trainable(G), "params_d": trainable(D),
            "d_updated": d_learns and frozen}


# -- our side -------------------------------------------------------------------------------


def ours_rates(preset: str, repeats: int, seconds: float, precision: str) -> dict:
    import torch

    from mnistgan import load_config
    from mnistgan.train import bare_gan

    config = load_config(preset, [f"train.precision={precision}"])
    gan = bare_gan(config)
    rates = [timed(gan.train_step, seconds, 5 if i == 0 else 1) for i in range(repeats)]
    count = sum(p.numel() for p in gan.G.parameters()), sum(p.numel() for p in gan.D.parameters())
    return {"rates": rates, "params_g": count[0], "params_d": count[1],
            "threads": torch.get_num_threads()}


# `mnistgan train` exactly as the console script runs it (mnistgan.cli.main), with a clock on the
# step: the time inside each GAN.train_step() and when each ended, written out at exit. So the
# end-to-end rate and the bare step's share of it come from the same steps in the same minutes,
# which the VM's drift between separate windows cannot bias.
CLOCKED_CLI = """
import json, os, sys, time
from mnistgan.cli import main
from mnistgan.train import GAN
bare, spent, ends = GAN.train_step, [], []
def clocked(self):
    start = time.perf_counter()
    out = bare(self)
    end = time.perf_counter()
    spent.append(end - start)
    ends.append(end)
    return out
GAN.train_step = clocked
code = main(sys.argv[1:])
with open(os.environ["MNISTGAN_STEP_CLOCK"], "w") as f:
    json.dump({"spent": spent, "ends": ends}, f)
sys.exit(code)
"""


def cli_rate(preset: str, seconds: float, skip: int = 20) -> dict:
    """`mnistgan train --preset P` from the command line, stopped (Ctrl-C, which finishes the step
    and checkpoints) once its metrics.jsonl spans `seconds` of training. Over the steps after the
    first `skip` (start-up and text 004's D pre-training come before them): iterations per second
    of the whole program, and the share of that wall time spent inside the training step (1.0:
    logging, sample grids and checkpoints cost nothing)."""
    import signal
    import tempfile
    from pathlib import Path

    from mnistgan.run import read_metrics

    def timed_rows(run: Path) -> list[dict]:
        metrics = run / "metrics.jsonl"
        rows = read_metrics(metrics) if metrics.is_file() else []
        return [r for r in rows if "d_loss" in r and r["step"] >= skip]

    with tempfile.TemporaryDirectory(prefix="vs-keras-") as tmp:
        run, clock = Path(tmp) / "run", Path(tmp) / "clock.json"
        train = subprocess.Popen([sys.executable, "-c", CLOCKED_CLI, "train", "--preset", preset,
                                  "--out", str(run), "--no-progress"],
                                 env=os.environ | {"MNISTGAN_STEP_CLOCK": str(clock)},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while train.poll() is None:
            time.sleep(1.0)
            rows = timed_rows(run)
            if len(rows) >= 2 and rows[-1]["wall_s"] - rows[0]["wall_s"] >= seconds:
                train.send_signal(signal.SIGINT)
                break
        stderr = train.communicate()[1]
        if train.returncode not in (0, 128 + signal.SIGINT) or not clock.is_file():
            raise SystemExit(f"vs_keras: mnistgan train --preset {preset} failed:\n{stderr[-3000:]}")
        steps = json.loads(clock.read_text(encoding="utf-8"))
    spent, ends = steps["spent"][skip + 1:], steps["ends"][skip:]
    if len(spent) < 2:
        raise SystemExit(f"vs_keras: `mnistgan train --preset {preset}` ended after "
                         f"{len(steps['ends'])} steps")
    wall = ends[-1] - ends[0]
    return {"rates": [len(spent) / wall], "step_share": sum(spent) / wall}


# -- driver ---------------------------------------------------------------------------------


def run_one(side: str, preset: str, repeats: int, seconds: float, cli_seconds: float) -> dict:
    if side == "cli":
        return cli_rate(preset, cli_seconds)
    command = [sys.executable, __file__, "--one", side, "--presets", preset, "--repeats",
               str(repeats), "--seconds", str(seconds)]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"vs_keras: {side} on {preset} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wants_bf16(choice: str) -> bool:
    """--bf16: "auto" runs the bfloat16 sides where oneDNN has bfloat16 arithmetic on this CPU."""
    from mnistgan.train import cpu_has_bf16

    return choice == "on" or (choice == "auto" and cpu_has_bf16())


def timed_sides(preset: str, bf16: bool) -> list[str]:
    """The measurements of one preset's row, in the order the sides take turns."""
    as_written = f"keras:{AS_WRITTEN[preset][0]}"
    sides = list(dict.fromkeys([as_written, "keras:predict_on_batch", "ours:fp32", "cli"]))
    if bf16 and preset in BF16_PASSED:
        sides += ["ours:bf16", "ours:bf16-d"]
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternations of the sides; each round runs --repeats windows")
    parser.add_argument("--cli-seconds", type=float, default=60.0,
                        help="seconds of training timed in each `mnistgan train` run, from its "
                             "first logged step at or after 20 (start-up and D pre-training "
                             "before it): long enough to pass the presets' sample grids and "
                             "checkpoints")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="the bfloat16 sides: auto (default) where the CPU has bfloat16 "
                             "arithmetic (AVX512-BF16 or AMX), on, or off")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        side, preset = args.one, args.presets[0]
        kind, _, variant = side.partition(":")
        if kind == "keras":
            result = keras_rates(preset, args.repeats, args.seconds, variant)
        else:
            result = ours_rates(preset, args.repeats, args.seconds, variant)
        print(json.dumps(result))
        return
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        print("vs_keras: TensorFlow is not installed: pip install -e '.[bench-keras]'", file=sys.stderr)
        raise SystemExit(2) from None
    print("| preset | batch | Keras as written it/s | Keras with predict_on_batch it/s | "
          "ours fp32 it/s (threads) | ours / faster Keras | `mnistgan train` it/s | "
          "end to end / bare (same steps) | "
          "ours bf16 it/s | ours / faster Keras | ours bf16 in D it/s | ours / faster Keras | "
          "params G / D (both) | Keras: D learns, frozen in stack |")
    print("|---" * 14 + "|", flush=True)
    bf16 = wants_bf16(args.bf16)
    results = {}
    for preset in args.presets:
        as_written = f"keras:{AS_WRITTEN[preset][0]}"
        sides = timed_sides(preset, bf16)
        runs: dict[str, list[dict]] = {s: [] for s in sides}
        for _ in range(args.rounds):
            for side in sides:
                runs[side].append(run_one(side, preset, args.repeats, args.seconds, args.cli_seconds))
        med = {s: statistics.median(r for one in runs[s] for r in one["rates"]) for s in sides}
        keras = max(med[as_written], med["keras:predict_on_batch"])
        k, o = runs["keras:predict_on_batch"][0], runs["ours:fp32"][0]
        if (k["params_g"], k["params_d"]) != (o["params_g"], o["params_d"]):
            raise SystemExit(f"vs_keras: {preset}: Keras has {k['params_g']}/{k['params_d']} "
                             f"parameters, ours {o['params_g']}/{o['params_d']}: not the same models")
        from mnistgan import load_config

        batch = load_config(preset).train.batch_size
        share = statistics.median(one["step_share"] for one in runs["cli"])
        written = (f"{med[as_written]:.2f}" if as_written != "keras:predict_on_batch"
                   else "(predict_on_batch)")
        bf16_cells = " | ".join(f"{med[s]:.2f} | {med[s] / keras:.2f}×" if s in med else "- | -"
                                for s in ("ours:bf16", "ours:bf16-d"))
        print(f"| {preset} | {batch} | {written} | {med['keras:predict_on_batch']:.2f} | "
              f"{med['ours:fp32']:.2f} ({o['threads']}) | {med['ours:fp32'] / keras:.2f}× | "
              f"{med['cli']:.2f} | {share:.3f} | {bf16_cells} | "
              f"{o['params_g']:,} / {o['params_d']:,} | {'yes' if k['d_updated'] else 'no'} |", flush=True)
        results[preset] = {"median_it_s": med, "as_written": AS_WRITTEN[preset], "runs": runs}
    import tensorflow as tf
    import torch

    print(f"\nmedians of {args.rounds} × {args.repeats} windows of {args.seconds:g} s per side "
          f"(`mnistgan train`: {args.rounds} runs, {args.cli_seconds:g} s of training timed in each), sides "
          f"alternating; TensorFlow {tf.__version__}, PyTorch {torch.__version__}")
    if not bf16:
        print("bfloat16 sides not run (--bf16 off, or auto on a CPU without bfloat16 arithmetic)")
    for preset in args.presets:
        print(f"{preset}: fakes as written: {AS_WRITTEN[preset][1]}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
