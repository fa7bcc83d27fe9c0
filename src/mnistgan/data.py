"""MNIST-style data: the IDX reader, where the files live, downloads with checksums, and the
training set held in memory as one uint8 tensor.

Every problem with a data file raises :class:`DataError` with one line that names the file
and the fix; gzip, OS and parsing errors never escape raw.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import operator
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import DataError, UserError

__all__ = [
    "CLASSES",
    "DATASETS",
    "DatasetSpec",
    "FileSpec",
    "ImageBank",
    "check_digits",
    "default_cache_dir",
    "download_file",
    "load_split",
    "local_data_dir",
    "read_idx",
    "resolve_files",
    "scale_images",
    "to_uint8",
]


CLASSES = 10  # every MNIST-style dataset here labels its images 0-9


@dataclass(frozen=True)
class FileSpec:
    filename: str  # as the mirrors serve it, e.g. "train-images-idx3-ubyte.gz"
    sha256_raw: str | None  # SHA-256 of the decompressed bytes
    sha256_gz: str | None  # SHA-256 of the .gz file exactly as the mirrors serve it
    count: int  # images (or labels) in the file

    @property
    def raw_name(self) -> str:
        return self.filename[:-3] if self.filename.endswith(".gz") else self.filename


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    mirrors: tuple[str, ...]  # base URLs ending in "/"
    files: dict[str, FileSpec]  # "train-images", "train-labels", "test-images", "test-labels"
    title: str = field(default="")  # for messages, e.g. "Fashion-MNIST"

    @property
    def label(self) -> str:
        return self.title or self.name


def _files(hashes: dict[str, tuple[str | None, str | None]]) -> dict[str, FileSpec]:
    names = {
        "train-images": ("train-images-idx3-ubyte.gz", 60000),
        "train-labels": ("train-labels-idx1-ubyte.gz", 60000),
        "test-images": ("t10k-images-idx3-ubyte.gz", 10000),
        "test-labels": ("t10k-labels-idx1-ubyte.gz", 10000),
    }
    return {key: FileSpec(fn, *hashes[key], count) for key, (fn, count) in names.items()}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        # sha256_raw: the decompressed originals (../shared/data/mnist/SHA256SUMS.raw), so a
        # re-compressed copy passes too. sha256_gz: the mirrors' .gz files, as listed in
        # tensorflow/datasets url_checksums/mnist.txt; kept for reference, since the raw
        # hash is the one checked when both are known.
        files=_files({
            "train-images": (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            ),
            "train-labels": (
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            ),
            "test-images": (
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            ),
            "test-labels": (
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            ),
        }),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        # .gz hashes from tensorflow/datasets url_checksums/fashion_mnist.txt (the same
        # values appear in other projects checking Zalando's files); no published hash of
        # the decompressed bytes was found, so only the mirror's .gz files can be verified.
        files=_files({
            "train-images": (
                None, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            "train-labels": (
                None, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            "test-images": (
                None, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            "test-labels": (
                None, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        }),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        title="KMNIST",
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        # .gz hashes from tensorflow/datasets url_checksums/kmnist.txt (the same values are
        # in torchvision's Ruby port and other loaders); decompressed hashes unpublished.
        files=_files({
            "train-images": (
                None, "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4"),
            "train-labels": (
                None, "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"),
            "test-images": (
                None, "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"),
            "test-labels": (
                None, "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
        }),
    ),
}

SPLITS = ("train", "test")
VALUE_RANGES = ("tanh", "sigmoid")

_FIX = "delete it and run again, or point --data-dir / MNISTGAN_DATA at a good copy"
_BY_HAND = ("no internet? download the four files by hand into a folder and pass --data-dir DIR "
            "or set MNISTGAN_DATA")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 22
_IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}
# A mirror that streams without end must not fill the disk; the largest real file is
# Fashion-MNIST's 26 MB training images.
_MAX_DOWNLOAD = 256 << 20
_GZIP_ERRORS = (OSError, EOFError, zlib.error, ValueError)


# ---------------------------------------------------------------------------------------
# IDX files


def _bad(path: str | Path, problem: str) -> DataError:
    return DataError(f"{problem} in {path}: {_FIX}")


class _Reader:
    """Decompressed bytes of a gzip or raw file, turning every read failure into DataError
    and feeding what it reads to an optional hash."""

    def __init__(self, f: BinaryIO, path: str | Path, hasher: hashlib._Hash | None) -> None:
        self.path = path
        try:
            self.gz = f.read(2) == _GZIP_MAGIC
            f.seek(0)
        except OSError as e:
            raise DataError(f"cannot read {path} ({_reason(e)}): {_FIX}") from None
        self.stream: BinaryIO = gzip.GzipFile(fileobj=f, mode="rb") if self.gz else f
        self.hasher = hasher

    def read(self, n: int) -> bytes:
        try:
            data = self.stream.read(n)
        except _GZIP_ERRORS as e:
            if self.gz:
                raise _bad(self.path, f"truncated or corrupt gzip ({_reason(e)})") from None
            raise DataError(f"cannot read {self.path} ({_reason(e)}): {_FIX}") from None
        if self.hasher is not None:
            self.hasher.update(data)
        return data

    def read_upto(self, n: int) -> bytearray:
        """Up to n bytes, fewer only at the end of the data. Memory grows with what is
        actually read, never with n itself."""
        buf = bytearray()
        # Buffered reads allocate their full request up front, so requests start small
        # and grow with the data actually found.
        step = 1 << 16
        while len(buf) < n:
            chunk = self.read(min(step, n - len(buf)))
            if not chunk:
                break
            buf += chunk
            step = min(step * 2, _CHUNK)
        return buf


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


def _read_idx(path: str | Path, max_bytes: int | None,
              hasher: hashlib._Hash | None) -> np.ndarray:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the reader wraps it
    except OSError as e:
        raise DataError(f"cannot open {path} ({_reason(e)}): check the path, or point "
                        "--data-dir / MNISTGAN_DATA at the folder with the IDX files") from None
    with f:
        reader = _Reader(f, path, hasher)
        try:
            return _parse_idx(reader, path, max_bytes)
        finally:
            if reader.gz:
                reader.stream.close()


def _parse_idx(reader: _Reader, path: str | Path, max_bytes: int | None) -> np.ndarray:
    head = reader.read_upto(4)
    if len(head) < 4:
        raise _bad(path, f"only {len(head)} bytes, too short for an IDX header")
    if head[0] != 0 or head[1] != 0:
        raise _bad(path, f"wrong magic number 0x{bytes(head).hex()} (not an IDX file)")
    code, ndim = head[2], head[3]
    if code != 0x08:
        kind = _IDX_TYPES.get(code, "unknown")
        raise _bad(path, f"unsupported IDX data type 0x{code:02x} ({kind}; only 0x08, "
                         "unsigned bytes, is read)")
    if not 1 <= ndim <= 4:
        raise _bad(path, f"IDX header declares {ndim} dimensions (expected 1 to 4)")
    raw_dims = reader.read_upto(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise _bad(path, "truncated IDX header")
    dims = tuple(int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
    # Python ints, so a hostile header cannot overflow the product.
    declared = spanned = 1
    for d in dims:
        declared *= d
        spanned *= max(d, 1)  # numpy refuses such a shape even when another dimension is 0
    shape = "x".join(map(str, dims))
    if spanned > 2**40:
        raise _bad(path, f"IDX header declares a {shape} array, larger than any IDX file")
    header_len = 4 + 4 * ndim
    if max_bytes is not None and header_len + declared > max_bytes:
        raise _bad(path, f"IDX header declares {shape} = {declared} bytes, more than the "
                         f"{max_bytes} expected")
    # One byte beyond the declared size tells trailing garbage apart from an exact fit.
    payload = reader.read_upto(declared + 1)
    if len(payload) < declared:
        raise _bad(path, f"truncated data: header declares {shape} = {declared} bytes, file "
                         f"holds {len(payload)}")
    if len(payload) > declared:
        raise _bad(path, f"more data than the IDX header's {shape} = {declared} bytes")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def read_idx(path: str | Path, max_bytes: int | None = None) -> np.ndarray:
    """The array in an IDX file, gzip-compressed or raw (told apart by the gzip magic bytes,
    not the file name). Only unsigned-byte data (type 0x08) is read.

    `max_bytes` caps the decompressed size (header included). The payload is read before
    its size is trusted, so a header that declares huge dimensions costs no more memory
    than the file really holds. Any problem raises DataError naming the file."""
    return _read_idx(path, max_bytes, None)


# ---------------------------------------------------------------------------------------
# Checksums


# Hashing 47 MB costs a noticeable fraction of a second; a file already verified in this
# process is not hashed again while its identity and size stay the same.
_VERIFIED: set[tuple[str, int, int, int, str]] = set()


def _identity(path: Path, digest: str) -> tuple[str, int, int, int, str] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, digest)


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == _GZIP_MAGIC
    except OSError as e:
        raise DataError(f"cannot read {path} ({_reason(e)}): {_FIX}") from None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"cannot read {path} ({_reason(e)}): {_FIX}") from None
    return h.hexdigest()


def _sha256_raw(path: Path) -> str:
    h = hashlib.sha256()
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; the reader wraps it
    except OSError as e:
        raise DataError(f"cannot read {path} ({_reason(e)}): {_FIX}") from None
    with f:
        reader = _Reader(f, path, h)
        while reader.read(_CHUNK):
            pass
    return h.hexdigest()


def _mismatch(path: Path, spec: DatasetSpec, extra: str = "") -> DataError:
    return DataError(f"checksum mismatch in {path} (not the {spec.label} file, or damaged"
                     f"{extra}): {_FIX}")


def _load_checked(path: Path, spec: DatasetSpec, fspec: FileSpec) -> np.ndarray:
    """Read one file and verify its checksum before anything uses the data."""
    max_bytes = 16 + fspec.count * 28 * 28
    if fspec.sha256_raw:
        key = _identity(path, fspec.sha256_raw)
        if key in _VERIFIED:
            return read_idx(path, max_bytes)
        # One pass both hashes and parses the decompressed bytes.
        h = hashlib.sha256()
        array = _read_idx(path, max_bytes, h)
        if h.hexdigest() != fspec.sha256_raw:
            raise _mismatch(path, spec)
        if key is not None:
            _VERIFIED.add(key)
        return array
    if fspec.sha256_gz and _is_gzip(path):
        key = _identity(path, fspec.sha256_gz)
        if key not in _VERIFIED:
            if _sha256_file(path) != fspec.sha256_gz:
                raise _mismatch(path, spec, ", or re-compressed: for this dataset only the "
                                            "mirror's own .gz files can be verified")
            if key is not None:
                _VERIFIED.add(key)
    # Without a decompressed hash a raw copy cannot be verified; the shape and label
    # checks in load_split still apply.
    return read_idx(path, max_bytes)


# ---------------------------------------------------------------------------------------
# Where the files are


def _dataset(name: str) -> DatasetSpec:
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    return DATASETS[key]


def default_cache_dir() -> Path:
    """Where downloads go: $MNISTGAN_CACHE, else $XDG_CACHE_HOME/mnistgan, else
    ~/.cache/mnistgan. Each dataset gets its own subfolder."""
    if os.environ.get("MNISTGAN_CACHE"):
        return Path(os.environ["MNISTGAN_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "mnistgan"
    return Path.home() / ".cache" / "mnistgan"


def local_data_dir(explicit: str | Path | None = None, recorded: str = "") -> str | None:
    """The folder to read a dataset from: `explicit` (--data-dir), else the config's data.dir
    (the folder a run recorded, or set with --set) if it exists here, else $MNISTGAN_DATA;
    None means the download cache. (A recorded folder missing here, say on another machine,
    is passed over.)"""
    if recorded and not explicit and Path(recorded).expanduser().is_dir():
        explicit = recorded
    folder = explicit or os.environ.get("MNISTGAN_DATA")
    return str(Path(folder).expanduser().resolve()) if folder else None


def _find(fspec: FileSpec, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        for name in (fspec.filename, fspec.raw_name):
            if (folder / name).is_file():
                return folder / name
    return None


def resolve_files(dataset: str = "mnist", data_dir: str | Path | None = None,
                  download: bool = True, *,
                  which: Iterable[str] | None = None) -> dict[str, Path]:
    """Where each file of `dataset` is, keyed like ``DatasetSpec.files`` ("train-images",
    ...); `which` limits the lookup to some of them.

    A local folder (`data_dir`, else $MNISTGAN_DATA) is searched as DIR/<dataset>/ then
    DIR/, under the .gz name or the same name without .gz. Without one, files come from
    default_cache_dir()/<dataset>/ and missing ones are downloaded if `download`."""
    spec = _dataset(dataset)
    keys = list(spec.files) if which is None else list(which)
    for key in keys:
        if key not in spec.files:
            raise UserError(f"unknown data file {key!r}: use one of {', '.join(spec.files)}")
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("MNISTGAN_DATA") or None
    found: dict[str, Path] = {}
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        folders = [root / spec.name, root]
        for key in keys:
            fspec = spec.files[key]
            path = _find(fspec, folders)
            if path is None:
                raise DataError(
                    f"{fspec.filename} (or {fspec.raw_name}) not found in {folders[0]} or "
                    f"{folders[1]}: put the {spec.label} files in one of them, or point "
                    "--data-dir / MNISTGAN_DATA at the folder that holds them (unset both "
                    "to download into the cache)")
            found[key] = path
        return found
    cache = default_cache_dir() / spec.name
    for key in keys:
        fspec = spec.files[key]
        path = _find(fspec, [cache])
        if path is None:
            if not download:
                raise DataError(
                    f"{spec.label} not found and downloading is off: {fspec.filename} is not "
                    f"in {cache}; download the four files by hand into a folder and pass "
                    "--data-dir DIR or set MNISTGAN_DATA")
            path = download_file(spec, fspec, cache)
        found[key] = path
    return found


# ---------------------------------------------------------------------------------------
# Downloads


def _mirrors(spec: DatasetSpec) -> list[str]:
    override = os.environ.get("MNISTGAN_MIRRORS", "")
    bases = [m.strip() for m in override.split(",") if m.strip()] or list(spec.mirrors)
    return [b if b.endswith("/") else b + "/" for b in bases]


def _fetch(url: str, tmp: BinaryIO, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = 0
        while chunk := response.read(1 << 16):
            total += len(chunk)
            if total > _MAX_DOWNLOAD:
                raise ValueError(f"more than {_MAX_DOWNLOAD >> 20} MiB, not an IDX file")
            tmp.write(chunk)
    tmp.flush()
    os.fsync(tmp.fileno())


def _verify_download(path: Path, fspec: FileSpec) -> str | None:
    """Why the downloaded file is not the expected one, or None if it is."""
    try:
        if fspec.sha256_raw:
            ok = _sha256_raw(path) == fspec.sha256_raw
        elif fspec.sha256_gz:
            ok = _sha256_file(path) == fspec.sha256_gz
        else:
            ok = True
    except DataError:
        return "corrupt gzip"
    return None if ok else "checksum mismatch"


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible everywhere (e.g. Windows), and a
    # lost rename only means downloading again.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def download_file(spec: DatasetSpec, fspec: FileSpec, dest_dir: Path,
                  timeout: float = 30.0) -> Path:
    """Download one file into `dest_dir`, trying each mirror in turn ($MNISTGAN_MIRRORS,
    comma-separated base URLs, replaces the spec's list). The file is written under a
    temporary name, synced and verified, then renamed into place, so the final name only
    ever holds a complete, verified file."""
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest_dir} ({_reason(e)}): set "
                        "MNISTGAN_CACHE to a writable folder, or pass --data-dir DIR") from None
    final = dest_dir / fspec.filename
    failures: list[str] = []
    for base in _mirrors(spec):
        url = base + fspec.filename
        tmp_path: Path | None = None
        try:
            with tempfile.NamedTemporaryFile(dir=dest_dir, prefix=f".{fspec.filename}.",
                                             suffix=".part", delete=False) as tmp:
                tmp_path = Path(tmp.name)
                _fetch(url, tmp, timeout)
            problem = _verify_download(tmp_path, fspec)
            if problem is None:
                os.replace(tmp_path, final)
                tmp_path = None
                _fsync_dir(dest_dir)
                digest = fspec.sha256_raw or fspec.sha256_gz
                key = _identity(final, digest) if digest else None
                if key is not None:
                    _VERIFIED.add(key)
                return final
            failures.append(f"{url}: {problem}")
        except urllib.error.HTTPError as e:
            failures.append(f"{url}: HTTP {e.code}")
        except urllib.error.URLError as e:
            reason = e.reason
            text = _reason(reason) if isinstance(reason, BaseException) else str(reason)
            failures.append(f"{url}: {text}")
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{url}: {_reason(e)}")
        finally:
            if tmp_path is not None:
                with contextlib.suppress(OSError):
                    tmp_path.unlink()
    tried = "; ".join(failures) or "no mirrors configured"
    raise DataError(f"could not download {fspec.filename} of {spec.label} into {dest_dir} "
                    f"(tried {tried}): {_BY_HAND}")


# ---------------------------------------------------------------------------------------
# Splits


def load_split(dataset: str = "mnist", split: str = "train", data_dir: str | Path | None = None,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,) of one split, checksums
    verified and shapes and label range checked."""
    spec = _dataset(dataset)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use train or test")
    img_key, lab_key = f"{split}-images", f"{split}-labels"
    paths = resolve_files(spec.name, data_dir, download, which=(img_key, lab_key))
    images = _load_checked(paths[img_key], spec, spec.files[img_key])
    labels = _load_checked(paths[lab_key], spec, spec.files[lab_key])
    ipath, lpath = paths[img_key], paths[lab_key]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        shape = "x".join(map(str, images.shape))
        raise DataError(f"{ipath} holds an array of {shape}, not N x 28 x 28 images (not a "
                        f"{spec.label} image file): {_FIX}")
    if labels.ndim != 1:
        shape = "x".join(map(str, labels.shape))
        raise DataError(f"{lpath} holds an array of {shape}, not a list of labels (not a "
                        f"{spec.label} label file): {_FIX}")
    if len(images) != len(labels):
        raise DataError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} "
                        f"labels (files from different sets?): {_FIX}")
    if len(images) == 0:
        raise DataError(f"{ipath} holds no images: {_FIX}")
    if labels.max() > 9:
        raise DataError(f"{lpath} has label {int(labels.max())}, outside 0-9 (not a "
                        f"{spec.label} label file): {_FIX}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# ---------------------------------------------------------------------------------------
# Scaling


def _check_range(value_range: str) -> None:
    if value_range not in VALUE_RANGES:
        raise UserError(f"value range {value_range!r} is not tanh or sigmoid: set "
                        "data.value_range to tanh ([-1, 1]) or sigmoid ([0, 1])")


def scale_images(u8: torch.Tensor, value_range: str) -> torch.Tensor:
    """uint8 pixels to float32: "tanh" gives (x - 127.5) / 127.5 in [-1, 1], as the Keras
    tutorials do; "sigmoid" gives x / 255 in [0, 1]."""
    _check_range(value_range)
    x = u8.to(torch.float32)
    if value_range == "tanh":
        return (x - 127.5) / 127.5
    return x / 255.0


def to_uint8(x: torch.Tensor, value_range: str) -> torch.Tensor:
    """The inverse of scale_images for model outputs: clamped to the range, rounded."""
    _check_range(value_range)
    # A diverged generator yields NaN, whose cast to uint8 is undefined.
    x = torch.nan_to_num(x.to(torch.float32), nan=0.0)
    pixels = x * 127.5 + 127.5 if value_range == "tanh" else x * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------
# In memory


class ImageBank:
    """The training set in memory as one uint8 tensor (N,1,28,28) + labels; batches are drawn
    by index (no per-sample Dataset loop)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 value_range: str = "tanh") -> None:
        _check_range(value_range)
        if images.dtype != torch.uint8:
            raise ValueError(f"ImageBank wants uint8 images, got {images.dtype}")
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"ImageBank wants images of shape (N, 1, H, W) or (N, H, W), got "
                             f"{tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{tuple(labels.shape)} labels for {images.shape[0]} images")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.value_range = value_range

    @classmethod
    def load(cls, dataset: str = "mnist", split: str = "train",
             data_dir: str | Path | None = None, digits: Sequence[int] = (),
             value_range: str = "tanh", download: bool = True) -> ImageBank:
        """One split of `dataset`, optionally only the classes in `digits`."""
        _check_range(value_range)
        wanted = check_digits(digits)
        images, labels = load_split(dataset, split, data_dir, download)
        if wanted:
            keep = torch.isin(labels, torch.tensor(wanted, dtype=torch.int64))
            images, labels = images[keep], labels[keep]
            if len(labels) == 0:
                listed = ",".join(map(str, wanted))
                raise UserError(f"the {dataset} {split} set has no images of digits {listed}: "
                                "choose other --digits")
        return cls(images, labels, value_range)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (f"ImageBank({len(self)} images {tuple(self.images.shape[1:])}, "
                f"{self.value_range}, {self.images.device})")

    def to(self, device: torch.device | str) -> ImageBank:
        return ImageBank(self.images.to(device), self.labels.to(device), self.value_range)

    def shares(self, classes: Sequence[int]) -> list[float]:
        """Each of `classes`' share of the images (rounded to 6 places: a record, not a weight
        that needs every digit)."""
        counts = torch.bincount(self.labels.cpu(), minlength=CLASSES)[list(classes)].double()
        return [round(x, 6) for x in (counts / counts.sum()).tolist()]

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """float32 (B, 1, 28, 28), scaled from the uint8 pixels only for this batch."""
        return scale_images(self.images[index.to(self.images.device)], self.value_range)

    def random_index(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n indices drawn with replacement, as np.random.randint in the tutorials."""
        return torch.randint(0, len(self), (n,), generator=generator, device=generator.device)

    def epoch_index(self, generator: torch.Generator) -> torch.Tensor:
        """A random permutation of all indices: one pass without replacement."""
        return torch.randperm(len(self), generator=generator, device=generator.device)


def check_digits(digits: Iterable[object], option: str = "--digits") -> list[int]:
    """`digits` as whole numbers in 0..CLASSES-1: the one place a digit is checked (config,
    command line and server alike)."""
    wanted: list[int] = []
    for d in digits:
        try:
            value = operator.index(d) if not isinstance(d, str) else int(d)
        except (TypeError, ValueError):
            raise UserError(f"{option}: {d!r} is not a digit: give digits 0-{CLASSES - 1}, e.g. 5 "
                            "or 3,5,8") from None
        if not 0 <= value < CLASSES:
            raise UserError(f"{option}: digit {value} is not in 0-{CLASSES - 1}: give e.g. 5 or 3,5,8")
        wanted.append(value)
    return wanted
