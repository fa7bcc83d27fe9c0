"""The run folder: everything one training run leaves behind, described by itself.

    RUN/config.json            the resolved config (`mnistgan train --preset RUN/config.json`)
    RUN/log.txt                what happened, in words
    RUN/metrics.jsonl          one JSON row per logged step
    RUN/samples/step_*.png     grids from one fixed noise batch over training
    RUN/progress.gif           those grids as an animation
    RUN/losses.png             loss and D-accuracy curves
    RUN/real_vs_fake.png       real digits beside generated ones
    RUN/generator.safetensors, RUN/discriminator.safetensors   weights with their config
    RUN/generator_best.safetensors   the generator with the best FID (when evaluation is on)
    RUN/checkpoints/step_*/    resumable training state (see checkpoint.py)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import viz
from .atomic import atomic_write
from .config import Config
from .errors import UserError


def default_run_path(config: Config, root: str | Path = "runs") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{config.name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{config.name}-{stamp}-{n}"
    return path


class RunFolder:
    def __init__(self, path: Path, tensorboard: bool = False) -> None:
        self.path = path
        self.config = path / "config.json"
        self.log = path / "log.txt"
        self.metrics = path / "metrics.jsonl"
        self.samples = path / "samples"
        self.gif = path / "progress.gif"
        self.losses = path / "losses.png"
        self.comparison = path / "real_vs_fake.png"
        self.generator = path / "generator.safetensors"
        self.discriminator = path / "discriminator.safetensors"
        self.generator_best = path / "generator_best.safetensors"
        self.checkpoints = path / "checkpoints"
        self._tb = _tensorboard_writer(path / "tensorboard") if tensorboard else None
        self._lock: IO[str] | None = None

    @staticmethod
    def check_new(path: str | Path) -> None:
        """Refuse, before any data is loaded, a folder that already holds files or cannot be
        made."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(p.name != LOCK for p in path.iterdir())):
            raise UserError(f"output folder {path} already exists and is not empty: "
                            "choose another --out or delete it")
        nearest = next(p for p in (path, *path.parents) if p.exists())
        if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to output folder {path} ({nearest} is not a writable "
                            "folder): choose a writable --out")

    @classmethod
    def create(cls, path: str | Path, config: Config, tensorboard: bool = False) -> RunFolder:
        """Make a new run folder, refusing one that already holds files and checking that it
        can be written before any training time is spent."""
        path = Path(path)
        if tensorboard:
            _tensorboard_class()  # missing package: say so before anything is written

        cls.check_new(path)
        made = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock = _lock(path)
        except OSError as exc:
            for folder in made:
                shutil.rmtree(folder, ignore_errors=True)
            raise UserError(f"cannot write to output folder {path} ({exc.strerror}): "
                            "choose a writable --out with free space") from None
        cls.check_new(path)  # another process may have filled it since the first look
        try:
            (path / "samples").mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            with probe.open("wb") as f:  # a disk with no room fails here, not hours later
                f.write(b"0" * 65536)
            probe.unlink()
        except OSError as exc:
            for folder in made:  # leave nothing half-made behind
                shutil.rmtree(folder, ignore_errors=True)
            raise UserError(f"cannot write to output folder {path} ({exc.strerror}): "
                            "choose a writable --out with free space") from None
        run = cls(path, tensorboard)
        run._lock = lock
        atomic_write(run.config, config.to_json().encode())
        return run

    @classmethod
    def open(cls, path: str | Path, tensorboard: bool = False) -> RunFolder:
        """An existing run folder, to resume."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a run folder (no config.json): give the folder "
                            "that mnistgan train wrote")
        return cls(path, tensorboard)

    def lock(self) -> None:
        """Claim the folder for this process (see `_lock`): before a resumed run writes."""
        self._lock = _lock(self.path)

    def release(self) -> None:
        if self._tb is not None:
            self._tb.close()  # flushed now: a distributed rank ends without Python's shutdown
        if self._lock is not None:
            self._lock.close()  # closing the file releases the OS lock
            self._lock = None

    def rewind(self, step: int, config: Config) -> None:
        """Forget what was logged after `step` (the checkpoint resumed from), so the resumed
        run's metric rows and grids continue without duplicates; record the new config."""
        rows = [r for r in read_metrics(self.metrics) if r["step"] <= step]
        atomic_write(self.metrics, "".join(json.dumps(r) + "\n" for r in rows).encode())
        for grid in self.grids():
            if int(grid.stem[5:]) > step:
                grid.unlink()
        atomic_write(self.config, config.to_json().encode())

    def note(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"{datetime.now().isoformat(timespec='seconds')} {text}\n")

    def log_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def save_grid(self, step: int, images: np.ndarray, nrow: int | None = None) -> Path:
        path = viz.save_grid(images, self.samples / f"step_{step:07d}.png", nrow=nrow)
        if self._tb is not None:
            self._tb.add_image("samples", viz.image_grid(images, nrow=nrow), step, dataformats="HW")
        return path

    def grids(self) -> list[Path]:
        return sorted(self.samples.glob("step_*.png"))

    def finish(self, real: np.ndarray, fake: np.ndarray, title: str) -> None:
        """Draw the plots that summarise the run from what it logged."""
        grids = self.grids()
        if grids:
            viz.save_gif(grids, self.gif, captions=[f"step {int(p.stem[5:])}" for p in grids])
        rows = read_metrics(self.metrics)
        if rows:
            viz.plot_losses(rows, self.losses, title=title)
        viz.save_comparison(real, fake, self.comparison)


class SilentFolder:
    """The run folder as ranks other than 0 of a distributed run see it: they write nothing."""

    path = Path("(rank 0's run folder)")

    def note(self, text: str) -> None:
        pass

    def log_metrics(self, row: dict[str, Any]) -> None:
        pass

    def release(self) -> None:
        pass


LOCK = ".lock"


def _lock(folder: Path) -> IO[str] | None:
    """An exclusive OS lock on FOLDER/.lock, held while the returned file stays open: a second
    process that would write into the same run is refused, naming the holder. The OS drops the
    lock when its process ends in any way (kill -9 included), so it is never stale."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no locking
        return None
    try:
        handle = (folder / LOCK).open("a+", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write into {folder} ({exc.strerror or exc}): a run is continued "
                        "where it can write; copy it to a writable folder") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.readline().strip() or "another process"
        handle.close()
        raise UserError(f"{folder} is in use by {holder}: wait for it to finish or stop it "
                        "(two processes must not write one run)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()} "
                 f"({' '.join(['mnistgan', *sys.argv[1:]])})\n")
    handle.flush()
    return handle


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The logged rows. A last line cut short by a kill mid-write is left out."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise UserError(f"{path} line {i + 1} is damaged: remove that line") from None
    return rows


def _tensorboard_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("TensorBoard logging needs the tensorboard package: "
                        "pip install 'mnistgan[tensorboard]'") from None
    return SummaryWriter


def _tensorboard_writer(path: Path) -> Any:
    return _tensorboard_class()(str(path))

