import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mnistgan.data import load_split
from mnistgan.errors import UserError
from mnistgan.metrics import classifier as clf
from mnistgan.metrics.classifier import (
    SHIPPED_PATH,
    SHIPPED_SHA256,
    MNISTClassifier,
    load_classifier,
    prepare,
    read_metadata,
    sha256_file,
    train_classifier,
)


@pytest.fixture(scope="module")
def test_images(mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split("mnist", "test", mnist_dir)
    return images[:2000], labels[:2000]


def _flip_byte(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_the_loaded_classifier_runs_channels_last_with_the_same_features(test_images) -> None:
    model = load_classifier()
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = MNISTClassifier()  # the same weights in the default (NCHW) layout
    plain.load_state_dict({k: v.contiguous() for k, v in model.state_dict().items()})
    plain.eval()
    x = prepare(test_images[0][:256])
    with torch.inference_mode():
        fast, reference = model.features_and_logits(x), plain.features_and_logits(x)
    for a, b in zip(fast, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # rounding: measured ~3e-6


def test_shipped_weights_match_their_hash() -> None:
    assert SHIPPED_PATH.is_file()
    assert sha256_file(SHIPPED_PATH) == SHIPPED_SHA256
    # Small enough to ship inside the wheel.
    assert SHIPPED_PATH.stat().st_size < 2_000_000


def test_shipped_classifier_accuracy(test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = test_images
    model = load_classifier()
    accuracy = (model.predict_all(images) == labels).float().mean().item()
    assert accuracy >= 0.993, accuracy
    assert float(read_metadata()["test_accuracy"]) >= 0.993


def test_default_model_is_cached_and_frozen() -> None:
    model = load_classifier()
    assert load_classifier() is model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_embedding_shapes_and_consistency(test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, _ = test_images
    model = load_classifier()
    emb = model.embed_all(images[:300], batch=128)
    assert emb.shape == (300, model.embed_dim) == (300, 128)
    assert emb.dtype == torch.float32 and torch.isfinite(emb).all()
    both_emb, logits = model.features_and_logits_all(images[:300], batch=64)
    assert logits.shape == (300, 10)
    torch.testing.assert_close(both_emb, emb)
    with torch.inference_mode():
        direct_emb, direct_logits = model.features_and_logits(prepare(images[:300]))
    torch.testing.assert_close(direct_emb, emb)
    torch.testing.assert_close(direct_logits, logits)
    assert model.embed_all(images[:0]).shape == (0, 128)


def test_prepare_accepts_every_documented_form(test_images: tuple[torch.Tensor, torch.Tensor]) -> None:
    u8 = test_images[0][:8]
    expected = u8.unsqueeze(1).float() / 255
    torch.testing.assert_close(prepare(u8), expected)
    torch.testing.assert_close(prepare(u8.unsqueeze(1)), expected)
    torch.testing.assert_close(prepare(expected.squeeze(1)), expected)
    torch.testing.assert_close(prepare(expected * 2 - 1, "tanh"), expected)
    model = load_classifier()
    assert torch.equal(model.predict_all(u8), model.predict_all(expected * 2 - 1, value_range="tanh"))
    with pytest.raises(ValueError, match="value_range='tanh'"):
        prepare(expected * 2 - 1)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        prepare(torch.zeros(2, 3, 28, 28))


def test_damaged_copy_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    shutil.copyfile(SHIPPED_PATH, good)
    assert load_classifier(good, expected_sha256=SHIPPED_SHA256).embed_dim == 128
    # A flipped byte among the weights still parses, so only the hash can catch it.
    size = good.stat().st_size
    damaged = _flip_byte(good, tmp_path / "damaged.safetensors", size - 100)
    with pytest.raises(UserError, match="sha256"):
        load_classifier(damaged, expected_sha256=SHIPPED_SHA256)
    # A flipped byte in the header breaks the file itself.
    broken = _flip_byte(good, tmp_path / "broken.safetensors", 10)
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_classifier(broken)


def test_damaged_shipped_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = _flip_byte(SHIPPED_PATH, tmp_path / "classifier.safetensors", SHIPPED_PATH.stat().st_size - 7)
    monkeypatch.setattr(clf, "SHIPPED_PATH", damaged)
    clf._load_shipped.cache_clear()
    try:
        with pytest.raises(UserError, match=r"damaged \(sha256 mismatch\): reinstall mnistgan"):
            load_classifier()
    finally:
        clf._load_shipped.cache_clear()


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="do not exist"):
        load_classifier(missing)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "something-else"})
    with pytest.raises(UserError, match="not an mnistgan classifier file"):
        load_classifier(foreign)
    # Right format, wrong shapes: a different architecture than the metadata claims.
    meta = read_metadata()
    state = {k: v.clone() for k, v in MNISTClassifier(widths=(8, 16)).state_dict().items()}
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong), metadata=meta)
    with pytest.raises(UserError, match="does not fit the classifier"):
        load_classifier(wrong)
    # Non-finite weights are damage too.
    state = {k: v.clone() for k, v in MNISTClassifier().state_dict().items()}
    state["head.weight"][0, 0] = float("nan")
    nan = tmp_path / "nan.safetensors"
    save_file(state, str(nan), metadata=meta)
    with pytest.raises(UserError, match="non-finite"):
        load_classifier(nan)


def test_short_training_run_writes_loadable_weights(mnist_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "clf.safetensors"
    result = train_classifier(out, data_dir=mnist_dir, max_steps=25, subset=2000, test_subset=500,
                              batch_size=64, progress=False, seed=1)
    assert result["steps"] == 25
    assert result["loss_last"] < result["loss_first"]
    assert result["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    model = load_classifier(out)
    meta = read_metadata(out)
    assert meta["seed"] == "1" and meta["arch_version"] == clf.ARCH_VERSION
    assert abs(float(meta["test_accuracy"]) - result["test_accuracy"]) < 1e-4
    assert model.embed_all(torch.zeros(2, 28, 28, dtype=torch.uint8)).shape == (2, 128)
    # Written atomically: no temporary files left beside it.
    assert [p.name for p in out.parent.iterdir()] == ["clf.safetensors"]


def test_the_shipped_classifier_never_saw_the_held_out_floor():
    """The metrics' real-data floor is the last HELD_OUT training images: data the judge was
    not trained on."""
    from mnistgan.metrics.classifier import HELD_OUT

    assert int(read_metadata()["train_images"]) == 60000 - HELD_OUT


def idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of unsigned bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def small_fashion(tmp_path: Path) -> Path:
    """A synthetic stand-in for Fashion-MNIST: each class a bar at its own height."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for split, n in (("train", 10200), ("t10k", 500)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label:4 + 2 * label, 4:24] = 255
        idx(folder / f"{split}-images-idx3-ubyte", images)
        idx(folder / f"{split}-labels-idx1-ubyte", labels)
    return tmp_path / "data"


def test_another_dataset_is_scored_by_its_own_classifier_or_refused(small_fashion, tmp_path, monkeypatch,
                                                                    capsys):
    from mnistgan.cli import main
    from mnistgan.data import load_split
    from mnistgan.metrics.classifier import classifier_path

    monkeypatch.setenv("MNISTGAN_CACHE", str(tmp_path / "cache"))
    samples = tmp_path / "samples.npy"
    np.save(samples, load_split("fashion-mnist", "test", small_fashion)[0][:100].numpy())
    evaluate = ["evaluate", str(samples), "--dataset", "fashion-mnist", "--data-dir", str(small_fashion)]
    assert main(evaluate) == 2  # never a silent MNIST score
    err = capsys.readouterr().err
    assert "no reference classifier for fashion-mnist" in err
    assert "mnistgan classifier train --dataset fashion-mnist" in err and len(err.strip().splitlines()) == 1

    assert main(["classifier", "train", "--dataset", "fashion-mnist", "--data-dir", str(small_fashion),
                 "--epochs", "3", "--no-progress"]) == 0
    path = classifier_path("fashion-mnist")
    assert path.is_relative_to(tmp_path / "cache")
    meta = read_metadata(path)
    assert meta["dataset"] == "fashion-mnist" and meta["train_images"] == "200"  # the rest held out
    capsys.readouterr()
    assert main(evaluate) == 0
    table = capsys.readouterr().out
    assert "real floor (100)" in table
