"""The benchmark scripts that produce BENCHMARKS.md's quality tables, on tiny settings: they
run end to end and print (and draw) what their docstrings promise."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnistgan.models.common import UpsampleConv2d

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name, *args, timeout=600):
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


def test_ablation_reports_every_seed_and_the_spread_over_seeds(tmp_path, mnist_dir):
    # two trials at once on a thread each (faster on two cores than one trial on both)
    out = run_script("ablation.py", "--epochs", "0.01", "--seeds", "2", "--n", "100", "--jobs", "2",
                     "--out", str(tmp_path), "--variants", "best, as shipped", "one D step per G step")
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    per_seed = [r for r in rows if r.split("|")[2].strip() in ("0", "1")]
    assert len(per_seed) == 4  # two variants x two seeds
    summary = [r for r in rows if "±" in r]
    assert len(summary) == 2 and "train.d_steps=1" in summary[1]
    assert rows[-1].startswith("| real floor")
    # a study of mnistgan sweep: a run folder per trial, its results and report
    assert len(list((tmp_path / "runs").iterdir())) == 4
    assert (tmp_path / "results.csv").read_text().count("\n") == 5
    assert (tmp_path / "report.html").exists()


def test_precision_compares_the_mean_fid_of_each_precision_over_seeds(tmp_path, mnist_dir):
    # the step op by op: compiling it cost each 20-step run more than its steps (the compiled
    # step in either precision has tests of its own in test_train)
    out = run_script("precision.py", "--preset", "seed-002", "--steps", "20", "--seeds", "0", "1",
                     "--precisions", "fp32", "bf16", "--n", "100", "--jobs", "2", "--set",
                     "train.compile_step=false", "--out", str(tmp_path))
    assert sum(line.startswith("| FID, ") for line in out.splitlines()) == 2
    ratio = next(line for line in out.splitlines() if line.startswith("mean FID bf16 / fp32"))
    assert "bootstrap interval" in ratio and ratio.endswith("of 2 seeds")
    assert len(list((tmp_path / "runs").iterdir())) == 4


def test_quality_draws_scores_against_minutes_from_each_runs_checkpoints(tmp_path, mnist_dir):
    png = tmp_path / "quality.png"
    # The step op by op: compiled, the short probe run timed the compiler rather than the steps,
    # and the run then kept a checkpoint every 2 steps.
    out = run_script("quality.py", "--presets", "seed-002", "--minutes", "0.1", "--points", "3",
                     "--n", "100", "--set", "train.threads=1", "train.compile_step=false", "--png",
                     str(png), "--out", str(tmp_path / "runs"))
    curves = json.loads((tmp_path / "runs" / "quality.json").read_text())
    points = curves[0]["points"]
    assert curves[0]["preset"] == "seed-002" and 2 <= len(points) <= 3
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    assert all(0 < p["minutes"] <= 0.1 + 0.05 and p["fid"] > p["fid_floor"] > 0 for p in points)
    assert sum(line.startswith("| seed-002 |") for line in out.splitlines()) == len(points)
    with Image.open(png) as image:
        assert image.size[0] > 300

    # Run again on the same --out (as after a crash): the finished run is not retrained, and
    # its points come from its score cache.
    log = (tmp_path / "runs" / "seed-002" / "log.txt").read_text()
    again = run_script("quality.py", "--presets", "seed-002", "--minutes", "0.1", "--points", "3",
                       "--n", "100", "--png", str(png), "--out", str(tmp_path / "runs"))
    assert "reusing the finished run" in again
    assert sum(line.endswith("(scored before)") for line in again.splitlines()) == len(points)
    assert (tmp_path / "runs" / "seed-002" / "log.txt").read_text() == log
    rescored = json.loads((tmp_path / "runs" / "quality.json").read_text())[0]["points"]
    assert [(p["step"], p["minutes"]) for p in rescored] == [(p["step"], p["minutes"]) for p in points]
    assert [p["fid"] for p in rescored] == pytest.approx([p["fid"] for p in points], rel=1e-6)


def test_dense_kernel_times_both_kernels_on_every_thread_count(mnist_dir):
    out = run_script("dense_kernel.py", "--presets", "seed-002", "--threads", "1", "2", "--seconds",
                     "0.05", "--rounds", "2")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| seed-002")]
    assert sorted((r[1].strip(), r[2].strip()) for r in rows) == [
        ("blas", "1"), ("blas", "2"), ("onednn", "1"), ("onednn", "2")]
    assert all(float(r[3]) > 0 and len(r[4].split(",")) == 2 for r in rows)
    assert [float(r[5]) for r in rows if r[1].strip() == "blas"] == [1.0, 1.0]
    products = [line for line in out.splitlines() if " @ " in line and line.startswith("| ")]
    assert len(products) == 2 * 5 and all(float(p.split("|")[-2]) > 0 for p in products)


def test_profile_step_tables_the_products_of_a_step_by_shape(mnist_dir):
    out = run_script("profile_step.py", "seed-002", "--threads", "1", "--steps", "3",
                     "--set", "train.compile_step=false")  # op by op: the products are separate ops
    products = {r[1].strip(): r[2:7] for r in (line.split("|") for line in out.splitlines())
                if r[0] == "" and len(r) == 8 and " @ " in r[1]}
    # text 002's forward products: D's hidden layer on real, fake and in G's step; G's two once
    assert products["addmm 64x784 @ 784x128"][0].strip() == "3"
    assert products["addmm 64x100 @ 100x128"][0].strip() == "1"
    assert products["addmm 64x128 @ 128x784"][0].strip() == "1"
    assert all(float(ms) > 0 and float(hot) > 0 and float(cold) > 0
               for _, ms, _, hot, cold in products.values())
    assert "ms a step unprofiled" in out and "| aten::mm |" in out
    assert "ms with their operands in memory" in out and "compiled graph" not in out


def test_profile_step_splits_a_compiled_step_between_its_graph_and_the_host(mnist_dir):
    out = run_script("profile_step.py", "seed-002", "--threads", "1", "--steps", "3")
    line = next(line for line in out.splitlines() if line.startswith("unprofiled, the compiled graph"))
    graph_ms, host_ms = (float(word) for word in line.replace(";", " ").split() if word[0].isdigit())
    assert graph_ms > 0 and host_ms > 0


def test_layer_rate_replays_every_layer_call_of_a_step(mnist_dir):
    out = run_script("layer_rate.py", "seed-002", "--steps", "1", "--reps", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "x" in line
            and not line.startswith("| layer")]
    # text 002: G's two dense layers once; D's hidden layer and head on real, fake and in G's
    # step, each call with the passes it ran: images need no input gradient, the frozen D in
    # G's step no weight gradient, G's noise none either
    assert sorted((r[0].strip(), r[2].strip(), int(r[3])) for r in rows) == [
        ("D.out", "fwd+in-grad", 1), ("D.out", "fwd+in-grad+w-grad", 2),
        ("D.trunk.1", "fwd+in-grad", 1), ("D.trunk.1", "fwd+w-grad", 2),
        ("G.net.0", "fwd+w-grad", 1), ("G.net.2", "fwd+in-grad+w-grad", 1)]
    assert all(float(r[4]) >= 0 and float(r[5]) > 0 and float(r[9]) > 0 for r in rows)
    assert "the layers alone, each call's passes:" in out
    assert "the step with every layer as fast as its matrix products:" in out
    assert "channels-last" not in out  # dense layers: 2-D inputs


def test_layer_rate_replays_convolutions_in_the_layout_the_step_used(mnist_dir):
    # best trains channels-last (train.channels_last): its convolutions' replays must too, since
    # oneDNN runs other kernels for that layout
    out = run_script("layer_rate.py", "best", "--steps", "1", "--reps", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")
            and not line.startswith(("| layer", "|---"))]
    layout = {(r[0].strip(), r[1].split()[0]): r[1].strip().endswith("channels-last") for r in rows}
    # D's second convolution takes the first one's channels-last output (real, fake, G's step)
    assert [v for (layer, _), v in layout.items() if layer == "D.trunk.2"] == [True, True]
    # one-channel images and dense inputs are both layouts at once: not marked
    assert not layout["D.trunk.0", "64x1x28x28"] and not layout["G.dense", "64x74"]


def test_layer_rate_replays_each_network_in_the_precision_the_step_used(mnist_dir):
    # bf16-d: D's layers under bfloat16 autocast, against a bfloat16 matmul; G's in float32
    out = run_script("layer_rate.py", "seed-002", "--steps", "1", "--reps", "1",
                     "--set", "train.precision=bf16-d")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ")
            and not line.startswith(("| layer", "|---"))]
    marked = {r[0].strip(): r[1].strip().endswith(" bf16") for r in rows}
    assert marked == {"D.out": True, "D.trunk.1": True, "G.net.0": False, "G.net.2": False}
    assert "precision bf16-d" in out and ", in bfloat16 at " in out


def test_vs_keras_times_the_command_line_and_the_step_inside_it(mnist_dir, monkeypatch):
    # TensorFlow is not needed for our side: the command line is timed on its own here.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import vs_keras

    result = vs_keras.cli_rate("seed-002", 2.0, skip=5)
    (rate,) = result["rates"]
    assert rate > 0  # a rate, not a speed requirement: a loaded host may run it slowly
    # the step's share of the program's wall time: a fraction, and most of it
    assert 0.5 < result["step_share"] <= 1.0


def test_vs_keras_runs_bfloat16_only_where_asked_or_where_the_cpu_has_it(monkeypatch, train_module):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import vs_keras

    for has_bf16 in (True, False):
        monkeypatch.setattr(train_module, "cpu_has_bf16", lambda has_bf16=has_bf16: has_bf16)
        assert vs_keras.wants_bf16("auto") == has_bf16
    assert vs_keras.wants_bf16("on") and not vs_keras.wants_bf16("off")
    assert vs_keras.timed_sides("seed-000", bf16=False) == [
        "keras:predict", "keras:predict_on_batch", "ours:fp32", "cli"]
    assert vs_keras.timed_sides("seed-000", bf16=True)[-2:] == ["ours:bf16", "ours:bf16-d"]
    # text 002's author's loop is predict_on_batch: one Keras side, and bf16 never passed its rule
    assert vs_keras.timed_sides("seed-002", bf16=True) == ["keras:predict_on_batch", "ours:fp32", "cli"]


def test_compile_step_times_both_settings_and_their_ratio(mnist_dir):
    out = run_script("compile_step.py", "--presets", "seed-002", "--seconds", "0.2", "--rounds", "2")
    row = [line for line in out.splitlines() if line.startswith("| seed-002")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].split("|")[1:-1]]
    first, eager, compiled = (float(c) for c in cells[1:4])
    ratio = float(cells[4].strip("*"))
    assert first > 0 and eager > 0 and compiled > 0
    # The cells are rounded (rates to 0.1, the ratio to 0.01): allow exactly that much.
    rounding = 0.005 + ratio * (0.05 / eager + 0.05 / compiled)
    assert ratio == pytest.approx(compiled / eager, abs=rounding)


def test_command_line_ab_alternates_the_arms_and_reports_each_runs_time(mnist_dir):
    # the step op by op in both arms: compiling it cost each of the four runs more than its steps
    arms = ["train.reuse_memory=false train.compile_step=false",
            "train.reuse_memory=true train.threads=1 train.compile_step=false"]
    out = run_script("command_line_ab.py", "--preset", "seed-002", "--steps", "30", "--rounds", "2",
                     "--arms", *arms)
    rows = [line for line in out.splitlines() if line.startswith("| train.")]
    assert [r.split("|")[1].strip() for r in rows] == arms
    for row in rows:
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert float(cells[0]) > 0 and int(cells[4].replace(",", "")) > 0
        assert len(cells[5].split(", ")) == 2  # one training time per round


def test_command_line_ab_names_a_run_that_did_not_finish(tmp_path, mnist_dir):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "command_line_ab.py"), "--preset", "seed-002",
                           "--steps", "10", "--rounds", "1", "--arms", "train.no_such_knob=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "no_such_knob" in done.stderr.strip().splitlines()[-1], done.stderr


@pytest.mark.parametrize("layer, preset, overrides, count", [
    ("thin", "seed-000", [], "2"),  # D's first and G's last layer
    ("product", "seed-004", ["--set", "train.precision=bf16-d", "--set", "train.pretrain_images=0",
                             "--set", "train.batch_size=4"], "1"),  # D's 256 -> 512
])
def test_conv_kernels_times_both_kernels_in_alternating_windows(mnist_dir, layer, preset, overrides, count):
    out = run_script("conv_kernels.py", "--layer", layer, "--presets", preset, *overrides, "--threads", "1",
                     "--seconds", "0.2", "--rounds", "2")
    row = [line for line in out.splitlines() if line.startswith(f"| {preset}")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].split("|")[1:-1]]
    assert cells[1:3] == ["1", count]
    plain, own, ratio = float(cells[3]), float(cells[4]), float(cells[5].strip("*"))
    windows = [[float(v) for v in side.split(",")] for side in cells[6].split(";")]
    assert [len(w) for w in windows] == [2, 2] and plain > 0 and own > 0
    assert ratio == pytest.approx(own / plain, abs=0.005 + ratio * (0.005 / plain + 0.005 / own))


def test_digit_shares_weights_each_digit_to_its_share(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import digit_shares
    import torch

    from mnistgan.metrics.scores import gaussian

    x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    # every digit as common as in the set: the plain mean and (unbiased) covariance
    equal = torch.tensor([1 / 3, 1 / 3, 1 / 3] + [0.0] * 7, dtype=torch.float64)
    for got, want in zip(digit_shares.weighted_gaussian(x, labels, equal), gaussian(x), strict=True):
        assert torch.allclose(got, want)
    # digit 0 at half the weight: the mean of a set holding its images once and the others' twice
    half = torch.tensor([0.2, 0.4, 0.4] + [0.0] * 7, dtype=torch.float64)
    mean, _ = digit_shares.weighted_gaussian(x, labels, half)
    assert torch.allclose(mean, torch.cat([x[:10], x[10:], x[10:]]).mean(0))


def test_inception_diagnosis_matches_the_pixel_histogram_and_keeps_the_order(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import inception_diagnosis
    import numpy as np

    rng = np.random.default_rng(0)
    # a source with a tall peak at 255 (as a saturating tanh's) and a target peaking at 253
    source = np.where(rng.random((400, 28, 28)) < 0.05, 255, rng.integers(0, 200, (400, 28, 28)))
    target = np.where(rng.random((400, 28, 28)) < 0.05, 253, rng.integers(0, 256, (400, 28, 28)))
    matched = inception_diagnosis.match_histogram(source.astype(np.uint8), source.astype(np.uint8),
                                                  target.astype(np.uint8), np.random.default_rng(1))
    assert matched.dtype == np.uint8 and matched.shape == source.shape
    got, want = np.bincount(matched.ravel(), minlength=256), np.bincount(target.ravel(), minlength=256)
    assert np.abs(got / got.sum() - want / want.sum()).max() < 0.002
    # the map is monotone: a darker source pixel never ends brighter than a lighter one
    for low, high in ((0, 1), (100, 101), (199, 255)):
        assert matched[source == low].max() <= matched[source == high].min()


def unfused(layer: UpsampleConv2d) -> UpsampleConv2d:
    layer.fused = False
    return layer


@pytest.mark.parametrize("make, shape", [
    (lambda: torch.nn.Linear(100, 784), (32, 100)),
    (lambda: torch.nn.Conv2d(256, 512, 5, stride=2, padding=2), (4, 256, 14, 14)),
    (lambda: torch.nn.Conv2d(1, 32, 3, stride=2, padding=1), (4, 1, 28, 28)),
    (lambda: torch.nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), (4, 64, 7, 7)),
    (lambda: UpsampleConv2d(200, 100, 3), (4, 200, 14, 14)),
    (lambda: UpsampleConv2d(64, 32, 5), (4, 64, 7, 7)),
    (lambda: unfused(UpsampleConv2d(64, 32, 3)), (4, 64, 7, 7)),  # upsample, then the conv
])
def test_layer_rate_writes_each_pass_as_products_of_that_pass_s_flops(monkeypatch, make, shape):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from layer_rate import Passes, gemm_forms, replay
    from torch.utils.flop_counter import FlopCounterMode

    layer = make()

    def flops(passes: Passes) -> int:
        """The FLOPs of one call of the layer with these passes, less the fused layer's
        derivation of its transposed kernel (a small bmm, not a pass)."""
        x = torch.randn(shape, requires_grad=passes.input_grad)
        layer.requires_grad_(passes.weight_grad)
        with FlopCounterMode(display=False) as counter:
            y = layer(x)
            if y.requires_grad:
                y.backward(torch.ones_like(y))
        layer.requires_grad_(True)
        by_op = counter.get_flop_counts()["Global"]
        # replay runs exactly these passes
        assert replay(layer, shape, False, False, passes, reps=1)[0] == counter.get_total_flops()
        return sum(n for op, n in by_op.items() if str(op) != "aten.bmm")

    forward = flops(Passes(input_grad=False, weight_grad=False))
    measured = [forward, flops(Passes(input_grad=True, weight_grad=False)) - forward,
                flops(Passes(input_grad=False, weight_grad=True)) - forward]
    for forms, pass_flops in zip(gemm_forms(layer, shape), measured, strict=True):
        assert pass_flops > 0
        assert [sum(2 * count * rows * inner * cols for count, rows, inner, cols in form) for form in forms] \
            == [pass_flops] * len(forms)
    # replay leaves the layer as it found it
    assert all(p.requires_grad for p in layer.parameters())


def test_layer_rate_s_products_at_their_shapes_compute_each_pass(monkeypatch):
    """The FLOP test above cannot see a form's rows and inner dimension swapped: here each
    pass's first form, built as matrices of exactly its (rows, inner, cols), computes the pass
    (forward, input gradient, weight gradient) of a Linear, a strided Conv2d and a transposed conv;
    the transposed conv's per-phase forms are checked by their shapes."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from layer_rate import gemm_forms
    from torch.nn import functional as F

    def product(forms, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ((count, rows, inner, cols),) = forms[0]
        assert count == 1 and a.shape == (rows, inner) and b.shape == (inner, cols)
        return a @ b

    def run(layer: torch.nn.Module, shape: tuple[int, ...]):
        x = torch.randn(shape, requires_grad=True)
        y = layer(x)
        dy = torch.randn_like(y)
        y.backward(dy)
        return x, y, dy, gemm_forms(layer, shape)

    linear = torch.nn.Linear(10, 6)
    x, y, dy, (fwd, ig, wg) = run(linear, (5, 10))
    w = linear.weight.detach()
    torch.testing.assert_close(product(fwd, x.detach(), w.T) + linear.bias, y)
    torch.testing.assert_close(product(ig, dy, w), x.grad)
    torch.testing.assert_close(product(wg, dy.T, x.detach()), linear.weight.grad)

    conv = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)
    x, y, dy, (fwd, ig, wg) = run(conv, (2, 8, 14, 14))
    patches = F.unfold(x.detach(), 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 8 * 9)
    w, d_out = conv.weight.detach().reshape(6, -1), dy.permute(0, 2, 3, 1).reshape(-1, 6)
    torch.testing.assert_close(product(fwd, patches, w.T).reshape(2, 7, 7, 6).permute(0, 3, 1, 2)
                               + conv.bias.view(1, 6, 1, 1), y)
    d_patches = product(ig, d_out, w).reshape(2, 49, 8 * 9).transpose(1, 2)
    torch.testing.assert_close(F.fold(d_patches, (14, 14), 3, padding=1, stride=2), x.grad)
    torch.testing.assert_close(product(wg, d_out.T, patches).reshape(6, 8, 3, 3), conv.weight.grad)

    transposed = torch.nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1)
    x, y, dy, (fwd, ig, wg) = run(transposed, (2, 8, 7, 7))
    pixels, w = x.detach().permute(0, 2, 3, 1).reshape(-1, 8), transposed.weight.detach().reshape(8, -1)
    columns = product(fwd, pixels, w).reshape(2, 49, 6 * 16).transpose(1, 2)  # col2im
    torch.testing.assert_close(F.fold(columns, (14, 14), 4, padding=1, stride=2)
                               + transposed.bias.view(1, 6, 1, 1), y)
    d_columns = F.unfold(dy, 4, padding=1, stride=2).transpose(1, 2).reshape(-1, 6 * 16)
    torch.testing.assert_close(product(ig, d_columns, w.T).reshape(2, 7, 7, 8).permute(0, 3, 1, 2), x.grad)
    torch.testing.assert_close(product(wg, pixels.T, d_columns).reshape(8, 6, 4, 4), transposed.weight.grad)
    # Its per-phase forms (k divisible by the stride): per output phase, 98 pixels reading 2 x 2
    # taps of 8 channels, into 6.
    assert [forms[1] for forms in (fwd, ig, wg)] == [[(4, 98, 32, 6)], [(4, 98, 6, 32)], [(4, 6, 98, 32)]]
