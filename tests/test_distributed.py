"""DistributedDataParallel through torchrun: two CPU processes (gloo) on localhost."""

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistgan import UserError, load_config, resume, train
from mnistgan.run import read_metrics

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"
COMMON = ["train.log_every=1", "train.sample_every=1000", "train.checkpoint_every=2",
          "train.grid_size=16"]


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n free ports, all different (each held until the others are found)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def env_in(tmp: Path) -> dict[str, str]:
    """One thread a rank, and torchrun's scratch folders (torchelastic_*) under the test's
    own temporary folder."""
    return os.environ | {"OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}


def torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return torchruns(tmp, args)[0]


def torchruns(tmp: Path, *jobs: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Independent torchrun jobs at once (each on its own port), all of which must succeed."""
    started = []
    for args, port in zip(jobs, free_ports(len(jobs)), strict=True):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   "--master_addr=127.0.0.1", f"--master_port={port}", *args]
        started.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env_in(tmp)))
    results = []
    for process in started:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return results


def test_two_ranks_end_identical_and_match_one_process_at_the_global_batch(tmp_path, mnist_dir):
    result = torchrun(tmp_path, str(WORKER), str(tmp_path / "ddp"), str(tmp_path),
                      "train.steps=6", "train.batch_size=8", *COMMON)
    # seed-002 asks for the compiled step, which runs in one process only: rank 0 alone says so,
    # on the console and in the run's log.
    note = "train.compile_step runs on the CPU in one process only"
    assert result.stderr.count(note) == 1
    assert (tmp_path / "ddp" / "log.txt").read_text().count(note) == 1
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key

    # seed-002 has no batch norm: two ranks at batch 8 are one process at batch 16.
    single = train(load_config("seed-002", ["train.steps=6", "train.batch_size=16", *COMMON]),
                   out=tmp_path / "single", progress=False).run_dir
    G = load_file(single / "generator.safetensors")
    for key, value in G.items():
        torch.testing.assert_close(ranks[0][f"G.{key}"], value, rtol=1e-5, atol=1e-6)

    # Only rank 0 wrote, and the run states its effective batch.
    run = tmp_path / "ddp"
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["epoch"] == pytest.approx(6 * 16 / 60000, abs=1e-4)
    assert '"world_size": 2' in (run / "config.json").read_text()


def test_cli_under_torchrun_and_resume(tmp_path, mnist_dir):
    """seed-000 has dropout in D: the resumed run matches only if each rank gets its own
    random stream back."""
    settings = ["--preset", "seed-000", "--no-progress", "--batch-size", "8", "--set",
                "train.checkpoint_every=2", "--set", "train.log_every=1", "--set", "train.grid_size=4"]
    # the whole run and the first half of the other one at once: they share nothing
    train = ("-m", "mnistgan", "train", *settings)
    torchruns(tmp_path, (*train, "--steps", "8", "--out", str(tmp_path / "whole")),
              (*train, "--steps", "4", "--out", str(tmp_path / "half")))
    torchrun(tmp_path, "-m", "mnistgan", "train", "--resume", str(tmp_path / "half"), "--steps", "8",
             "--no-progress")
    for name in ("generator.safetensors", "discriminator.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "half" / name)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    assert [r["step"] for r in read_metrics(tmp_path / "half" / "metrics.jsonl")] == list(range(1, 9))
    assert "batch 8 x 2 processes" in (tmp_path / "whole" / "log.txt").read_text()

    # A run trained by two processes is not resumed by one: its batches would change.
    with pytest.raises(UserError, match="trained by 2 processes, this is 1"):
        resume(tmp_path / "half", steps=10, progress=False)


def test_learning_rate_scaling_rules_and_rank_shares():
    from mnistgan.distributed import World, lr_scale

    assert [lr_scale(rule, 4) for rule in ("none", "linear", "sqrt")] == [1.0, 4.0, 2.0]
    assert World(rank=1, size=4).share(8) == slice(8, 16)
    assert World().main and not World().distributed


def test_ctrl_c_under_torchrun_stops_both_ranks_at_one_step_with_a_checkpoint(tmp_path, mnist_dir):
    import signal
    import time

    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "mnistgan", "train",
               "--preset", "seed-002", "--steps", "1000000", "--no-progress", "--out", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env_in(tmp_path), start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = process.communicate(timeout=120)
    stopped = [line for line in err.splitlines() if line.startswith("mnistgan: stopped by SIGINT")]
    assert len(stopped) == 1, err[-2000:]  # rank 0 speaks for both
    step = int(stopped[0].split(" at step ")[1].split()[0])
    assert (run / "checkpoints" / f"step_{step:07d}").is_dir()
    assert f"continue with: mnistgan train --resume {run}" in stopped[0]


def test_a_second_torchrun_job_on_a_run_in_use_is_refused_on_every_rank(tmp_path, mnist_dir):
    """Rank 0 holds the run's lock; the second job's rank 0 is refused and its other rank
    stops too instead of waiting for it at the first collective."""
    import signal
    import time

    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}", "-m", "mnistgan", "train", "--preset", "seed-002",
         "--steps", "1000000", "--no-progress", "--set", "train.checkpoint_every=20", "--out", str(run)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_in(tmp_path),
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((run / "checkpoints").glob("step_*")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "mnistgan", "train",
                   "--resume", str(run), "--steps", "2000000", "--no-progress"]
        second = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env_in(tmp_path))
        assert second.returncode != 0
        refused = [line for line in second.stderr.splitlines() if line.startswith("mnistgan: error:")]
        assert len(refused) == 1 and "is in use by process" in refused[0], second.stderr[-2000:]
        assert first.poll() is None  # the first job trains on
    finally:
        os.killpg(first.pid, signal.SIGTERM)  # torchrun passes it on to its workers
        first.communicate(timeout=120)
