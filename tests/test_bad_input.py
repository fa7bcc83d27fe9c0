"""Every subcommand meets bad input the same way: exit code 2, one line on stderr naming the
problem and the fix, no traceback, and nothing in any run folder changed."""

import fcntl
import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mnistgan import load_config, train
from mnistgan.cli import main

FORBIDDEN = "/proc/forbidden"  # cannot be created, even by root
TINY = ["train.steps=4", "train.batch_size=8", "train.log_every=1", "train.sample_every=2",
        "train.checkpoint_every=2", "train.grid_size=4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, mnist_dir):
    """A finished run, an unfinished one, one held by another process, and bad files."""
    root = tmp_path_factory.mktemp("bad")
    run = train(load_config("seed-002", TINY), out=root / "run", progress=False).run_dir
    unfinished = root / "unfinished"
    shutil.copytree(run, unfinished)
    for name in ("generator.safetensors", "discriminator.safetensors"):
        (unfinished / name).unlink()
    shutil.rmtree(unfinished / "checkpoints")  # killed before its first checkpoint
    locked = root / "locked"
    shutil.copytree(run, locked)
    damaged_eval = root / "damaged-eval"
    shutil.copytree(run, damaged_eval)
    (damaged_eval / "eval.json").write_text('{"generated": {"fid": ')

    generator = (run / "generator.safetensors").read_bytes()
    (root / "garbage.safetensors").write_bytes(b"\x00\xffnot safetensors at all" * 10)
    (root / "truncated.safetensors").write_bytes(generator[: len(generator) // 2])
    nan = {k: torch.full_like(v, float("nan")) for k, v in load_file(run / "generator.safetensors").items()}
    save_file(nan, root / "nan.safetensors", metadata={
        "format": "mnistgan-weights-1", "role": "generator", "config": load_config("seed-002").to_json()})
    np.save(root / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (root / "payload.npy").write_bytes(pickle.dumps({"x": 1}))
    np.save(root / "float.npy", np.full((20, 28, 28), np.nan, dtype=np.float32))
    np.save(root / "few.npy", np.zeros((5, 28, 28), dtype=np.uint8))
    (root / "malformed.toml").write_text("[train\nsteps = 3\n")
    (root / "bad-config.json").write_text("{not json")
    return root


def case(*argv: str) -> list[str]:
    return list(argv)


CASES = {
    # train
    "unknown preset": (case("train", "--preset", "nosuch"), "unknown preset 'nosuch'"),
    "malformed TOML": (case("train", "--preset", "{root}/malformed.toml"), "is not valid TOML"),
    "malformed config.json": (case("train", "--preset", "{root}/bad-config.json"), "is not valid JSON"),
    "unknown config key": (case("train", "--set", "train.warp=9"), "unknown config key 'train.warp'"),
    "wrong config type": (case("train", "--set", "train.batch_size=big"), "must be a whole number"),
    "impossible value": (case("train", "--set", "train.d_lr=-1"), "must be greater than 0"),
    "zero steps": (case("train", "--steps", "0"), "must be at least 1"),
    "negative minibatch std": (case("train", "--preset", "best", "--set", "discriminator.minibatch_std=-4"),
                               "minibatch_std must be 0 (off) or a group size"),
    "even kernel, nearest upsampling": (case("train", "--preset", "best", "--set", "generator.kernels=4,4,3",
                                             "--set", "generator.upsample_mode=nearest"), "must be odd"),
    "unwritable --out": (case("train", "--steps", "1", "--out", f"{FORBIDDEN}/run"), "cannot write"),
    "--out a used folder": (case("train", "--steps", "1", "--out", "{root}/run"), "not empty"),
    "resume a locked run": (case("train", "--resume", "{root}/locked", "--steps", "8"),
                            "is in use by process 4242"),
    "resume before a checkpoint": (case("train", "--resume", "{root}/unfinished", "--steps", "8"),
                                   "no checkpoint to resume from"),
    "resume past its end": (case("train", "--resume", "{root}/run", "--steps", "2"), "already at step 4"),
    "resume with overrides": (case("train", "--resume", "{root}/run", "--seed", "3"),
                              "continues a run with its own config"),
    # sample
    "unwritable --npy": (case("sample", "{root}/run", "--npy", f"{FORBIDDEN}/x.npy"), "cannot write"),
    "--out is a folder": (case("sample", "{root}/run", "--out", "{root}"), "is a folder"),
    "garbage safetensors": (case("sample", "{root}/garbage.safetensors"), "not a readable safetensors"),
    "truncated safetensors": (case("sample", "{root}/truncated.safetensors"), "not a readable safetensors"),
    "NaN weights": (case("sample", "{root}/nan.safetensors"), "NaN or infinite weights"),
    "missing weights": (case("sample", "{root}/nothing.safetensors"), "does not exist"),
    "unfinished, no checkpoint": (case("sample", "{root}/unfinished"), "has no generator yet"),
    "digit of an unconditional model": (case("sample", "{root}/run", "--digit", "3"),
                                        "not class-conditional"),
    "unknown noise": (case("sample", "{root}/run", "--noise", "cauchy"), "invalid choice: 'cauchy'"),
    # evaluate
    "pickled .npy": (case("evaluate", "{root}/pickled.npy"), "cannot read"),
    "pickle renamed .npy": (case("evaluate", "{root}/payload.npy"), "cannot read"),
    "NaN samples": (case("evaluate", "{root}/float.npy"), "evaluate wants (N, 28, 28) uint8"),
    "too few samples": (case("evaluate", "{root}/few.npy"), "too few"),
    "bad --digits": (case("evaluate", "{root}/run", "--digits", "3,x"), "'x' is not a digit"),
    "zero --threads": (case("evaluate", "{root}/run", "--threads", "0"), "must be at least 1"),
    "--draws of a fixed .npy": (case("evaluate", "{root}/few.npy", "--draws", "2"),
                                "needs a generator to draw from"),
    "zero --draws": (case("evaluate", "{root}/run", "--draws", "0"), "must be at least 1"),
    "unwritable --json": (case("evaluate", "{root}/run", "--json", f"{FORBIDDEN}/s.json"), "cannot write"),
    # export
    "--onnx not .onnx": (case("export", "{root}/run", "--onnx", "{root}/g.txt"), "ending in .onnx"),
    "unwritable --onnx": (case("export", "{root}/run", "--onnx", f"{FORBIDDEN}/g.onnx"), "cannot write"),
    "export a discriminator": (case("export", "{root}/run/discriminator.safetensors", "--onnx",
                                    "{root}/d.onnx"), "not a generator"),
    # report
    "report a non-run": (case("report", "{root}", "--out", "{root}/r.html"), "not an mnistgan run"),
    "report a damaged eval.json": (case("report", "{root}/damaged-eval", "--out", "{root}/r.html"),
                                   "eval.json is damaged"),
    "unwritable report": (case("report", "{root}/run", "--out", f"{FORBIDDEN}/r.html"), "cannot write"),
    # serve
    "serve garbage": (case("serve", "{root}/garbage.safetensors", "--port", "0"), "not a readable"),
    "serve on no port": (case("serve", "{root}/run", "--port", "99999"), "is not a port"),
    # classifier, presets
    "unwritable classifier": (case("classifier", "train", "--out", f"{FORBIDDEN}/c.safetensors"),
                              "cannot write"),
    "unknown preset shown": (case("presets", "--show", "nosuch"), "unknown preset"),
}


def fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def lock_held(files):
    """`locked` is held by another mnistgan process (an OS lock on its .lock file)."""
    handle = (files / "locked" / ".lock").open("a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.seek(0)
    handle.truncate()
    handle.write("process 4242 on elsewhere (mnistgan train --preset seed-002)\n")
    handle.flush()
    yield
    handle.close()


def test_the_table_covers_every_subcommand():
    assert len(CASES) >= 25
    commands = {argv[0] for argv, _ in CASES.values()}
    assert commands == {"train", "sample", "evaluate", "export", "report", "serve", "classifier",
                        "presets"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line(name, files, lock_held, capsys, monkeypatch, tmp_path):
    # An empty cache, as on a new machine: a refusal comes before minutes of work (embedding
    # the reference images), not after them.
    monkeypatch.setenv("MNISTGAN_CACHE", str(tmp_path / "cache"))
    argv, words = CASES[name]
    argv = [a.replace("{root}", str(files)) for a in argv]
    runs = [p for p in files.iterdir() if p.is_dir()]
    before = {run: fingerprint(run) for run in runs}
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own refusals (a bad number, a choice)
        code = exit.code
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("mnistgan: error: "), lines
    assert words in lines[0], lines[0]
    assert "Traceback" not in out.err + out.out
    for run in runs:
        assert fingerprint(run) == before[run], f"{name} changed {run}"

