import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder MNIST is read from: $MNISTGAN_DATA when set (CI points it at its offline
    copy), else the download cache, filled on first use. A test that needs MNIST and cannot
    get it fails with one line saying how to provide it, never a quiet skip."""
    from mnistgan.data import resolve_files
    from mnistgan.errors import UserError

    try:
        files = resolve_files("mnist")
    except UserError as exc:
        pytest.fail(f"this test needs MNIST, which is neither in $MNISTGAN_DATA nor downloadable "
                    f"({str(exc).split(':')[0]}): run MNISTGAN_DATA=DIR pytest with DIR holding the "
                    "four IDX .gz files, or run it once online", pytrace=False)
    return files["train-images"].parent
