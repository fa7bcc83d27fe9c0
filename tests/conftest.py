import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder MNIST is read from: $MNISTGAN_DATA when set (CI points it at its offline
    copy), else the download cache, filled on first use. A test that needs MNIST and cannot
    get it fails with one line saying how to provide it, never a quiet skip."""
    from mnistgan.data import default_cache_dir, resolve_files
    from mnistgan.errors import UserError

    try:
        return resolve_files("mnist")["train-images"].parent
    except UserError:
        pass
    where = os.environ.get("MNISTGAN_DATA")
    reason = (f"MNISTGAN_DATA={where} does not hold the four IDX files" if where else
              f"MNISTGAN_DATA is not set and it could not be downloaded into {default_cache_dir()}")
    pytest.fail(f"this test needs MNIST: {reason}; run MNISTGAN_DATA=DIR pytest with DIR holding "
                "the four IDX .gz files, or run the tests once online", pytrace=False)


@pytest.fixture
def train_module():
    """The module mnistgan.train, for monkeypatching: `mnistgan.train` as an attribute is the
    package's `train` function, which hides the module of the same name."""
    import importlib

    return importlib.import_module("mnistgan.train")


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright (Playwright's own browser download needs the
    net), for the pages a user opens: the server's and a study's report."""
    chromium = os.environ.get("MNISTGAN_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        if os.environ.get("MNISTGAN_REQUIRE_BROWSER"):
            pytest.fail("no chromium: install Debian's package (apt-get install chromium)")
        pytest.skip("no chromium on this machine: apt-get install chromium (CI does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield launched
        launched.close()
