"""Never lose a run: exact resume, signals, kill -9, damaged checkpoints."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistgan import UserError, load_config, resume, train
from mnistgan.checkpoint import list_checkpoints, read_checkpoint
from mnistgan.run import read_metrics

TIMING = ("wall_s", "images_per_s")


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def same_weights(a, b):
    for name in ("generator.safetensors", "discriminator.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


# A run extended past its first length follows the new length's schedule from then on, so a
# decaying schedule would differ between the two ways by design: constant rates here.
@pytest.mark.parametrize("name, extra", [
    ("seed-000", ["train.batch_size=8"]),                      # dropout, batch norm, uniform noise
    ("seed-002", ["train.batch_size=16", "train.d_steps=2"]),  # epoch sampling, reused noise
    ("best", ["train.batch_size=8", "train.augment=translation,cutout,brightness",
              "train.r1=1.0", "train.lr_schedule=constant"]),  # labels, EMA, augmentation, R1
])
def test_resume_is_bit_identical(name, extra, tmp_path, mnist_dir):
    common = [*extra, "train.log_every=1", "train.sample_every=3", "train.checkpoint_every=2",
              "train.grid_size=16"]
    whole = train(load_config(name, [*common, "train.steps=8"]), out=tmp_path / "whole",
                  progress=False).run_dir
    half = train(load_config(name, [*common, "train.steps=4"]), out=tmp_path / "half",
                 progress=False).run_dir
    result = resume(half, steps=8, progress=False)
    assert result.steps == 8
    same_weights(whole, half)
    assert untimed(read_metrics(whole / "metrics.jsonl")) == untimed(read_metrics(half / "metrics.jsonl"))
    assert [p.name for p in list_checkpoints(half / "checkpoints")] == [
        "step_0000004", "step_0000006", "step_0000008"]  # keep_checkpoints = 3


def test_resume_refuses_a_finished_run_and_a_missing_one(tmp_path, mnist_dir):
    run = train(load_config("seed-002", ["train.steps=2", "train.batch_size=8"]),
                out=tmp_path / "r", progress=False).run_dir
    with pytest.raises(UserError, match="already at step 2 of 2"):
        resume(run, progress=False)
    with pytest.raises(UserError, match="not a run folder"):
        resume(tmp_path / "nothing", progress=False)


@pytest.fixture
def finished_run(tmp_path, mnist_dir):
    return train(load_config("seed-002", ["train.steps=4", "train.batch_size=8",
                                          "train.checkpoint_every=2"]),
                 out=tmp_path / "r", progress=False).run_dir


@pytest.mark.parametrize("damage", ["flip", "truncate", "manifest"])
def test_damaged_checkpoint_is_refused_by_name(finished_run, damage):
    newest = list_checkpoints(finished_run / "checkpoints")[-1]
    target = newest / ("manifest.json" if damage == "manifest" else "state.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        data = data[: len(data) // 3]
    target.write_bytes(bytes(data))
    with pytest.raises(UserError, match="step_0000004") as err:
        resume(finished_run, steps=6, progress=False)
    assert "delete that folder" in str(err.value)
    assert "\n" not in str(err.value)


def start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "mnistgan", "train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=os.environ.copy())


def wait_for_rows(run, n, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(read_metrics(run / "metrics.jsonl")) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training made no progress")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_says_how_to_resume(sig, code, tmp_path, mnist_dir):
    run = tmp_path / "run"
    # op by op: compiling the step (here and again on resume) took longer than the rest; the
    # compiled step under signals is benchmarks/chaos.py's (test_chaos_script_... below)
    proc = start(["--preset", "seed-002", "--steps", "100000", "--out", run, "--log-every", "5",
                  "--set", "train.checkpoint_every=100000", "--set", "train.compile_step=false",
                  "--no-progress"], tmp_path)
    wait_for_rows(run, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"mnistgan train --resume {run}" in err and "Traceback" not in err
    step = read_checkpoint(list_checkpoints(run / "checkpoints")[-1])["gan"]["counters"]["step"]
    assert step >= 10 and (run / "generator.safetensors").is_file()
    resumed = resume(run, steps=step + 5, progress=False)
    assert resumed.steps == step + 5


def test_kill_9_at_random_moments_never_loses_the_last_checkpoint(tmp_path, mnist_dir):
    """Checkpoint every step so that kills often land inside a checkpoint write. Each session,
    the first and the resumed ones, is killed once it has logged two new steps, so the kills
    land in training rather than in the start-up. The step op by op: compiling it cost each of
    the six sessions more than its steps (the compiled step resumes in tests of its own)."""
    run = tmp_path / "run"
    args = ["--preset", "seed-002", "--steps", "100", "--out", run, "--log-every", "1",
            "--set", "train.checkpoint_every=1", "--set", "train.compile_step=false", "--no-progress"]
    rng = random.Random(0)
    proc = start(args, tmp_path)
    last = 0
    for _ in range(4):
        wait_for_rows(run, min(last + 2, 100), proc)
        time.sleep(rng.uniform(0.0, 0.2))
        proc.kill()
        proc.wait()
        checkpoints = list_checkpoints(run / "checkpoints")
        step = read_checkpoint(checkpoints[-1])["gan"]["counters"]["step"]  # loads: not damaged
        assert step >= last
        last = step
        if last >= 100:
            break
        proc = start(["--resume", run, "--no-progress"], tmp_path)
    proc.kill()
    proc.wait()
    final = start(["--resume", run, "--no-progress"], tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode in (0, 2), err
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(1, 101))  # every step logged exactly once, in order


def test_second_ctrl_c_quits_at_once_and_keeps_the_last_checkpoint(tmp_path, mnist_dir):
    """The second press must come over a second after the first (an earlier one is torchrun's
    echo of the first) and land while the first is still being honoured: here during text
    004's D pre-training, which the first press lets finish (minutes at this size)."""
    run = tmp_path / "run"
    proc = start(["--preset", "seed-004", "--steps", "100000", "--out", run, "--no-progress",
                  "--set", "train.pretrain_images=20000"], tmp_path)
    deadline = time.monotonic() + 60
    while not (run / "samples" / "step_0000000.png").exists():  # the grid just before pre-training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 10, err  # at once, not after pre-training and a step
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "mnistgan: interrupted", err
    assert "stopped by SIGINT" not in err and "Traceback" not in err
    assert not list_checkpoints(run / "checkpoints")  # none half-written either


def test_chaos_script_kills_runs_and_each_stays_usable(tmp_path, mnist_dir):
    """benchmarks/chaos.py on its short setting: 4 kills over seed-002 and seed-000 (seed 4
    of the kill draws: SIGKILL and SIGTERM for seed-002, SIGKILL and SIGINT for seed-000), each
    followed by sample, evaluate (of 10 images, the fewest the metrics take) and resume; the
    resumed runs equal uninterrupted ones. One preset at a time: two at once were no faster on
    2 cores (175 s against 84 s here), and it was under that load that CI once saw seed-000
    differ (not reproduced in 12 runs here; the script now names what differs)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "chaos.py"
    done = subprocess.run([sys.executable, str(script), "--kills", "4", "--short", "--n", "10",
                           "--seed", "4", "--work", str(tmp_path)], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "usable after the kill: 4/4; resumed to the end vs never stopped: seed-002: equal, " \
           "seed-000: equal" in done.stdout


def test_state_flattens_and_comes_back_with_its_types():
    from mnistgan.checkpoint import flatten_state, unflatten_state

    state = {"opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}, 7: {}},
                     "param_groups": [{"lr": 1e-3, "params": [0, 7]}]},
             "rng": {"torch": [torch.arange(3), torch.arange(4)]}, "wall_s": 1.5, "best": None,
             "G": {"body.0.weight": torch.zeros(2, 2)}}
    tensors, skeleton = flatten_state(state)
    json.dumps(skeleton)  # the rest is plain JSON
    back = unflatten_state(tensors, json.loads(json.dumps(skeleton)))
    assert set(back["opt"]["state"]) == {0, 7}  # integer keys stay integers
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], torch.ones(2))
    assert [t.tolist() for t in back["rng"]["torch"]] == [[0, 1, 2], [0, 1, 2, 3]]
    assert back["wall_s"] == 1.5 and back["best"] is None and back["opt"]["param_groups"] == [
        {"lr": 1e-3, "params": [0, 7]}]


def write_format_1(folder, state):
    """The checkpoint layout written until 2026-12-01 (96cb798's save_checkpoint): flat tensor
    names, one torch RNG state, counters and optimiser groups in state.json."""
    import hashlib

    from safetensors.torch import save

    gan, loop = state["gan"], state["loop"]
    tensors = {f"{net}.{k}": v for net in ("G", "D", "G_ema") for k, v in gan.get(net, {}).items()}
    meta = {"format": "mnistgan-checkpoint-1", **gan["counters"], "since_log": loop["since_log"],
            "wall_s": loop["wall_s"], "best_fid": loop["best_fid"], "config": state["config"]}
    for name in ("opt_g", "opt_d"):
        for index, values in gan[name]["state"].items():
            tensors |= {f"{name}.{index}.{k}": torch.as_tensor(v) for k, v in values.items()}
        meta[name] = {"param_groups": gan[name]["param_groups"]}
    tensors |= {"rng.torch": gan["rng"]["torch"][0], "rng.data": gan["rng"]["data"],
                "rng.noise": gan["rng"]["noise"], "loop.metric_sums": loop["metric_sums"][0],
                "loop.epoch_order": gan["epoch_order"]}
    blobs = {"state.safetensors": save({k: v.contiguous() for k, v in tensors.items()}),
             "state.json": json.dumps(meta).encode()}
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    (folder / "manifest.json").write_text(json.dumps(
        {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}))


def test_a_checkpoint_of_the_old_format_resumes_bit_identically(tmp_path, mnist_dir):
    common = ["train.batch_size=8", "train.log_every=1", "train.checkpoint_every=2", "train.grid_size=4",
              "train.ema=0.5", "train.lr_schedule=constant"]  # extended: see test_resume_is_bit_identical
    whole = train(load_config("best", [*common, "train.steps=6"]), out=tmp_path / "whole",
                  progress=False).run_dir
    half = train(load_config("best", [*common, "train.steps=4"]), out=tmp_path / "half",
                 progress=False).run_dir
    newest = list_checkpoints(half / "checkpoints")[-1]
    write_format_1(newest, read_checkpoint(newest))
    assert json.loads((newest / "state.json").read_text())["format"] == "mnistgan-checkpoint-1"
    resume(half, steps=6, progress=False)
    same_weights(whole, half)
    assert untimed(read_metrics(whole / "metrics.jsonl")) == untimed(read_metrics(half / "metrics.jsonl"))
