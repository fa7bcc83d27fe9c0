"""Class-conditional models and the modern ingredients of the `best` preset: projection and
input conditioning, DiffAugment, R1, EMA, `sample --digit`, `--grid-by-class`, and the
conditional accuracy that `evaluate` reports."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mnistgan import UserError, load_config, load_generator, train
from mnistgan.augment import TRANSFORMS, augment
from mnistgan.cli import main
from mnistgan.data import read_idx
from mnistgan.models import build_discriminator, build_generator
from mnistgan.models.common import ClassBatchNorm
from mnistgan.train import GAN, class_rows

TINY_BEST = ["train.batch_size=8", "train.steps=3", "train.log_every=1", "train.sample_every=2",
             "train.grid_size=20"]


@pytest.mark.parametrize("arch, conditioning", [("conv", "projection"), ("conv", "input"),
                                                ("mlp", "projection"), ("mlp", "input")])
def test_the_label_changes_both_networks_outputs(arch, conditioning):
    preset = "best" if arch == "conv" else "seed-001"
    config = load_config(preset, ["data.conditional=true",
                                  f"discriminator.conditioning={conditioning}"])
    torch.manual_seed(0)
    G, D = build_generator(config).eval(), build_discriminator(config).eval()
    z = torch.randn(4, config.noise.dim)
    threes, sevens = torch.full((4,), 3), torch.full((4,), 7)
    with torch.no_grad():
        assert G(z, threes).shape == (4, 1, 28, 28)
        assert not torch.allclose(G(z, threes), G(z, sevens))
        x = torch.rand(4, 1, 28, 28) * 2 - 1
        assert D(x, threes).shape == (4,)
        assert not torch.allclose(D(x, threes), D(x, sevens))
    with pytest.raises(ValueError, match="class-conditional"):
        G(z)
    with pytest.raises(ValueError, match="class-conditional"):
        D(x)


def test_class_norm_steers_every_batch_norm_of_g_by_the_digit(tmp_path, mnist_dir):
    config = load_config("best", ["generator.class_norm=true"])
    torch.manual_seed(0)
    G = build_generator(config)
    norms = [m for m in G.modules() if isinstance(m, ClassBatchNorm)]
    assert len(norms) == 1 + len(config.generator.channels) and not any(isinstance(m, ClassBatchNorm)
                                       for m in build_generator(load_config("best")).modules())
    # Without the one-hot input the label reaches G only through its norms: give them
    # different scales per digit, and the images of one noise batch differ by digit.
    G.dense.weight.data[:, config.noise.dim:] = 0
    for norm in norms:
        torch.nn.init.normal_(norm.scale.weight, 1.0, 0.5)
    G.eval()
    z = torch.randn(4, config.noise.dim)
    with torch.no_grad():
        assert not torch.allclose(G(z, torch.full((4,), 3)), G(z, torch.full((4,), 7)))
    run = train(load_config("best", [*TINY_BEST, "generator.class_norm=true"]), out=tmp_path / "r",
                progress=False).run_dir
    assert load_generator(run).sample(5, digit=4).shape == (5, 28, 28)


def test_transposed_upsampling_makes_28x28_with_fewer_operations():
    nearest = load_config("best", ["generator.upsample_mode=nearest", "generator.kernels=3,3,3"])
    transpose = load_config("best")
    assert transpose.generator.upsample_mode == "transpose"
    for config in (nearest, transpose):
        out = build_generator(config)(torch.randn(2, 64), torch.tensor([1, 2]))
        assert out.shape == (2, 1, 28, 28) and out.abs().max() <= 1


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_augmentation_keeps_shape_and_gradient_and_changes_images(name):
    torch.manual_seed(0)
    x = (torch.rand(16, 1, 28, 28) * 2 - 1).requires_grad_(True)
    y = augment(x, [name], background=-1.0)
    assert y.shape == x.shape
    assert not torch.equal(y, x)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_and_cutout_fill_with_the_background():
    torch.manual_seed(1)
    blank = torch.ones(64, 1, 28, 28)  # an all-ink image: anything uncovered is background
    for name in ("translation", "cutout"):
        out = augment(blank, [name], background=-1.0)
        assert set(out.unique().tolist()) <= {-1.0, 1.0}
        assert (out == -1).any()
    shifted = augment(blank, ["translation"], background=-1.0)
    assert (shifted == -1).flatten(1).sum(1).max() <= 28 * 28 - 24 * 24  # at most 4 px each way


def test_r1_penalty_is_zero_for_a_constant_critic_and_positive_otherwise(mnist_dir):
    from mnistgan.data import ImageBank

    config = load_config("best", ["train.r1=10", "train.batch_size=8",
                                  "discriminator.spectral_norm=false"])
    bank = ImageBank.load("mnist", "test", digits=[1])
    gan = GAN(config, bank, torch.device("cpu"))
    real, y = gan.real_batch(8)
    assert gan.r1_penalty(real, y).item() > 0
    with torch.no_grad():
        for p in gan.D.parameters():
            p.zero_()
    assert gan.r1_penalty(real, y).item() == pytest.approx(0.0, abs=1e-12)


def test_ema_generator_is_what_the_run_saves(tmp_path, mnist_dir):
    config = load_config("best", [*TINY_BEST, "train.ema=0.5"])
    run = train(config, out=tmp_path / "r", progress=False).run_dir
    saved = load_generator(run).net.state_dict()
    # Rebuild the live G from the final checkpoint: the saved generator is its average.
    from mnistgan.checkpoint import list_checkpoints, read_checkpoint

    state = read_checkpoint(list_checkpoints(run / "checkpoints")[-1])["gan"]
    live = state["G"]
    ema = {k[len("module."):]: v for k, v in state["G_ema"].items() if k.startswith("module.")}
    weight = next(k for k in saved if k.endswith("weight") and saved[k].ndim > 1)
    assert torch.equal(saved[weight], ema[weight])
    assert not torch.equal(saved[weight], live[weight])


def test_class_rows_lay_out_one_digit_per_row():
    rows = class_rows(torch.tensor([3, 5, 8]), 12, 4)
    assert rows.tolist() == [3] * 4 + [5] * 4 + [8] * 4


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("cond") / "run"
    return train(load_config("best", TINY_BEST), out=out, progress=False).run_dir


def test_sample_digit_and_grid_by_class(conditional_run, tmp_path, mnist_dir):
    gen = load_generator(conditional_run)
    assert gen.classes == list(range(10))
    sevens = gen.sample(6, seed=1, digit=7)
    twos = gen.sample(6, seed=1, digit=2)
    assert sevens.shape == (6, 28, 28) and not np.array_equal(sevens, twos)
    # Without --digit, digits are drawn at random with their shares of the training images,
    # which training recorded (so evaluation sees what users see), reproducibly per seed.
    labels = torch.from_numpy(read_idx(next(mnist_dir.glob("train-labels*"))).astype(np.int64))
    shares = torch.bincount(labels, minlength=10).double() / len(labels)
    assert gen.config.data.digit_frequencies == pytest.approx(shares.tolist(), abs=1e-6)
    drawn = gen.labels(50_000, seed=3)
    assert torch.equal(drawn, gen.labels(50_000, seed=3))
    assert not torch.equal(drawn, gen.labels(50_000, seed=4))
    drawn_shares = torch.bincount(drawn, minlength=10).double() / len(drawn)
    assert (drawn_shares - shares).abs().max() < 0.006, drawn_shares  # ~4.5 sd of a share
    assert drawn_shares[1] > drawn_shares[5] + 0.015  # MNIST: 11.2 % ones, 9.0 % fives

    assert main(["sample", str(conditional_run), "--digit", "7", "--n", "5",
                 "--npy", str(tmp_path / "s.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "s.npy"), gen.sample(5, digit=7))
    assert main(["sample", str(conditional_run), "--grid-by-class", "--n", "6",
                 "--out", str(tmp_path / "grid.png")]) == 0
    width, height = Image.open(tmp_path / "grid.png").size
    assert width / height == pytest.approx(6 / 10, rel=0.1)  # ten rows of six


def test_a_generator_saved_before_digit_shares_were_recorded_draws_digits_uniformly(
        conditional_run, tmp_path, capsys):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    saved = conditional_run / "generator.safetensors"
    with safe_open(saved, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(saved)
    config = json.loads(metadata["config"])
    del config["data"]["digit_frequencies"]
    old = tmp_path / "old.safetensors"
    save_file(tensors, old, metadata=metadata | {"config": json.dumps(config)})
    gen = load_generator(old)
    assert gen.config.data.digit_frequencies == []
    drawn = torch.bincount(gen.labels(50_000, seed=3), minlength=10).double() / 50_000
    assert (drawn - 0.1).abs().max() < 0.006, drawn
    threads = torch.get_num_threads()
    try:
        assert main(["evaluate", str(old), "--n", "200", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "digits asked for: drawn uniformly (the run predates" in capsys.readouterr().out


def test_digit_requests_that_cannot_be_met_are_clear_errors(conditional_run, tmp_path, capsys):
    with pytest.raises(UserError, match="knows digits 5"):
        load_generator_for_digits(tmp_path, [5]).sample(2, digit=3)
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(conditional_run), "--digit", "12"])
    assert exit_.value.code == 2 and "invalid choice: 12" in capsys.readouterr().err


def load_generator_for_digits(tmp_path, digits):
    config = load_config("best", [*TINY_BEST, "train.steps=1", f"data.digits={digits}"])
    return load_generator(train(config, out=tmp_path / "five", progress=False).run_dir)


def test_unconditional_generator_refuses_a_digit(tmp_path, mnist_dir, capsys):
    config = load_config("seed-002", ["train.steps=1", "train.batch_size=8"])
    run = train(config, out=tmp_path / "u", progress=False).run_dir
    assert main(["sample", str(run), "--digit", "3"]) == 2
    assert "not class-conditional" in capsys.readouterr().err
    assert main(["sample", str(run), "--grid-by-class"]) == 2
    assert "--grid-by-class needs a class-conditional" in capsys.readouterr().err


def test_evaluate_reports_conditional_accuracy(conditional_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    threads = torch.get_num_threads()
    try:
        assert main(["evaluate", str(conditional_run), "--n", "200", "--json", str(out),
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    table = capsys.readouterr().out
    assert "conditional accuracy" in table
    assert "digits asked for: drawn with their shares of the training images" in table
    import json

    result = json.loads(out.read_text())
    assert 0 <= result["generated"]["conditional_accuracy"] <= 1
    assert result["real"]["conditional_accuracy"] > 0.97  # the classifier on real digits


def test_evaluate_over_draws_gives_each_scores_mean_and_spread(conditional_run, tmp_path, capsys):
    import json

    def scores(*extra: str) -> dict:
        out = tmp_path / "eval.json"
        assert main(["evaluate", str(conditional_run), "--n", "200", "--threads", "1",
                     "--json", str(out), *extra]) == 0
        return json.loads(out.read_text())

    singles = [scores("--seed", str(seed))["generated"] for seed in (5, 6, 7)]
    capsys.readouterr()
    pooled = scores("--seed", "5", "--draws", "3")
    assert "mean ± standard deviation over 3 draws of 200 samples" in capsys.readouterr().out
    assert pooled["draws"] == 3 and pooled["samples"] == 200
    for key in ("fid", "recall", "conditional_accuracy", "fid_3"):
        values = torch.tensor([single[key] for single in singles], dtype=torch.float64)
        assert pooled["generated"][key] == pytest.approx(values.mean().item(), rel=1e-9)
        assert pooled["generated_sd"][key] == pytest.approx(values.std().item(), rel=1e-9)
    assert pooled["generated_sd"]["fid"] > 0  # three different draws
    mean_fids = {d: pooled["generated"][f"fid_{d}"] for d in range(10) if f"fid_{d}" in pooled["generated"]}
    assert pooled["generated"]["worst_digit"] == max(mean_fids, key=mean_fids.get)


def test_conditional_accuracy_counts_agreement_with_the_asked_digit(mnist_dir):
    from mnistgan.data import load_split
    from mnistgan.metrics import evaluate_images

    images, labels = load_split("mnist", "test")
    right = evaluate_images(images[:200], labels=labels[:200], names=["classes"])
    wrong = evaluate_images(images[:200], labels=(labels[:200] + 1) % 10, names=["classes"])
    assert right["conditional_accuracy"] > 0.97 and wrong["conditional_accuracy"] < 0.03
    assert math.isfinite(right["class_entropy"])


def test_ema_decay_ramps_up_from_the_first_updates():
    from mnistgan.average import ema_with_warmup

    update = ema_with_warmup(0.999)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    update(averaged, current, torch.tensor(0))  # decay (1 + 0) / (10 + 0) = 0.1
    assert torch.allclose(averaged[0], torch.full((3,), 0.9))
    counter = [torch.tensor(5)]
    update(counter, [torch.tensor(6)], torch.tensor(1_000_000))  # integers are copied
    assert counter[0].item() == 6
    late = [torch.zeros(1)]
    update(late, [torch.ones(1)], torch.tensor(1_000_000))  # decay capped at 0.999
    assert late[0].item() == pytest.approx(0.001)
