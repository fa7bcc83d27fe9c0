"""A run that did not finish (killed, or still training) is as usable as a finished one, and a
run folder has one writer at a time."""

import fcntl
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch

from mnistgan import load_config, load_generator, resume, train
from mnistgan.checkpoint import list_checkpoints, read_checkpoint, save_weights
from mnistgan.cli import main
from mnistgan.run import read_metrics

TINY = ["train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2", "train.grid_size=4"]
FINAL = ("generator.safetensors", "discriminator.safetensors", "progress.gif", "losses.png",
         "real_vs_fake.png")


def killed(run: Path) -> Path:
    """The run as `kill -9` after its last checkpoint leaves it: no final files."""
    for name in FINAL:
        (run / name).unlink()
    return run


@pytest.fixture(scope="module")
def unfinished_best(tmp_path_factory, mnist_dir):
    """A conditional run with an EMA generator, killed after step 4."""
    out = tmp_path_factory.mktemp("best") / "run"
    config = load_config("best", [*TINY, "train.steps=4", "train.batch_size=8", "train.ema=0.5"])
    return killed(train(config, out=out, progress=False).run_dir)


def assert_is_the_average(sampled: dict[str, torch.Tensor], state: dict) -> None:
    """G's moving average's weights, with its standing batch-norm statistics (`best` keeps
    train.standing_stats; tests/test_average.py checks their values)."""
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in sampled.items():
        same = torch.equal(value, state["G_ema"][f"module.{key}"])
        assert same != key.endswith(statistics), key


def test_sample_reads_the_newest_checkpoint_and_its_ema_generator(unfinished_best, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(unfinished_best), "--n", "8", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mnistgan: {unfinished_best} is unfinished: using its checkpoint at step 4 "
                   "(the moving average of G)"]
    assert out.stat().st_size > 0
    gen = load_generator(unfinished_best)
    state = read_checkpoint(list_checkpoints(unfinished_best / "checkpoints")[-1])["gan"]
    assert_is_the_average(gen.net.state_dict(), state)


def test_evaluate_takes_an_unfinished_run_and_keeps_its_scores_in_it(unfinished_best, capsys):
    before = sorted(p.name for p in unfinished_best.iterdir())
    assert main(["evaluate", str(unfinished_best), "--n", "100"]) == 0
    assert "using its checkpoint at step 4" in capsys.readouterr().err
    saved = json.loads((unfinished_best / "eval.json").read_text())  # written by default
    assert saved["samples"] == 100 and saved["step"] == 4 and "step 4" in saved["origin"]
    assert sorted(p.name for p in unfinished_best.iterdir()) == sorted({*before, "eval.json"})


def test_any_checkpoint_folder_is_a_generator_source(unfinished_best, capsys):
    first = list_checkpoints(unfinished_best / "checkpoints")[0]  # step 2, not the newest
    gen = load_generator(first)
    assert gen.step == 2 and "(the moving average of G)" in gen.origin
    assert_is_the_average(gen.net.state_dict(), read_checkpoint(first)["gan"])
    before = sorted(p.name for p in first.iterdir())
    assert main(["evaluate", str(first), "--n", "100"]) == 0
    assert f"using checkpoint {first}" in capsys.readouterr().err
    assert sorted(p.name for p in first.iterdir()) == before  # no eval.json inside a checkpoint


def test_report_shows_an_unfinished_run_as_it_stands(unfinished_best, tmp_path, capsys):
    page = tmp_path / "report.html"
    assert main(["report", str(unfinished_best), "--out", str(page)]) == 0
    note = f"{unfinished_best} is unfinished: shown as of step 4"
    assert note in capsys.readouterr().err and note in page.read_text()


def test_export_takes_an_unfinished_run(unfinished_best, tmp_path, capsys):
    pytest.importorskip("onnx")
    assert main(["export", str(unfinished_best), "--onnx", str(tmp_path / "g.onnx")]) == 0
    assert "using its checkpoint at step 4" in capsys.readouterr().err


def test_serve_takes_an_unfinished_run(unfinished_best):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistgan.serve import create_app

    with TestClient(create_app(unfinished_best)) as client:
        info = client.get("/api/info").json()
        assert info["conditional"] is True and info["name"] == unfinished_best.name
        assert client.get("/api/grid.png?n=4").status_code == 200


def test_stray_folders_in_checkpoints_are_not_checkpoints(unfinished_best, tmp_path, capsys):
    stray = unfinished_best / "checkpoints" / "step_0000400.bak"
    stray.mkdir()
    try:
        assert main(["sample", str(unfinished_best), "--out", str(tmp_path / "g.png")]) == 0
        assert "checkpoint at step 4" in capsys.readouterr().err
    finally:
        stray.rmdir()


def test_a_run_resumed_past_its_saved_weights_is_read_from_its_newer_checkpoint(tmp_path, mnist_dir,
                                                                                capsys):
    """While a finished run is resumed for more steps, its generator.safetensors is older than
    its newest checkpoint: the checkpoint wins."""
    run = train(load_config("seed-002", [*TINY, "train.steps=4", "train.batch_size=8"]),
                out=tmp_path / "r", progress=False).run_dir
    old = load_generator(run)
    resume(run, steps=6, progress=False)
    save_weights(old.net, run / "generator.safetensors", old.config, "generator", step=4)
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert "using its checkpoint at step 6" in capsys.readouterr().err
    assert main(["sample", str(run / "generator.safetensors"), "--n", "4",
                 "--out", str(tmp_path / "g.png")]) == 0  # the file itself, when named
    assert capsys.readouterr().err == ""


def test_a_run_before_its_first_checkpoint_says_how_to_continue(tmp_path, mnist_dir, capsys):
    run = killed(train(load_config("seed-002", [*TINY, "train.steps=2", "train.batch_size=8"]),
                       out=tmp_path / "r", progress=False).run_dir)
    shutil.rmtree(run / "checkpoints")
    assert main(["sample", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no generator yet" in err and f"mnistgan train --resume {run}" in err
    assert "\n" not in err


def start_training(run: Path, tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistgan", "train", "--preset", "seed-002", "--steps", "1000000",
         "--out", str(run), "--log-every", "5", "--set", "train.checkpoint_every=20", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not list_checkpoints(run / "checkpoints"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_kill_9_leaves_no_stale_lock(tmp_path,
                                                                                     mnist_dir, capsys):
    run = tmp_path / "run"
    proc = start_training(run, tmp_path)
    try:
        # While it trains: the run can be sampled, but not resumed by a second process.
        assert main(["sample", str(run), "--out", str(tmp_path / "g.png")]) == 0
        assert "is unfinished: using its checkpoint" in capsys.readouterr().err
        rows = len(read_metrics(run / "metrics.jsonl"))
        assert main(["train", "--resume", str(run), "--steps", "2000000"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"is in use by process {proc.pid} " in err and "\n" not in err
        assert len(read_metrics(run / "metrics.jsonl")) >= rows  # the first one wrote on
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    resumed = resume(run, steps=read_checkpoint(list_checkpoints(run / "checkpoints")[-1])
                     ["gan"]["counters"]["step"] + 3, progress=False)
    assert resumed.steps > 0


def test_data_folder_is_recorded_and_used_by_resume_and_evaluate(tmp_path, mnist_dir, monkeypatch,
                                                                capsys):
    """Trained with --data-dir offline; later commands without it read the same folder."""
    monkeypatch.delenv("MNISTGAN_DATA", raising=False)
    run = train(load_config("seed-002", [*TINY, "train.steps=2", "train.batch_size=8"]),
                out=tmp_path / "r", data_dir=mnist_dir, progress=False).run_dir
    assert json.loads((run / "config.json").read_text())["data"]["dir"] == str(mnist_dir.resolve())
    # No other way to the data: an empty cache beside the cached reference features, and no
    # reachable mirror.
    cache = tmp_path / "cache"
    cache.mkdir()
    from mnistgan.data import default_cache_dir

    (cache / "reference").symlink_to(default_cache_dir() / "reference", target_is_directory=True)
    monkeypatch.setenv("MNISTGAN_CACHE", str(cache))
    monkeypatch.setenv("MNISTGAN_MIRRORS", "http://127.0.0.1:9/")
    assert resume(run, steps=4, progress=False).steps == 4
    assert main(["evaluate", str(run), "--n", "100"]) == 0, capsys.readouterr().err
    # The recorded folder also wins over $MNISTGAN_DATA set for other work.
    monkeypatch.setenv("MNISTGAN_DATA", str(tmp_path / "elsewhere"))
    assert resume(run, steps=6, progress=False).steps == 6
    assert json.loads((run / "config.json").read_text())["data"]["dir"] == str(mnist_dir.resolve())
    assert not (cache / "mnist").exists()


def progress_lines(columns: int, args: list[str], cwd: Path) -> list[str]:
    """What `mnistgan ARGS` shows on a terminal `columns` wide."""
    master, replica = pty.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "mnistgan", *args], stdout=replica,
                            stderr=replica, cwd=cwd,
                            env={k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")})
    os.close(replica)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait() == 0, out.decode()
    return [line for line in out.decode().replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if "%|" in line]


@pytest.mark.parametrize("columns", [80, 200])
def test_progress_bar_shows_step_rate_eta_and_losses_within_the_terminal(columns, tmp_path, mnist_dir):
    # op by op: compiling the step took longer than the 300 steps (the bar is the same)
    lines = progress_lines(columns, ["train", "--preset", "seed-002", "--steps", "300", "--log-every",
                                     "100", "--set", "train.compile_step=false", "--out",
                                     str(tmp_path / "r")], tmp_path)
    last = lines[-1]
    assert len(last) < columns, last
    assert "300/300" in last and "it/s" in last and "<00:00" in last, last
    assert " D " in last and " G " in last, last
    bar = last.split("|")[1]
    assert len(bar) >= 10, last  # the bar itself stays visible
