"""Crash-safe file writes, shared by every module that writes into a run folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import UserError


def writable(path: str | Path, option: str) -> Path:
    """Check, before any long work, that a file can be written at `path` (making its folder if
    needed); a `UserError` naming `option` (e.g. "--npy") if not."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder: give a file name")
    made = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write there ({exc.strerror or exc}): "
                        "choose a writable path") from None
    finally:
        for folder in reversed(made):  # made again when the file is written
            with contextlib.suppress(OSError):
                folder.rmdir()
    return path


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one: a
    temporary file in the same folder, flushed to disk, then renamed into place. A path that
    cannot be written is a `UserError` naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): choose a writable path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes owner-only files; run folders are meant to be shared and served.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({exc.strerror or exc}): free some space or "
                        "choose another path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
