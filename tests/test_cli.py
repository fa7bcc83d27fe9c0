"""The command line, through the real entry point (a subprocess, as a user runs it)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def mnistgan(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mnistgan", *map(str, args)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = mnistgan("train", "--preset", "seed-002", "--steps", "6", "--batch-size", "32",
                    "--out", out, "--log-every", "2", "--sample-every", "3", "--seed", "4")
    assert "run folder:" in proc.stdout
    return out


def test_train_writes_the_run_folder(run_dir):
    assert (run_dir / "generator.safetensors").is_file()
    assert len(list((run_dir / "samples").glob("*.png"))) == 3


def test_console_script_is_installed():
    exe = shutil.which("mnistgan")
    if exe is None:
        pytest.skip("package not installed with pip (no console script on PATH)")
    proc = subprocess.run([exe, "presets"], capture_output=True, text=True)
    assert proc.returncode == 0 and "seed-004" in proc.stdout


def test_sample_png_and_npy(run_dir, tmp_path):
    png, npy = tmp_path / "grid.png", tmp_path / "x.npy"
    mnistgan("sample", run_dir, "--n", "10", "--out", png, "--npy", npy, "--seed", "3")
    arr = np.load(npy, allow_pickle=False)
    assert arr.shape == (10, 28, 28) and arr.dtype == np.uint8
    assert Image.open(png).size[0] > 28
    # Same seed, same digits; another seed, others; the weights file works as the run does.
    again = tmp_path / "y.npy"
    mnistgan("sample", run_dir / "generator.safetensors", "--n", "10", "--npy", again,
             "--seed", "3")
    assert np.array_equal(arr, np.load(again))
    other = tmp_path / "z.npy"
    mnistgan("sample", run_dir, "--n", "10", "--npy", other, "--seed", "4", "--noise", "uniform")
    assert not np.array_equal(arr, np.load(other))


def test_print_config_applies_named_options():
    proc = mnistgan("train", "--preset", "seed-000", "--noise", "semicircle", "--digits", "3,5",
                    "--batch-size", "64", "--set", "train.d_lr=0.001", "--print-config")
    assert '"dist": "semicircle"' in proc.stdout and '"batch_size": 64' in proc.stdout
    assert '"d_lr": 0.001' in proc.stdout and '"digits": [\n      3,\n      5\n    ]' in proc.stdout


def test_presets_listing_and_show():
    out = mnistgan("presets").stdout
    for name in ("seed-000", "seed-001", "seed-002", "seed-004"):
        assert name in out
    assert '"name": "seed-004"' in mnistgan("presets", "--show", "seed-004").stdout


@pytest.mark.parametrize("args, words", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    (["train", "--set", "train.batch_size=big"], "must be a whole number"),
    (["train", "--steps", "0"], "must be at least 1"),
    (["train", "--steps", "-3"], "must be at least 1"),
    (["train", "--batch-size", "0"], "must be at least 1"),
    (["train", "--d-lr", "-0.1"], "must be greater than 0"),
    (["train", "--digits", "12"], "not in 0-9"),
    (["train", "--noise", "cauchy"], "invalid choice: 'cauchy'"),
    (["train", "--steps", "3", "--epochs", "2"], "not allowed with"),
    (["train", "--steps", "2", "--data-dir", "/no/such/folder"], "train-images-idx3-ubyte"),
    (["train", "--steps", "2", "--out", "/etc/hostname/run"], "cannot write to output folder"),
    (["train", "--resume", "/no/such/run"], "not a run folder"),
    (["train", "--resume", "/tmp", "--batch-size", "8"], "only --steps, --epochs"),
    (["sample", "/no/such/run"], "does not exist"),
    (["sample", "/etc/hostname"], "not a readable safetensors file"),
])
def test_bad_input_is_one_clear_line(args, words, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mnistgan", *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnistgan: error:"), proc.stderr
    assert words in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_sampling_with_discriminator_weights_is_refused(run_dir):
    proc = mnistgan("sample", run_dir / "discriminator.safetensors", check=False)
    assert proc.returncode == 2 and "not a generator" in proc.stderr


def test_full_disk_is_found_before_training(tmp_path, mnist_dir):
    """A file-size limit makes every write past 1 kB fail as on a full disk: the run is refused
    before training starts, and the half-made folder is removed."""
    import resource
    import signal as sig

    def limit():
        sig.signal(sig.SIGXFSZ, sig.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    proc = subprocess.run([sys.executable, "-m", "mnistgan", "train", "--steps", "2", "--out",
                           tmp_path / "run"], capture_output=True, text=True, preexec_fn=limit,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write to output folder" in proc.stderr and "free space" in proc.stderr
    assert not (tmp_path / "run").exists()
