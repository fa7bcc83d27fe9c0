"""`mnistgan sweep`: studies of settings x seeds on Optuna's storage, killed and resumed,
shared by two processes, and refused in one line when they cannot run."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnistgan.cli import main
from mnistgan.errors import UserError
from mnistgan.study import read_study
from mnistgan.study.results import Summary, bootstrap, verdict, welch_interval
from mnistgan.study.spec import Range, parse_axis

# Small trials: 100 samples (the least a study takes) and the step run op by op. Compiling it
# (seed-002's train.compile_step) cost each trial's trainer more than its steps, and the
# compiled step has tests of its own (test_train: losses, resume); these test the sweep.
STUDY = """
base = "seed-002"
seeds = 2
samples = 100
budget = {{ steps = {steps} }}
set = ["train.checkpoint_every=50", "train.log_every=50", "train.sample_every=100",
       "train.compile_step=false"]

[axes]
"train.label_smoothing" = [0.0, 0.1]
"train.d_lr" = [1e-4, 1e-3]
"""


def study_file(tmp_path: Path, steps: int = 100) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.format(steps=steps))
    return path


def sweep(*args: str) -> subprocess.Popen:
    # Started as a shell's background job (`nohup ... &`) is: with SIGINT ignored, which Python
    # then never turns into KeyboardInterrupt unless the sweep takes the signal itself. The
    # harder case, and the same whether this suite runs in a terminal or in the background.
    return subprocess.Popen([sys.executable, "-m", "mnistgan", "sweep", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))


def results(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_killed_sweep_resumes_without_rerunning_a_trial_and_its_report_renders(
        tmp_path, mnist_dir, browser):
    study, out = study_file(tmp_path, steps=300), tmp_path / "study"
    # two settings (one d_lr) x two seeds: two workers, so two trials start after the first two
    one_lr = ["--axis", "train.d_lr=1e-3"]
    process = sweep(study, "--out", out, "--jobs", "2", *one_lr)
    # kill -9 once a trial is done and another is mid-run with a checkpoint
    deadline = time.monotonic() + 300
    while True:
        done = [r.parent.name for r in out.glob("runs/*/eval.json")]
        mid_run = [r.name for r in out.glob("runs/*") if list(r.glob("checkpoints/step_*"))
                   and not (r / "losses.png").exists()]
        if done and mid_run:
            break
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(list(out.glob("runs/*/eval.json"))) < 4  # killed mid-way

    resumed = sweep(study, "--out", out, "--jobs", "2", *one_lr)
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "put back trial" in stdout
    rows = results(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    pairs = {(r["train.label_smoothing"], r["train.d_lr"], r["seed"]) for r in rows}
    assert len(pairs) == 4  # every (setting, seed) once
    assert all(r["steps"] == "300" and float(r["fid"]) > 0 for r in rows)
    for name in done:  # finished before the kill: not trained again
        assert "resumed" not in (out / "runs" / name / "log.txt").read_text()
    assert any("resumed from step_" in (out / "runs" / name / "log.txt").read_text() for name in mid_run)

    # a finished study run again trains nothing and rewrites the same results
    again = sweep(study, "--out", out, *one_lr)
    stdout, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "trial" not in stdout.split("\n", 1)[1].split("4 of 4")[0]
    assert results(out) == rows

    page = browser.new_page()
    page.goto((out / "report.html").resolve().as_uri())
    assert page.locator("#settings tr").count() == 1 + 2 + 1  # header, two settings, the floor
    assert page.locator("#trials tr").count() == 1 + 4
    for image in ("strip", "best-grid"):
        assert page.evaluate(f"document.getElementById('{image}').naturalWidth") > 100
    verdict_text = page.text_content("#verdict")
    assert "Welch" in verdict_text and ("is not separable" in verdict_text or "is separable" in verdict_text)
    page.close()


def test_ctrl_c_stops_the_sweep_cleanly_and_the_same_command_continues_it(tmp_path, mnist_dir):
    """Ctrl-C once the first checkpoint (step 50) exists: 3,950 steps are left, tens of seconds
    of work (with 200 steps a busy CI host finished the trials before the signal, and with 1,000
    a host running two trainings beside the suite did)."""
    study, out = study_file(tmp_path, steps=4000), tmp_path / "study"
    args = [study, "--out", out, "--jobs", "2", "--seeds", "1", "--axis", "train.d_lr=1e-3"]
    process = sweep(*args)
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*/checkpoints/step_*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C: the sweep passes it on to its trainers
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "the same command continues it" in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("mnistgan: sweep stopped with")

    again = sweep(*args)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    rows = results(out)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"done"}
    assert any("resumed from step_" in (out / r["run"] / "log.txt").read_text() for r in rows)


def test_a_failed_trial_is_reported_and_run_again_with_retry_failed(tmp_path, mnist_dir):
    study, out = study_file(tmp_path, steps=20), tmp_path / "study"
    args = [study, "--out", out, "--seeds", "1", "--axis", "train.d_lr=1e-3", "--axis",
            "train.label_smoothing=0"]
    first = sweep(*args, "--data-dir", tmp_path / "no-data-here")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "0 of 1 trials done, 1 failed (--retry-failed runs them again)" in stdout
    (row,) = results(out)
    assert row["status"].startswith("failed: train exited with 2") and row["fid"] == ""

    again = sweep(*args, "--retry-failed")
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert "1 failed trials queued again" in stdout and "1 of 1 trials done:" in stdout
    (row,) = results(out)
    assert row["status"] == "done" and float(row["fid"]) > 0


def test_two_sweeps_sharing_one_storage_split_the_trials_between_them(tmp_path, mnist_dir):
    study, out = study_file(tmp_path), tmp_path / "shared"
    # four trials (one seed), claimed from the one queue by both sweeps, started at once
    first, second = (sweep(study, "--out", out, "--threads", "1", "--seeds", "1") for _ in range(2))
    said = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, said
    ran = [[line for line in stdout.splitlines() if line.startswith("trial ")] for stdout, _ in said]
    assert ran[0] and ran[1] and len(ran[0]) + len(ran[1]) == 4, ran
    assert len({line.split(" done: ")[1].rsplit(":", 2)[0] for line in ran[0] + ran[1]}) == 4
    assert len(results(out)) == 4


def test_random_search_draws_from_ranges_and_tpe_queues_every_seed_of_its_draws(tmp_path, mnist_dir):
    # random: two draws of one seed each; tpe: two draws, each with its second seed queued
    for sampler, seeds in (("random", ["0", "0"]), ("tpe", ["0", "0", "1", "1"])):
        out = tmp_path / sampler
        code = main(["sweep", "--base", "seed-002", "--axis", "train.d_lr=1e-4:1e-3:log",
                     "--axis", "train.label_smoothing=0,0.1", "--sampler", sampler, "--settings", "2",
                     "--seeds", str(len(set(seeds))), "--steps", "20", "--samples", "100", "--out",
                     str(out), "--jobs", "2", "--set", "train.compile_step=false"])
        assert code == 0
        rows = results(out)
        assert len(rows) == len(seeds)
        settings = {(r["train.d_lr"], r["train.label_smoothing"]) for r in rows}
        assert len(settings) == 2 and all(1e-4 <= float(lr) <= 1e-3 for lr, _ in settings)
        assert sorted(r["seed"] for r in rows) == seeds


def run_cli(capsys, *args: str) -> tuple[int, str]:
    """Exit status and stderr of `mnistgan sweep ARGS` (argparse's refusals included)."""
    try:
        code = main(["sweep", *map(str, args)])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("change, problem", [
    ('"train.d_lr" = [1e-4, 1e-3]', None),
    ('"train.no_such_key" = [1, 2]', "no_such_key"),
    ('"train.d_lr" = []', "axis train.d_lr is empty"),
    ('"noise.dist" = ["uniform", "gaussian"]', "gaussian"),
    ('"train.d_lr" = { low = 1e-4, high = 1e-3 }', "a range, which a grid cannot enumerate"),
])
def test_a_bad_axis_is_one_line_before_anything_runs(tmp_path, capsys, change, problem):
    path = tmp_path / "bad.toml"
    path.write_text(f'base = "seed-002"\nbudget = {{ steps = 10 }}\n[axes]\n{change}\n')
    if problem is None:
        read_study(path)  # the control: the same file with a good axis is accepted
        return
    code, err = run_cli(capsys, str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and problem in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, problem", [
    (["--steps", "0"], "must be at least 1"),
    (["--storage", "nosuchdb://x/y"], "cannot open the storage nosuchdb://x/y"),
    (["--storage", "sqlite:////no/such/folder/study.db"], "cannot open the storage"),
    (["--metric", "beauty"], "metric 'beauty' is unknown"),
    (["--seeds", "0"], "must be at least 1"),
    (["--example", "no-such-study"], "unknown example study 'no-such-study'"),
])
def test_bad_sweep_options_are_one_line(tmp_path, capsys, args, problem):
    study = [] if args[0] == "--example" else [study_file(tmp_path), "--out", tmp_path / "out"]
    code, err = run_cli(capsys, *study, *args)
    assert code == 2 and problem in err and len(err.splitlines()) == 1, err


def test_without_optuna_the_sweep_says_which_extra_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    code, err = run_cli(capsys, study_file(tmp_path), "--out", tmp_path / "out")
    assert code == 2 and err == "mnistgan: error: mnistgan sweep needs Optuna: pip install 'mnistgan[sweep]'"


@pytest.mark.parametrize("options, problem", [
    (["--metric", "conditional_accuracy"], "needs a class-conditional base"),
    (["--sampler", "random", "--settings", "5"], "more than the 4 combinations"),
    (["--sampler", "random", "--settings", "2", "--axis", "train.batch_size=16:128"],
     "axis train.batch_size takes whole numbers: mark its range as such (train.batch_size=16:128:int"),
])
def test_a_metric_or_sampler_that_cannot_work_is_refused_before_training(tmp_path, capsys, options, problem):
    code, err = run_cli(capsys, study_file(tmp_path), "--out", tmp_path / "out", *options)
    assert code == 2 and problem in err and len(err.splitlines()) == 1, err


def test_a_zero_budget_in_the_file_is_refused(tmp_path):
    path = tmp_path / "zero.toml"
    path.write_text('base = "seed-002"\nbudget = { epochs = 0 }\n[axes]\n"train.d_lr" = [1e-4]\n')
    with pytest.raises(UserError, match="trains nothing"):
        read_study(path)


def test_a_study_whose_base_differs_from_the_stored_one_is_refused(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    first = tmp_path / "a" / "same.toml"
    first.parent.mkdir()
    first.write_text('base = "seed-002"\nbudget = { steps = 10 }\n[axes]\n"train.d_lr" = [1e-4]\n')
    from mnistgan.study.runner import open_storage, open_study

    open_study(read_study(first), open_storage(storage))  # made, not run
    other = tmp_path / "b" / "same.toml"
    other.parent.mkdir()
    other.write_text(first.read_text().replace("seed-002", "seed-001"))
    code, err = run_cli(capsys, str(other), "--storage", storage, "--out", str(tmp_path / "out"))
    assert code == 2 and "already holds study 'same' with another base" in err, err


@given(st.lists(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                          st.sampled_from(["uniform", "semicircle", "relu"]),
                          st.lists(st.integers(1, 512), min_size=1, max_size=3)),
                min_size=1, max_size=5))
def test_command_line_axis_values_read_back_as_written(values):
    text = ",".join(json.dumps(v) if not isinstance(v, str) else v for v in values)
    assert json.dumps(parse_axis("generator.channels", text)) == json.dumps(values)  # types too


def test_command_line_ranges():
    assert parse_axis("train.d_lr", "1e-4:1e-3:log") == Range(1e-4, 1e-3, log=True)
    assert parse_axis("train.batch_size", "16:128:int") == Range(16, 128, integer=True)
    assert parse_axis("train.d_lr", "1e-4:1e-3") == Range(1e-4, 1e-3)


def test_the_verdict_separates_only_beyond_the_seed_spread():
    study = read_study(None, ["train.d_lr=1e-4,1e-3"], base="seed-002", budget={"steps": 1})

    def summary(name, values):
        low, high = bootstrap([values], lambda v: sum(v) / len(v))
        return Summary(name, values, sum(values) / len(values), 0.0, low, high, None)

    close = [summary("a", [10.0, 11.0, 12.0]), summary("b", [10.5, 11.5, 12.5])]
    apart = [summary("a", [10.0, 10.2, 10.1]), summary("b", [20.0, 20.3, 20.1])]
    assert "is not separable" in verdict(study, close)
    assert "is separable" in verdict(study, apart)
    # ranges that do not overlap are not enough: three seeds each, 34.0 against 35.2
    assert "is not separable" in verdict(study, [summary("a", [30.4, 30.5, 34.0]),
                                                 summary("b", [35.2, 40.3, 44.9])])
    # Welch's interval by hand: means 20 and 22, variances 0.625 and 6.5, n = 5 each:
    # standard error sqrt(0.125 + 1.3), df = 4.76 -> 4, t = 2.776
    half = 2.776 * (0.625 / 5 + 6.5 / 5) ** 0.5
    assert welch_interval([19, 19.5, 20, 20.5, 21.0], [19.0, 20, 22, 24, 25.0]) == pytest.approx(
        (2 - half, 2 + half))
    low, high = bootstrap([[1.0, 2.0, 3.0, 4.0]], lambda v: sum(v) / len(v))
    assert 1.0 <= low < 2.5 < high <= 4.0


def test_workers_drawing_at_the_same_moment_draw_only_the_settings_asked_for(tmp_path, monkeypatch):
    # Two workers that both count the drawn settings before either has drawn must not both
    # draw: the count is held open here for a moment, as a loaded machine does by chance.
    import threading

    from mnistgan.study.runner import Worker, open_storage, open_study

    study = read_study(None, axes=["train.d_lr=1e-4:1e-3:log"], base="seed-002",
                       budget={"steps": 10}, sampler="tpe", settings=1)
    optuna_study = open_study(study, open_storage(f"sqlite:///{tmp_path / 'study.db'}"))
    counted = Worker._drawn_settings

    def slow_count(self: Worker) -> int:
        n = counted(self)
        time.sleep(0.5)
        return n

    monkeypatch.setattr(Worker, "_drawn_settings", slow_count)
    workers = [Worker(study, optuna_study, tmp_path, 1, None, print, threading.Event()) for _ in range(2)]
    claims: list = []
    threads = [threading.Thread(target=lambda w=w: claims.append(w.claim())) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claim is None for claim in claims) == [False, True]
    assert len(optuna_study.get_trials(deepcopy=False)) == 1
