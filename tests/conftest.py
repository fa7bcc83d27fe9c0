import os
from pathlib import Path

import pytest

# Tests read MNIST from the shared offline copy beside the checkout unless told otherwise.
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
if "MNISTGAN_DATA" not in os.environ and SHARED_MNIST.is_dir():
    os.environ["MNISTGAN_DATA"] = str(SHARED_MNIST)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = Path(os.environ.get("MNISTGAN_DATA", SHARED_MNIST))
    if not (path / "train-images-idx3-ubyte.gz").exists() and not (path / "mnist").is_dir():
        pytest.skip(f"no MNIST copy at {path}: set MNISTGAN_DATA")
    return path
