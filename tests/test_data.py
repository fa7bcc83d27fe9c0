import dataclasses
import gzip
import hashlib
import http.server
import math
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mnistgan import data
from mnistgan.data import (
    DATASETS,
    ImageBank,
    default_cache_dir,
    download_file,
    load_split,
    read_idx,
    resolve_files,
    scale_images,
    to_uint8,
)
from mnistgan.errors import DataError, UserError

NAMES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}


# ---------------------------------------------------------------------------------------
# Helpers


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write(path: Path, raw: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the .gz bytes, and so their hash, the same on every run.
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def synthetic_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the scale are present
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_dataset(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True,
                  seed: int = 0) -> dict[str, Path]:
    """The four files of a small synthetic dataset in `folder`, named as the mirrors name
    them (without .gz when raw)."""
    paths = {}
    for key, n in (("train", n_train), ("test", n_test)):
        images, labels = synthetic_split(n, seed + (key == "test"))
        for kind, array in (("images", images), ("labels", labels)):
            name = NAMES[f"{key}-{kind}"]
            paths[f"{key}-{kind}"] = write(folder / (name if gz else name[:-3]),
                                           idx_bytes(array), gz)
    return paths


def match_spec(monkeypatch: pytest.MonkeyPatch, dataset: str, files: dict[str, Path],
               which: str) -> data.DatasetSpec:
    """Point `dataset`'s checksums at the synthetic files, keeping everything else (names,
    lookup, verification code) real. which: "raw" sets only sha256_raw, "gz" only
    sha256_gz."""
    spec = DATASETS[dataset]
    new_files = {}
    for key, fspec in spec.files.items():
        raw = gz = None
        if key in files:
            content = files[key].read_bytes()
            if which == "raw":
                raw = hashlib.sha256(gzip.decompress(content) if content[:2] == b"\x1f\x8b"
                                     else content).hexdigest()
            else:
                gz = hashlib.sha256(content).hexdigest()
        new_files[key] = dataclasses.replace(fspec, sha256_raw=raw, sha256_gz=gz)
    new = dataclasses.replace(spec, files=new_files)
    monkeypatch.setitem(DATASETS, dataset, new)
    return new


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No local data folder, no mirror override, an empty cache; returns the cache."""
    monkeypatch.delenv("MNISTGAN_DATA", raising=False)
    monkeypatch.delenv("MNISTGAN_MIRRORS", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MNISTGAN_CACHE", str(cache))
    monkeypatch.setattr(data, "_VERIFIED", set())
    return cache


# ---------------------------------------------------------------------------------------
# Real MNIST


@pytest.fixture(scope="module")
def real_dir(mnist_dir: Path) -> Path:
    return mnist_dir


@pytest.fixture(scope="module")
def real_train(real_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split("mnist", "train", real_dir, download=False)


def test_real_train_split(real_train):
    images, labels = real_train
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels).tolist()[5] == 5421
    assert images.min() == 0 and images.max() == 255


def test_real_test_split(real_dir):
    images, labels = load_split("mnist", "test", real_dir, download=False)
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert set(labels.tolist()) == set(range(10))


def test_real_checksums_match_the_published_ones(real_train, real_dir):
    # Rebuilding the decompressed files from the tensors checks both the reader and that
    # the hard-coded hashes are those of ../shared/data/mnist/SHA256SUMS.raw.
    images, labels = real_train
    spec = DATASETS["mnist"].files
    assert hashlib.sha256(idx_bytes(images.numpy())).hexdigest() == spec["train-images"].sha256_raw
    assert hashlib.sha256(idx_bytes(labels.numpy())).hexdigest() == spec["train-labels"].sha256_raw
    sums = real_dir / "SHA256SUMS.raw"
    if sums.exists():  # the offline copy's list (../shared/data/mnist in CI)
        listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line)
        for fspec in DATASETS["mnist"].files.values():
            assert listed[fspec.filename[:-3]] == fspec.sha256_raw


def test_real_checksum_rejects_a_changed_copy(real_dir, tmp_path):
    # Same header and size, one pixel changed: only the checksum can tell.
    raw = bytearray(gzip.decompress((real_dir / NAMES["test-images"]).read_bytes()))
    raw[1000] ^= 1
    changed = write(tmp_path / NAMES["test-images"][:-3], bytes(raw), gz=False)
    (tmp_path / NAMES["test-labels"]).write_bytes((real_dir / NAMES["test-labels"]).read_bytes())
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_split("mnist", "test", tmp_path, download=False)
    assert str(changed) in str(e.value)


def test_digits_filter(real_dir):
    fives = ImageBank.load("mnist", "train", real_dir, digits=[5], download=False)
    assert len(fives) == 5421
    assert fives.images.shape == (5421, 1, 28, 28) and fives.images.dtype == torch.uint8
    assert (fives.labels == 5).all()
    some = ImageBank.load("mnist", "test", real_dir, digits=(3, 5, 8), download=False)
    assert set(some.labels.tolist()) == {3, 5, 8}


@pytest.mark.parametrize("digits, shown", [([12], "digit 12"), ([3, -1], "digit -1")])
def test_digit_outside_0_9_is_a_user_error(digits, shown, tmp_path):
    # Rejected before any file is looked for.
    with pytest.raises(UserError, match=f"{shown} is not in 0-9: give e.g. 5 or 3,5,8"):
        ImageBank.load("mnist", data_dir=tmp_path / "nothing", digits=digits)


@pytest.mark.parametrize("value_range, low, high", [("tanh", -1.0, 1.0), ("sigmoid", 0.0, 1.0)])
def test_batch_value_ranges(real_train, value_range, low, high):
    bank = ImageBank(*real_train, value_range=value_range)
    batch = bank.batch(torch.arange(10000))
    assert batch.shape == (10000, 1, 28, 28) and batch.dtype == torch.float32
    assert batch.min().item() == low and batch.max().item() == high
    assert bank.images.dtype == torch.uint8  # scaled per batch, not stored as floats


def test_scaling_round_trips(real_train):
    images = real_train[0][:2000]
    every_value = torch.arange(256, dtype=torch.uint8)
    for value_range in ("tanh", "sigmoid"):
        assert torch.equal(to_uint8(scale_images(images, value_range), value_range), images)
        assert torch.equal(to_uint8(scale_images(every_value, value_range), value_range),
                           every_value)
    # The Keras tutorials' formula, exactly.
    expected = (images.numpy().astype(np.float32) - 127.5) / 127.5
    assert np.array_equal(scale_images(images, "tanh").numpy(), expected)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.999, 1.0, 7.0, float("nan")])
    assert to_uint8(x, "tanh").tolist() == [0, 0, 128, 255, 255, 255, 128]
    assert to_uint8(torch.tensor([-0.5, 0.5, 1.5]), "sigmoid").tolist() == [0, 128, 255]
    with pytest.raises(UserError, match="tanh or sigmoid"):
        to_uint8(x, "relu")


# ---------------------------------------------------------------------------------------
# ImageBank on synthetic data


def test_image_bank_indices_and_batches():
    images, labels = synthetic_split(50)
    bank = ImageBank(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    assert len(bank) == 50 and bank.images.shape == (50, 1, 28, 28)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    index = bank.random_index(1000, g1)
    assert torch.equal(index, bank.random_index(1000, g2))  # reproducible
    assert index.dtype == torch.int64 and index.min() >= 0 and index.max() < 50
    assert len(set(index.tolist())) < 1000  # with replacement
    perm = bank.epoch_index(g1)
    assert sorted(perm.tolist()) == list(range(50))
    batch = bank.batch(perm[:8])
    assert batch.shape == (8, 1, 28, 28) and batch.dtype == torch.float32
    assert torch.equal(to_uint8(batch, "tanh"), bank.images[perm[:8]])
    moved = bank.to("cpu")
    assert isinstance(moved, ImageBank) and len(moved) == 50 and moved.value_range == "tanh"
    with pytest.raises(UserError, match="tanh or sigmoid"):
        ImageBank(bank.images, bank.labels, value_range="linear")


# ---------------------------------------------------------------------------------------
# read_idx


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 28, 28), (2, 3, 4, 5), (0, 28, 28)])
def test_read_idx_round_trip(tmp_path, gz, shape):
    array = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = write(tmp_path / "x.idx", idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == shape and np.array_equal(out, array)


def test_read_idx_detects_gzip_by_content_not_name(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    raw_named_gz = write(tmp_path / "a.gz", idx_bytes(array), gz=False)
    gz_named_raw = write(tmp_path / "b-idx1-ubyte", idx_bytes(array), gz=True)
    assert np.array_equal(read_idx(raw_named_gz), array)
    assert np.array_equal(read_idx(str(gz_named_raw)), array)


@pytest.mark.parametrize("content, words", [
    (b"", "too short"),
    (b"\x00\x00", "too short"),
    (b"\x01\x02\x08\x01" + b"\x00" * 12, "wrong magic number"),
    (b"PK\x03\x04" + b"\x00" * 12, "wrong magic number"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "unsupported IDX data type 0x0d"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x05" + b"\x00" * 20, "5 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-1], "truncated data"),
    (idx_bytes(np.zeros((2, 28, 28), np.uint8)) + b"\x00", "more data than"),
])
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_rejects_bad_files(tmp_path, content, words, gz):
    path = write(tmp_path / "bad-idx3-ubyte.gz", content, gz)
    with pytest.raises(DataError, match=words) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_read_idx_truncated_and_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(5000, dtype=np.uint8) % 251), mtime=0)
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(good[: len(good) // 2])
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:])
    bad_crc = tmp_path / "crc.gz"
    bad_crc.write_bytes(good[:-8] + bytes(b ^ 1 for b in good[-8:-4]) + good[-4:])
    garbage_after = tmp_path / "garbage.gz"
    garbage_after.write_bytes(good + b"not gzip")
    for path in (truncated, bad_crc, garbage_after):
        with pytest.raises(DataError, match="truncated or corrupt gzip") as e:
            read_idx(path)
        assert str(path) in str(e.value)
    # Scrambled deflate data may also decode to the wrong length before zlib notices.
    with pytest.raises(DataError) as e:
        read_idx(corrupt)
    assert str(corrupt) in str(e.value)


def test_read_idx_unreadable_paths(tmp_path):
    with pytest.raises(DataError, match="cannot open") as e:
        read_idx(tmp_path / "missing.gz")
    assert "missing.gz" in str(e.value)
    with pytest.raises(DataError, match="cannot open"):
        read_idx(tmp_path)  # a folder


def test_read_idx_max_bytes(tmp_path):
    path = write(tmp_path / "x.gz", idx_bytes(np.zeros((10, 28, 28), np.uint8)), gz=True)
    assert read_idx(path, max_bytes=16 + 10 * 784).shape == (10, 28, 28)
    with pytest.raises(DataError, match="more than the 1000 expected"):
        read_idx(path, max_bytes=1000)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("gz", [True, False])
def test_huge_declared_dims_allocate_nothing(tmp_path, gz):
    header = b"\x00\x00\x08\x03" + (2**31).to_bytes(4, "big") * 2 + (28).to_bytes(4, "big")
    path = write(tmp_path / "huge.gz", header + b"\x07" * 100, gz)

    def read() -> None:
        with pytest.raises(DataError, match="truncated data|larger than any IDX file"):
            read_idx(path)

    assert _peak_bytes(read) < 1 << 20


def test_gzip_bomb_stops_at_the_declared_size(tmp_path):
    # 64 MiB of zeros behind a header that declares 1000 bytes: decompression must stop
    # right after the declared size instead of inflating everything.
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (1000).to_bytes(4, "big")
                                   + bytes(64 << 20), compresslevel=9, mtime=0))

    def read() -> None:
        with pytest.raises(DataError, match="more data than"):
            read_idx(path)

    assert _peak_bytes(read) < 8 << 20


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _check_read(path: Path, expected: np.ndarray | None) -> None:
    try:
        out = read_idx(path)
    except DataError as e:
        assert str(path) in str(e) and "\n" not in str(e)
        assert expected is None, f"rejected a valid file: {e}"
        return
    assert expected is not None, "accepted an invalid file"
    assert out.shape == expected.shape and np.array_equal(out, expected)


FUZZ = settings(max_examples=200, deadline=1000,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def reference(raw: bytes) -> np.ndarray | None:
    """What read_idx should return for these decompressed bytes; None: must reject."""
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        return None
    end = 4 + 4 * raw[3]
    if len(raw) < end:
        return None
    dims = [int.from_bytes(raw[i:i + 4], "big") for i in range(4, end, 4)]
    if math.prod(dims) != len(raw) - end or math.prod(max(d, 1) for d in dims) > 2**40:
        return None  # (the second: a shape no array can have, even an empty one)
    return np.frombuffer(raw[end:], np.uint8).reshape(dims)


@FUZZ
@given(content=st.binary(max_size=300), gz=st.booleans())
def test_fuzz_random_bytes(fuzz_dir, content, gz):
    _check_read(write(fuzz_dir / "random", content, gz), reference(content))


@FUZZ
@given(content=st.binary(min_size=1, max_size=400))
def test_fuzz_gzip_lookalikes(fuzz_dir, content):
    # Files that start with the gzip magic but are not valid gzip.
    path = fuzz_dir / "fake.gz"
    path.write_bytes(b"\x1f\x8b" + content)
    with pytest.raises(DataError):
        read_idx(path)


@FUZZ
@given(
    code=st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0D, 0xFF]),
    dims=st.lists(st.one_of(st.integers(0, 6), st.integers(0, 2**32 - 1)), max_size=6),
    ndim_delta=st.sampled_from([0, 0, 0, -1, 1]),
    extra=st.one_of(st.just(0), st.integers(-5, 5)),
    gz=st.booleans(),
    cut=st.one_of(st.none(), st.integers(0, 40)),
)
# Found by this test: an empty array whose other dimensions numpy cannot represent.
@example(code=8, dims=[0, 2**21, 2**21, 2**21], ndim_delta=0, extra=0, gz=False, cut=None)
def test_fuzz_headers(fuzz_dir, code, dims, ndim_delta, extra, gz, cut):
    ndim = max(0, min(255, len(dims) + ndim_delta))
    header = bytes([0, 0, code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    # Payloads stay small, so a header declaring more than 4 KiB is always given too little.
    size = max(0, min(math.prod(dims), 4096) + extra)
    content = header + bytes(i % 256 for i in range(size))
    if cut is not None:
        content = content[:cut]
    _check_read(write(fuzz_dir / "header", content, gz), reference(content))


# ---------------------------------------------------------------------------------------
# Where the files are


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MNISTGAN_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("MNISTGAN_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "mnistgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mnistgan"


def test_lookup_prefers_the_dataset_subfolder_and_accepts_raw_names(isolated, monkeypatch,
                                                                      tmp_path):
    root = tmp_path / "data"
    top = write_dataset(root, gz=True)
    sub = write_dataset(root / "mnist", gz=False)
    found = resolve_files("mnist", root, download=False)
    assert found == sub
    monkeypatch.setenv("MNISTGAN_DATA", str(root))  # used when no folder is given
    assert resolve_files("mnist", None, download=False) == sub
    for path in sub.values():
        path.unlink()
    assert resolve_files("mnist", root, download=False) == top


def test_fashion_mnist_by_name(isolated, monkeypatch, tmp_path):
    files = write_dataset(tmp_path / "data" / "fashion-mnist", gz=True, seed=3)
    match_spec(monkeypatch, "fashion-mnist", files, "gz")
    images, labels = load_split("fashion-mnist", "train", tmp_path / "data", download=False)
    expected_images, expected_labels = synthetic_split(30, 3)
    assert np.array_equal(images.numpy(), expected_images)
    assert np.array_equal(labels.numpy(), expected_labels)
    bank = ImageBank.load("Fashion_MNIST", "test", tmp_path / "data", digits=[1],
                          download=False)
    assert len(bank) == 1 and bank.labels.tolist() == [1]


def test_fashion_mnist_gz_checksum_mismatch(isolated, monkeypatch, tmp_path):
    files = write_dataset(tmp_path / "fashion-mnist", gz=True)
    match_spec(monkeypatch, "fashion-mnist", files, "gz")
    # Same content, compressed differently: the .gz hash cannot match.
    raw = gzip.decompress(files["train-images"].read_bytes())
    files["train-images"].write_bytes(gzip.compress(raw, compresslevel=1, mtime=1))
    with pytest.raises(DataError, match="checksum mismatch.*Fashion-MNIST") as e:
        load_split("fashion-mnist", "train", tmp_path, download=False)
    assert str(files["train-images"]) in str(e.value)


def test_raw_copy_of_a_gz_only_dataset_is_checked_for_shape(isolated, monkeypatch, tmp_path):
    gz_files = write_dataset(tmp_path / "gz", gz=True)
    match_spec(monkeypatch, "kmnist", gz_files, "gz")
    write_dataset(tmp_path / "raw" / "kmnist", gz=False)
    images, labels = load_split("kmnist", "train", tmp_path / "raw", download=False)
    assert images.shape == (30, 28, 28) and labels.shape == (30,)


def test_kmnist_by_name_with_raw_files(isolated, monkeypatch, tmp_path):
    files = write_dataset(tmp_path, gz=False, seed=5)
    match_spec(monkeypatch, "kmnist", files, "raw")
    images, labels = load_split("kmnist", "test", tmp_path, download=False)
    assert images.shape == (10, 28, 28) and labels.tolist() == list(range(10))
    # MNIST's own hashes reject the KMNIST files.
    with pytest.raises(DataError, match="checksum mismatch.*not the MNIST file"):
        load_split("mnist", "test", tmp_path, download=False)


def test_published_hashes_look_right():
    for name, spec in DATASETS.items():
        assert spec.name == name and set(spec.files) == set(NAMES)
        assert all(m.endswith("/") for m in spec.mirrors)
        for key, fspec in spec.files.items():
            assert fspec.filename == NAMES[key]
            assert fspec.count == (60000 if key.startswith("train") else 10000)
            for digest in (fspec.sha256_raw, fspec.sha256_gz):
                assert digest is None or (len(digest) == 64 and int(digest, 16) >= 0)
            assert fspec.sha256_raw or fspec.sha256_gz
    hashes = [f.sha256_gz for s in DATASETS.values() for f in s.files.values()]
    assert len(set(hashes)) == len(hashes)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        load_split("cifar", data_dir=tmp_path)
    with pytest.raises(UserError, match="unknown split 'val'"):
        load_split("mnist", "val", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------
# Bad data


def test_missing_file(isolated, tmp_path):
    with pytest.raises(DataError) as e:
        load_split("mnist", "train", tmp_path / "empty", download=False)
    message = str(e.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "empty" / "mnist") in message and "--data-dir" in message
    assert "\n" not in message


def test_missing_labels_only(isolated, tmp_path):
    files = write_dataset(tmp_path, gz=True)
    files["train-labels"].unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_split("mnist", "train", tmp_path, download=False)


def test_checksum_mismatch(isolated, tmp_path):
    write_dataset(tmp_path / "mnist")
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_split("mnist", "train", tmp_path, download=False)
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in str(e.value)
    assert "delete it and run again" in str(e.value)


def test_truncated_gzip_in_a_split(isolated, monkeypatch, tmp_path):
    files = write_dataset(tmp_path)
    match_spec(monkeypatch, "mnist", files, "raw")
    content = files["train-images"].read_bytes()
    files["train-images"].write_bytes(content[: len(content) - 100])
    with pytest.raises(DataError, match="truncated or corrupt gzip") as e:
        load_split("mnist", "train", tmp_path, download=False)
    assert str(files["train-images"]) in str(e.value)


def test_wrong_magic_in_a_split(isolated, monkeypatch, tmp_path):
    files = write_dataset(tmp_path, gz=False)
    match_spec(monkeypatch, "mnist", files, "raw")
    files["test-labels"].write_bytes(b"\x08\x01" + files["test-labels"].read_bytes()[2:])
    with pytest.raises(DataError, match="wrong magic number") as e:
        load_split("mnist", "test", tmp_path, download=False)
    assert str(files["test-labels"]) in str(e.value)


def _replace(files: dict[str, Path], key: str, array: np.ndarray) -> None:
    write(files[key], idx_bytes(array), gz=files[key].suffix == ".gz")


@pytest.mark.parametrize("key, array, words", [
    ("train-images", np.zeros((30, 27, 28), np.uint8), "27x28"),
    ("train-images", np.zeros((30, 784), np.uint8), "30x784"),
    ("train-labels", np.zeros(29, np.uint8), "30 images but"),
    ("train-labels", np.zeros((30, 1), np.uint8), "not a list of labels"),
    ("train-labels", np.full(30, 10, np.uint8), "label 10, outside 0-9"),
    ("train-images", np.zeros((0, 28, 28), np.uint8), "0 images but"),
])
def test_wrong_dimensions(isolated, monkeypatch, tmp_path, key, array, words):
    files = write_dataset(tmp_path)
    _replace(files, key, array)
    match_spec(monkeypatch, "mnist", files, "raw")  # checksums fine, content wrong
    with pytest.raises(DataError, match=words) as e:
        load_split("mnist", "train", tmp_path, download=False)
    assert str(files[key]) in str(e.value) and "\n" not in str(e.value)


def test_offline_without_a_local_copy(isolated):
    with pytest.raises(DataError, match="MNIST not found and downloading is off") as e:
        load_split("mnist", "train", download=False)
    message = str(e.value)
    assert "train-images-idx3-ubyte.gz" in message and str(isolated / "mnist") in message
    assert "--data-dir" in message and "MNISTGAN_DATA" in message


def test_cache_is_used_when_no_folder_is_given(isolated, monkeypatch):
    files = write_dataset(isolated / "mnist", gz=False)
    match_spec(monkeypatch, "mnist", files, "raw")
    images, _ = load_split("mnist", "test", download=False)
    assert images.shape == (10, 28, 28)


# ---------------------------------------------------------------------------------------
# Downloads through a loopback server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str]
    mode = "ok"  # "ok" or "cut" (send half the body, then drop the connection)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        body = self.files.get(self.path.rsplit("/", 1)[-1])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if self.mode == "ok" else body[: len(body) // 2])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    servers = []

    def start(files: dict[str, bytes], mode: str = "ok") -> tuple[str, list[str]]:
        hits: list[str] = []
        handler = type("Handler", (_Handler,), {"files": files, "hits": hits, "mode": mode})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/mnist/", hits

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or "part" in p.name)


def test_download_falls_back_to_a_working_mirror(isolated, monkeypatch, serve, tmp_path):
    source = write_dataset(tmp_path / "source", gz=True)
    match_spec(monkeypatch, "mnist", source, "raw")
    dead, dead_hits = serve({})
    cut, _ = serve({p.name: p.read_bytes() for p in source.values()}, mode="cut")
    good, good_hits = serve({p.name: p.read_bytes() for p in source.values()})
    monkeypatch.setenv("MNISTGAN_MIRRORS", f"{dead},{cut},{good.rstrip('/')}")
    images, labels = load_split("mnist", "train")
    assert np.array_equal(images.numpy(), synthetic_split(30)[0])
    assert len(labels) == 30
    cache = isolated / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [NAMES["train-images"], NAMES["train-labels"]])  # only what was needed
    assert (cache / NAMES["train-images"]).read_bytes() == source["train-images"].read_bytes()
    assert dead_hits == ["/mnist/" + NAMES["train-images"], "/mnist/" + NAMES["train-labels"]]
    assert len(good_hits) == 2
    # Found in the cache next time: no more requests.
    load_split("mnist", "train")
    assert len(good_hits) == 2


def test_download_file_directly(isolated, monkeypatch, serve, tmp_path):
    source = write_dataset(tmp_path / "source", gz=True)
    spec = match_spec(monkeypatch, "fashion-mnist", source, "gz")
    good, _ = serve({p.name: p.read_bytes() for p in source.values()})
    monkeypatch.setenv("MNISTGAN_MIRRORS", good)
    dest = tmp_path / "deep" / "dest"
    path = download_file(spec, spec.files["test-labels"], dest, timeout=5)
    assert path == dest / NAMES["test-labels"]
    assert path.read_bytes() == source["test-labels"].read_bytes()
    assert _leftovers(dest) == []


def test_download_with_wrong_checksum_everywhere_leaves_nothing(isolated, monkeypatch, serve,
                                                                  tmp_path):
    write_dataset(tmp_path / "source", gz=True)  # not MNIST: every checksum fails
    files = {p.name: p.read_bytes() for p in (tmp_path / "source").iterdir()}
    first, first_hits = serve(files)
    second, second_hits = serve(files)
    refused = "http://127.0.0.1:1/mnist/"
    monkeypatch.setenv("MNISTGAN_MIRRORS", ",".join([first, refused, second]))
    with pytest.raises(DataError) as e:
        load_split("mnist", "train")
    message = str(e.value)
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message
    for base in (first, refused, second):
        assert base + NAMES["train-images"] in message
    assert "checksum mismatch" in message and "no internet?" in message
    assert "--data-dir DIR" in message and "MNISTGAN_DATA" in message
    assert first_hits and second_hits
    cache = isolated / "mnist"
    assert not (cache / NAMES["train-images"]).exists()
    assert list(cache.iterdir()) == []  # no temp files either


def test_download_off_never_touches_the_network(isolated, monkeypatch, serve, tmp_path):
    source = write_dataset(tmp_path / "source", gz=True)
    match_spec(monkeypatch, "mnist", source, "raw")
    good, hits = serve({p.name: p.read_bytes() for p in source.values()})
    monkeypatch.setenv("MNISTGAN_MIRRORS", good)
    with pytest.raises(DataError, match="downloading is off"):
        load_split("mnist", "train", download=False)
    assert hits == []
