"""The reference MNIST classifier whose embedding is the feature space for FID, KID and
precision/recall.

Inception-v3 features say little about 28x28 digits, so sample quality is measured in the
embedding of a small CNN trained on MNIST itself. Its weights ship inside the package
(``classifier.safetensors``, float16, ~1 MB) and their SHA-256 is checked at load, so
evaluation needs neither training nor a download; ``train_classifier`` reproduces them.

Input convention: every method takes float32 images in [0, 1] shaped (N, 1, 28, 28).
``prepare`` turns uint8 pixels, (N, 28, 28) tensors or tanh-scaled [-1, 1] generator output
into that, so callers never have to guess.
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn
from tqdm import tqdm

from ..atomic import atomic_write
from ..errors import UserError

__all__ = [
    "ARCH_VERSION",
    "SHIPPED_PATH",
    "SHIPPED_SHA256",
    "augment",
    "MNISTClassifier",
    "classifier_path",
    "load_classifier",
    "prepare",
    "read_metadata",
    "reference_classifier",
    "sha256_file",
    "train_classifier",
]

FORMAT = "mnistgan-classifier-1"
# Bumped whenever the layer layout changes, so old weight files are refused by name rather
# than loaded into a network they were not trained for.
ARCH_VERSION = "1"
SHIPPED_PATH = Path(__file__).resolve().with_name("classifier.safetensors")
SHIPPED_SHA256 = "b4e54a09f55917aeb8b3e218c9bf55b1e35a510782d45ad243945c7d351787e8"

# The last 10,000 training images are never shown to the classifier: they are the real-data
# floor of every metric, so that the floor is data the judge never trained on.
HELD_OUT = 10000

_DEFAULT_WIDTHS = (32, 64)
_DEFAULT_EMBED = 128
_DEFAULT_EPOCHS = 6


def _conv(cin: int, cout: int) -> list[nn.Module]:
    # No conv bias: the batch norm that follows has its own shift.
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MNISTClassifier(nn.Module):
    """conv c1 - conv c1 - pool - conv c2 - conv c2 - pool - dense to a `embed_dim` embedding
    (batch norm, ReLU) - dropout - linear to 10 logits.

    Input: float32 (N, 1, 28, 28) in [0, 1] (see :func:`prepare`). The embedding used as the
    feature space is the ReLU output of the dense layer, i.e. exactly what the logits read.
    """

    def __init__(self, widths: tuple[int, int] = _DEFAULT_WIDTHS, embed_dim: int = _DEFAULT_EMBED,
                 dropout: float = 0.3) -> None:
        super().__init__()
        c1, c2 = widths
        self.widths = (int(c1), int(c2))
        self.embed_dim = int(embed_dim)
        self.features = nn.Sequential(
            *_conv(1, c1), *_conv(c1, c1), nn.MaxPool2d(2),
            *_conv(c1, c2), *_conv(c2, c2), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.embedding = nn.Sequential(
            nn.Linear(c2 * 7 * 7, embed_dim, bias=False), nn.BatchNorm1d(embed_dim), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, 10)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) embedding and (N, 10) logits in one pass; x is (N, 1, 28, 28) in [0, 1]."""
        # Centring the input helps the first layer; done here so callers keep the [0, 1] convention.
        emb = self.embedding(self.features(x - 0.5))
        return emb, self.head(self.dropout(emb))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) float features: the embedding layer's activations."""
        return self.embedding(self.features(x - 0.5))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.train(was_training)

    def features_and_logits_all(self, images: torch.Tensor, batch: int = 1000,
                                value_range: str = "sigmoid", progress: str | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (N, D) and logits (N, 10) of any number of images, on the CPU, in eval
        mode. `images` is anything :func:`prepare` accepts; `progress`: a progress bar with
        this description."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        embs = [torch.empty(0, self.embed_dim)]
        logits = [torch.empty(0, 10)]
        starts = range(0, len(images), batch)
        with self._inference():
            # disable=None: a bar on a terminal only, not in logs
            for start in tqdm(starts, desc=progress, disable=True if progress is None else None, unit="batch",
                              dynamic_ncols=True, leave=False):
                # Scaling per batch keeps a float copy of a large uint8 set out of memory.
                x = prepare(images[start:start + batch], value_range).to(self.device)
                e, z = self.features_and_logits(x)
                embs.append(e.float().cpu())
                logits.append(z.float().cpu())
        return torch.cat(embs), torch.cat(logits)

    def embed_all(self, images: torch.Tensor, batch: int = 1000,
                  value_range: str = "sigmoid") -> torch.Tensor:
        """Embeddings (N, D) on the CPU, in eval mode; `images` as for :func:`prepare`."""
        return self.features_and_logits_all(images, batch, value_range)[0]

    def logits_all(self, images: torch.Tensor, batch: int = 1000,
                   value_range: str = "sigmoid") -> torch.Tensor:
        """Logits (N, 10) on the CPU, in eval mode; `images` as for :func:`prepare`."""
        return self.features_and_logits_all(images, batch, value_range)[1]

    def predict_all(self, images: torch.Tensor, batch: int = 1000,
                    value_range: str = "sigmoid") -> torch.Tensor:
        """Predicted digits, int64 (N,), on the CPU; `images` as for :func:`prepare`."""
        return self.logits_all(images, batch, value_range).argmax(1)


def prepare(images: torch.Tensor, value_range: str = "sigmoid") -> torch.Tensor:
    """Images as the classifier wants them: float32 (N, 1, 28, 28) in [0, 1].

    Accepts uint8 pixels (0-255) or float images, shaped (N, 28, 28) or (N, 1, 28, 28). Float
    images are taken to be in [0, 1] (``value_range="sigmoid"``) or, for tanh generators, in
    [-1, 1] (``value_range="tanh"``). Float values clearly outside the stated range raise
    ValueError, since that almost always means the wrong `value_range`."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"prepare wants a torch.Tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be (N, 28, 28) or (N, 1, 28, 28), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got {images.dtype}")
    if value_range not in ("sigmoid", "tanh"):
        raise ValueError(f"value_range must be 'sigmoid' ([0, 1]) or 'tanh' ([-1, 1]), got {value_range!r}")
    # A diverged generator yields NaN; as zero it is a black pixel rather than poisoned features.
    x = torch.nan_to_num(images.to(torch.float32), nan=0.0)
    if value_range == "tanh":
        x = (x + 1.0) * 0.5
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -0.01 or hi > 1.01:
            hint = " (looks like [-1, 1] data: pass value_range='tanh')" if lo >= -1.01 else ""
            raise ValueError(f"float images must lie in [0, 1] for value_range={value_range!r}, "
                             f"got values in [{lo:.3g}, {hi:.3g}]{hint}")
    return x.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------
# Loading


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path} is not a readable safetensors file ({first}): give the .safetensors "
                        "file that `mnistgan classifier train` wrote") from None
    return tensors, metadata


def _int_meta(metadata: dict[str, str], key: str, path: Path, lo: int, hi: int) -> int:
    try:
        value = int(metadata[key])
    except (KeyError, ValueError):
        value = -1
    if not lo <= value <= hi:
        raise UserError(f"{path} has no valid {key!r} in its metadata: it is not an mnistgan classifier "
                        "file; use the one `mnistgan classifier train` wrote")
    return value


def _build(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> MNISTClassifier:
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not an mnistgan classifier file (format {metadata.get('format')!r}): "
                        "use the one `mnistgan classifier train` wrote")
    if metadata.get("arch_version") != ARCH_VERSION:
        raise UserError(f"{path} holds classifier architecture {metadata.get('arch_version')!r}, this "
                        f"mnistgan reads version {ARCH_VERSION}: retrain it with `mnistgan classifier train`")
    # Bounds keep a hostile header from making us allocate an absurd network.
    widths = (_int_meta(metadata, "width1", path, 1, 1024), _int_meta(metadata, "width2", path, 1, 1024))
    embed_dim = _int_meta(metadata, "embed_dim", path, 1, 4096)
    model = MNISTClassifier(widths, embed_dim)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or extra or wrong:
        what = (f"tensor {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, expected "
                f"{tuple(own[wrong[0]].shape)}" if wrong else
                f"missing {missing[0]}" if missing else f"unexpected tensor {extra[0]}")
        raise UserError(f"{path} does not fit the classifier ({what}): use the file "
                        "`mnistgan classifier train` wrote")
    state: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if own[key].is_floating_point():
            if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
                raise UserError(f"{path} has non-finite or non-float values in {key}: the file is "
                                "damaged; retrain with `mnistgan classifier train`")
            # Shipped weights are stored as float16 to halve the file; compute stays float32.
            value = value.to(own[key].dtype)
        state[key] = value
    model.load_state_dict(state)
    model.eval()
    # NHWC weights put every convolution on oneDNN's channels-last path: 1.65x the images a
    # second on this CPU, features equal to a few parts in 10^6 (BENCHMARKS.md, evaluate).
    model.to(memory_format=torch.channels_last)
    # Evaluation only needs gradients with respect to inputs, if any; frozen weights also make
    # the shared cached model safe from accidental optimiser steps.
    model.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=4)
def _load_shipped(device: str) -> MNISTClassifier:
    if not SHIPPED_PATH.is_file():
        raise UserError(f"the shipped classifier weights are missing ({SHIPPED_PATH}): reinstall mnistgan")
    if sha256_file(SHIPPED_PATH) != SHIPPED_SHA256:
        raise UserError("the shipped classifier weights are damaged (sha256 mismatch): reinstall mnistgan")
    tensors, metadata = _read(SHIPPED_PATH)
    return _build(tensors, metadata, SHIPPED_PATH).to(device)


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu",
                    expected_sha256: str | None = None) -> MNISTClassifier:
    """The classifier in eval mode with frozen weights.

    Without `path`: the weights shipped with mnistgan, SHA-256 checked against
    ``SHIPPED_SHA256``; that model is cached per device and shared, so do not modify it.
    With `path`: a file written by :func:`train_classifier`, checked to be a safetensors file
    with the expected tensors, and against `expected_sha256` when given. Problems raise
    UserError."""
    if path is None:
        if expected_sha256 is not None and expected_sha256.lower() != SHIPPED_SHA256:
            raise UserError("expected_sha256 does not match the shipped classifier weights: pass the "
                            "path of the weights file it belongs to")
        return _load_shipped(str(torch.device(device)))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classifier weights {path} do not exist: give the .safetensors file that "
                        "`mnistgan classifier train` wrote")
    if expected_sha256 is not None:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror or exc}): check the path") from None
        if digest != expected_sha256.lower():
            raise UserError(f"{path} is damaged or not the expected file (sha256 {digest[:16]}..., expected "
                            f"{expected_sha256[:16]}...): copy or retrain it again")
    tensors, metadata = _read(path)
    return _build(tensors, metadata, path).to(device)


def classifier_path(dataset: str = "mnist") -> Path:
    """Where the reference classifier of `dataset` lives: MNIST's ships in the package, any
    other dataset's is trained by the user into the cache."""
    from ..data import default_cache_dir

    if dataset == "mnist":
        return SHIPPED_PATH
    return default_cache_dir() / "classifier" / f"{dataset}.safetensors"


@functools.lru_cache(maxsize=4)
def _load_trained(path: Path, digest: str) -> MNISTClassifier:
    return load_classifier(path, expected_sha256=digest)


def reference_classifier(dataset: str = "mnist") -> tuple[MNISTClassifier, str]:
    """The classifier whose features score samples of `dataset`, and the SHA-256 of its file.
    A dataset without one is refused in one line: scoring Fashion-MNIST against MNIST's
    classifier would mean nothing."""
    if dataset == "mnist":
        return load_classifier(), SHIPPED_SHA256
    path = classifier_path(dataset)
    if not path.is_file():
        raise UserError(f"no reference classifier for {dataset} on this machine: train one with "
                        f"mnistgan classifier train --dataset {dataset} (it writes {path})")
    if read_metadata(path).get("dataset", "mnist") != dataset:
        raise UserError(f"{path} was not trained on {dataset}: train it again with "
                        f"mnistgan classifier train --dataset {dataset}")
    digest = sha256_file(path)
    return _load_trained(path, digest), digest


def read_metadata(path: str | Path | None = None) -> dict[str, str]:
    """The metadata stored with a classifier weights file (the shipped one by default):
    architecture, training settings and measured test accuracy."""
    return _read(Path(path) if path is not None else SHIPPED_PATH)[1]


# ---------------------------------------------------------------------------------------
# Training


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: float = 2.0,
            max_rotate: float = 10.0, max_scale: float = 0.1, max_shear: float = 0.1) -> torch.Tensor:
    """Light random affine jitter per image (shift up to `max_shift` pixels, rotation up to
    `max_rotate` degrees, scale and shear up to the given fractions), on (N, 1, 28, 28)
    tensors in [0, 1]; empty space is filled with the black background."""
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=generator.device) * 2 - 1).to(x.device) * scale

    angle = uniform(math.radians(max_rotate))
    scale = 1.0 + uniform(max_scale)
    shear = uniform(max_shear)
    # affine_grid's coordinates span [-1, 1] over 28 pixels, so one pixel is 2 / 28.
    tx, ty = uniform(max_shift * 2 / 28), uniform(max_shift * 2 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear * cos, tx], 1),
        torch.stack([sin, cos + shear * sin, ty], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _half_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in model.state_dict().items()}


def _recalibrate_batch_norm(model: MNISTClassifier, images: torch.Tensor, limit: int = 10_000,
                            batch: int = 500) -> None:
    """Recompute the batch-norm running statistics as an exact average over un-augmented training
    images with the final weights. The running averages kept during training trail weights that
    moved under a high learning rate and were taken on augmented images; test images are not
    augmented."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches seen
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, min(limit, len(images)), batch):
                model.embed(prepare(images[start:start + batch]))
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)


def _accuracy(model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model.predict_all(images) == labels).float().mean())


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(out: str | Path, data_dir: str | Path | None = None, epochs: int = _DEFAULT_EPOCHS,
                     dataset: str = "mnist",
                     seed: int = 0, progress: bool = True, *, batch_size: int = 128, lr: float = 3e-3,
                     max_steps: int | None = None, subset: int | None = None,
                     test_subset: int | None = None, threads: int | None = 2,
                     device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train the reference classifier on `dataset`'s training set less its last HELD_OUT images
    (the metrics' real-data floor) and write its weights to `out`
    (safetensors, float16, written atomically). Returns test accuracy (measured with the
    float16 weights as written), seconds taken, and the mean loss over the first and last
    steps.

    Light augmentation (random shifts up to 2 px, rotation, scale, shear) per batch; AdamW
    with a one-cycle schedule. `max_steps`, `subset` (first N training images) and
    `test_subset` (first N test images) exist for quick smoke runs; `threads` sets torch's
    CPU threads for the run (restored afterwards), None leaves them alone."""
    # Imported here so that loading the shipped weights does not pull in the data module.
    from ..data import load_split

    if epochs < 1:
        raise UserError(f"epochs must be at least 1, got {epochs}: use e.g. --epochs {_DEFAULT_EPOCHS}")
    if batch_size < 2:
        raise UserError(f"batch size must be at least 2 (batch norm), got {batch_size}")
    out = Path(out)
    start = time.perf_counter()
    device = torch.device(device)
    with _threads(threads):
        train_x, train_y = load_split(dataset, "train", data_dir)
        if len(train_x) <= HELD_OUT:
            raise UserError(f"the {dataset} training set has {len(train_x)} images: the classifier "
                            f"needs more than the {HELD_OUT} held out as the metrics' floor")
        train_x, train_y = train_x[:-HELD_OUT], train_y[:-HELD_OUT]
        test_x, test_y = load_split(dataset, "test", data_dir)
        if subset is not None:
            train_x, train_y = train_x[:subset], train_y[:subset]
        if test_subset is not None:
            test_x, test_y = test_x[:test_subset], test_y[:test_subset]
        n = len(train_x)
        if n < batch_size:
            raise UserError(f"only {n} training images for batch size {batch_size}: use more images")
        per_epoch = n // batch_size
        steps = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = MNISTClassifier().to(device)
        train_x, train_y = train_x.unsqueeze(1).to(device), train_y.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
        losses: list[float] = []
        bar = tqdm(total=steps, disable=not progress, unit="step", desc="classifier", dynamic_ncols=True)
        step = 0
        model.train()
        while step < steps:
            order = torch.randperm(n, generator=gen)
            for i in range(per_epoch):
                if step >= steps:
                    break
                idx = order[i * batch_size:(i + 1) * batch_size].to(device)
                x = augment(train_x[idx].to(torch.float32) / 255.0, gen)
                loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                step += 1
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
        bar.close()
        _recalibrate_batch_norm(model, train_x)

        # Measured on the float16 weights actually written, not the float32 ones in memory.
        state = _half_state(model)
        metadata = {"format": FORMAT, "arch_version": ARCH_VERSION, "width1": str(model.widths[0]),
                    "width2": str(model.widths[1]), "embed_dim": str(model.embed_dim),
                    "epochs": str(epochs), "steps": str(steps), "seed": str(seed),
                    "batch_size": str(batch_size), "lr": repr(lr), "train_images": str(n),
                    "dataset": dataset,
                    "torch": torch.__version__}
        check = _build(state, metadata, out).to(device)
        accuracy = _accuracy(check, test_x, test_y)
        metadata["test_accuracy"] = f"{accuracy:.4f}"
        metadata["test_images"] = str(len(test_x))
        atomic_write(out, safetensors_bytes(state, metadata=metadata))
    k = max(1, min(20, len(losses) // 4))
    seconds = time.perf_counter() - start
    if progress:
        tqdm.write(f"test accuracy {accuracy:.2%} on {len(test_x)} images; wrote {out} in {seconds:.0f} s")
    return {"test_accuracy": accuracy, "seconds": seconds, "steps": steps, "path": str(out),
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}
