import math

import pytest
import torch
from safetensors.torch import load_file

from mnistgan import UserError, load_config, train
from mnistgan.health import HealthMonitor, diversity
from mnistgan.run import read_metrics


def row(step, d_loss=0.6, g_loss=0.9, acc_real=0.7, acc_fake=0.6, **extra):
    return {"step": step, "d_loss": d_loss, "g_loss": g_loss, "d_acc_real": acc_real,
            "d_acc_fake": acc_fake, **extra}


def feed(rows, window=5):
    monitor, found = HealthMonitor(window=window), []
    for r in rows:
        found += monitor.update(r)
    return found


def test_healthy_training_raises_nothing():
    assert feed([row(i) for i in range(50)]) == []


def test_discriminator_winning_needs_a_sustained_window():
    winning = [row(i, d_loss=0.01, g_loss=6.0, acc_real=1.0, acc_fake=1.0) for i in range(10)]
    assert feed(winning[:4]) == []
    found = feed(winning)
    assert [f.code for f in found] == ["d_wins"]
    assert "label smoothing" in found[0].message and found[0].step == 4


def test_a_problem_is_reported_once_per_episode():
    wins = [row(i, d_loss=0.01, acc_real=1.0, acc_fake=1.0) for i in range(8)]
    calm = [row(i) for i in range(8, 12)]
    found = feed(wins + calm + [dict(r, step=r["step"] + 12) for r in wins])
    assert [f.code for f in found] == ["d_wins", "d_wins"]


def test_collapse_from_low_diversity_or_falling_class_entropy():
    found = feed([row(0, diversity=0.9), row(1, diversity=0.6), row(2, diversity=0.1)])
    assert [f.code for f in found] == ["collapse"] and "diversity 0.10" in found[0].message
    found = feed([row(0, class_entropy=2.2), row(1, class_entropy=0.4)])
    assert [f.code for f in found] == ["collapse"] and "class entropy" in found[0].message


def test_oscillation():
    swings = [row(i, acc_fake=0.95 if (i // 2) % 2 else 0.05) for i in range(12)]
    assert "oscillation" in [f.code for f in feed(swings)]


def test_divergence_detected_from_nan():
    found = feed([row(0), row(1, d_loss=math.nan)])
    assert [f.code for f in found] == ["diverged"]


def test_diversity_of_one_repeated_digit_is_zero():
    real = torch.rand(20, 1, 28, 28)
    assert diversity(real[:1].repeat(20, 1, 1, 1), real) == pytest.approx(0.0)
    assert diversity(torch.rand(20, 1, 28, 28), real) == pytest.approx(1.0, abs=0.1)


def test_divergence_stops_training_and_keeps_the_last_good_weights(tmp_path, mnist_dir):
    """An absurd learning rate makes the losses NaN: the run stops with one clear message,
    and the saved weights are finite."""
    config = load_config("seed-002", ["train.batch_size=16", "train.steps=200",
                                      "train.log_every=1", "train.d_lr=1e30", "train.g_lr=1e30",
                                      "train.adam_eps=1e-30"])
    with pytest.raises(UserError, match="diverged at step"):
        train(config, out=tmp_path / "r", progress=False)
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert rows and len(rows) < 200
    weights = load_file(tmp_path / "r" / "generator.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert "diverged" in (tmp_path / "r" / "log.txt").read_text()
