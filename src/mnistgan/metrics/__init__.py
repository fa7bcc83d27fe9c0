"""Sample-quality metrics, computed one way for the CLI, for training and for the benchmarks.

Every metric works in the reference classifier's space (TF-GAN's "MNIST score" and "MNIST
Fréchet distance" practice): its embedding for distances, its class probabilities for the
class statistics. `METRICS` is the registry; `evaluate` computes all of them for generated
images and, as the floor, for held-out real images against the same reference.

The reference for a run trained on a digit subset is that subset: the MNIST test images of
those digits for FID/KID/precision/recall, and the training images of those digits for the
memorisation check. The last sixth of those training images is held out: never in the
memorisation bank, it supplies both the memorisation threshold and the real-data floor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..atomic import atomic_write
from ..data import default_cache_dir
from ..errors import UserError
from . import distances
from .classifier import SHIPPED_SHA256, load_classifier

__all__ = [
    "METRICS",
    "FeatureSet",
    "Metric",
    "Reference",
    "compute",
    "distances",
    "evaluate",
    "evaluate_images",
    "format_table",
    "mode_dropping",
    "reference",
    "score",
]

K_NN = 3  # neighbours for the precision/recall manifolds, as in Kynkäänniemi et al.
RARE = 0.25  # a digit is rare below this fraction of its expected share
MIN_IMAGES = 10  # the classifier score's 10 splits need one image each
# Bumped whenever what the reference cache holds changes, so older files are never read.
_CACHE_FORMAT = "v2"


@dataclass(frozen=True)
class FeatureSet:
    features: torch.Tensor  # (N, D) classifier embedding
    probs: torch.Tensor  # (N, 10) class probabilities

    @classmethod
    def of(cls, images_u8: torch.Tensor) -> FeatureSet:
        feats, logits = load_classifier().features_and_logits_all(images_u8)
        return cls(feats, logits.softmax(1))

    def __len__(self) -> int:
        return len(self.features)

    def head(self, n: int) -> FeatureSet:
        return FeatureSet(self.features[:n], self.probs[:n])


@dataclass(frozen=True)
class Reference:
    digits: tuple[int, ...]  # the classes a sample set should cover
    test: FeatureSet  # what samples are compared with
    test_radii: torch.Tensor  # k-NN radii of the test features: the real manifold
    train_bank: torch.Tensor  # training-image features, for memorisation
    heldout: torch.Tensor  # uint8 training images not in the bank: the real-data floor
    heldout_set: FeatureSet  # their features, so the floor costs no embedding
    memorised_below: float  # nearest-training-image distance of the closest 1 % of held-out


def reference(digits: Sequence[int] = (), data_dir: str | Path | None = None) -> Reference:
    """The reference for samples of `digits` (all ten when empty), cached per process."""
    return _reference(*_key(digits, data_dir))


def _key(digits: Sequence[int], data_dir: str | Path | None) -> tuple[tuple[int, ...], str | None]:
    return tuple(sorted(set(digits))) or tuple(range(10)), str(data_dir) if data_dir is not None else None


@lru_cache(maxsize=4)
def _reference(digits: tuple[int, ...], data_dir: str | None) -> Reference:
    from ..data import load_split

    test_x, test_y = load_split("mnist", "test", data_dir)
    train_x, train_y = load_split("mnist", "train", data_dir)
    test_x = test_x[torch.isin(test_y, torch.tensor(digits))]
    train_x = train_x[torch.isin(train_y, torch.tensor(digits))]
    # The last sixth of the training images (10,000 of all 60,000) are held out as the floor.
    n_held = len(train_x) // 6
    heldout = train_x[-n_held:]
    sizes = {"test_features": len(test_x), "test_probs": len(test_x), "test_radii": len(test_x),
             "bank": len(train_x) - n_held, "heldout_features": n_held, "heldout_probs": n_held,
             "threshold": 1}
    # Embedding ~70,000 images takes a minute or two on a laptop CPU: the features are cached
    # on disk, keyed by the classifier's weights (the MNIST files are checksummed on every load).
    cache = default_cache_dir() / "reference" / (
        f"{SHIPPED_SHA256[:16]}-{_CACHE_FORMAT}-{''.join(map(str, digits))}.safetensors")
    try:
        saved = load_file(cache)
        # A file that does not fit these images (hand-copied, or from an edited split) is rebuilt.
        if any(k not in saved or saved[k].ndim == 0 or len(saved[k]) != n for k, n in sizes.items()):
            raise ValueError("stale reference cache")
    except (OSError, SafetensorError, ValueError):
        test = FeatureSet.of(test_x)
        held = FeatureSet.of(heldout)
        bank = FeatureSet.of(train_x[:-n_held]).features
        saved = {
            "test_features": test.features, "test_probs": test.probs,
            "test_radii": distances.knn_radii(test.features, K_NN), "bank": bank,
            "heldout_features": held.features, "heldout_probs": held.probs,
            "threshold": torch.tensor([distances.memorisation_threshold(held.features, bank)]),
        }
        with contextlib.suppress(OSError):  # a read-only cache costs only the time, next run
            atomic_write(cache, save(saved))
    return Reference(digits, FeatureSet(saved["test_features"], saved["test_probs"]),
                     saved["test_radii"], saved["bank"], heldout,
                     FeatureSet(saved["heldout_features"], saved["heldout_probs"]),
                     float(saved["threshold"].reshape(-1)[0]))


# ---------------------------------------------------------------------------------------
# The registry: each metric maps the generated FeatureSet and the Reference to named numbers.


def mode_dropping(counts: torch.Tensor, digits: Sequence[int]) -> tuple[list[int], list[int]]:
    """(missing, rare) among `digits`: rare means present but under a quarter of the expected
    share 1 / len(digits), shares taken over all samples."""
    share = counts.double() / counts.sum().clamp_min(1)
    expected = 1 / len(digits)
    missing = [d for d in digits if counts[d] == 0]
    rare = [d for d in digits if counts[d] > 0 and share[d] < RARE * expected]
    return missing, rare


def _classes(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    counts = distances.class_histogram(gen.probs)
    missing, rare = mode_dropping(counts, ref.digits)
    return {"class_entropy": distances.entropy(counts[list(ref.digits)]),
            "missing_digits": float(len(missing)), "rare_digits": float(len(rare))}


def _fid(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    return {"fid": distances.fid(gen.features, ref.test.features)}


def _kid(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    mean, std = distances.kid(gen.features, ref.test.features)
    return {"kid": mean, "kid_std": std}


def _pr(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    precision, recall = distances.precision_recall(ref.test.features, gen.features, K_NN,
                                                   real_radii=ref.test_radii)
    return {"precision": precision, "recall": recall}


def _cs(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    mean, std = distances.classifier_score(gen.probs)
    return {"classifier_score": mean, "classifier_score_std": std}


def _memorisation(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    return {"memorised": distances.memorised_share(gen.features, ref.train_bank, ref.memorised_below)}


Metric = Callable[[FeatureSet, Reference], dict[str, float]]
METRICS: dict[str, Metric] = {
    "fid": _fid,
    "kid": _kid,
    "precision_recall": _pr,
    "classifier_score": _cs,
    "classes": _classes,
    "memorisation": _memorisation,
}


def score(gen: FeatureSet, ref: Reference, names: Sequence[str] | None = None) -> dict[str, float]:
    """The named metrics (all by default) of already-embedded samples against `ref`."""
    unknown = [n for n in names or () if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}: use some of {', '.join(METRICS)}")
    if len(gen) < MIN_IMAGES:
        raise UserError(f"{len(gen)} images are too few to evaluate: give at least {MIN_IMAGES} "
                        "(thousands for stable numbers)")
    out: dict[str, float] = {}
    for name in names or METRICS:
        out |= METRICS[name](gen, ref)
    return out


def compute(images_u8: torch.Tensor, ref: Reference,
            names: Sequence[str] | None = None) -> dict[str, float]:
    """The named metrics (all by default) of uint8 images (N, 28, 28) against `ref`."""
    return score(FeatureSet.of(images_u8), ref, names)


def evaluate_images(images_u8: torch.Tensor, digits: Sequence[int] = (),
                    data_dir: str | Path | None = None,
                    names: Sequence[str] | None = None) -> dict[str, float]:
    """Metrics of generated images only (what training logs)."""
    return compute(images_u8, reference(digits, data_dir), names)


@lru_cache(maxsize=8)
def _floor(digits: tuple[int, ...], data_dir: str | None, n: int) -> dict[str, float]:
    ref = _reference(digits, data_dir)
    return score(ref.heldout_set.head(n), ref)


def evaluate(images_u8: torch.Tensor, digits: Sequence[int] = (),
             data_dir: str | Path | None = None) -> dict[str, Any]:
    """Every metric for the generated images and, as the floor, for as many held-out real
    images (at most all of them, 10,000 for all ten digits), plus the class histogram of the
    generated images and the digits they miss or rarely show."""
    key = _key(digits, data_dir)
    ref = _reference(*key)
    gen = FeatureSet.of(images_u8)
    # FID and KID depend on the sample count, so the floor uses as many real images.
    n_real = min(len(gen), len(ref.heldout))
    counts = distances.class_histogram(gen.probs)
    missing, rare = mode_dropping(counts, ref.digits)
    collapse = "; ".join(f"{what}: {', '.join(map(str, ds))}"
                         for what, ds in (("missing", missing), ("rare", rare)) if ds)
    return {
        "samples": len(gen),
        "real_samples": n_real,
        "digits": list(ref.digits),
        "generated": score(gen, ref),
        "real": dict(_floor(*key, n_real)),  # a copy: callers may add to it
        "histogram": counts.tolist(),
        "missing": missing,
        "rare": rare,
        "mode_collapse": collapse or "none",
    }


# ---------------------------------------------------------------------------------------
# The table


ROWS = [
    ("FID (classifier features) ↓", "fid", None),
    ("KID ↓", "kid", "kid_std"),
    ("classifier score ↑", "classifier_score", "classifier_score_std"),
    ("precision ↑", "precision", None),
    ("recall ↑", "recall", None),
    ("class entropy (nats) ↑", "class_entropy", None),
    ("missing digits ↓", "missing_digits", None),
    ("rare digits ↓", "rare_digits", None),
    ("memorised share ↓", "memorised", None),
]


def format_table(result: dict[str, Any]) -> str:
    """One table: metric | generated | real (floor); then the class histogram and the digits
    missing or rare among the generated images."""
    def cell(values: dict[str, float], key: str, std: str | None) -> str:
        text = f"{values[key]:.4f}" if abs(values[key]) < 100 else f"{values[key]:.1f}"
        return f"{text} ± {values[std]:.4f}" if std else text

    gen, real = result["generated"], result["real"]
    head = (f"{'metric':30s} {'generated (' + str(result['samples']) + ')':>24s} "
            f"{'real floor (' + str(result['real_samples']) + ')':>24s}")
    lines = [head, "-" * len(head)]
    for label, key, std in ROWS:
        lines.append(f"{label:30s} {cell(gen, key, std):>24s} {cell(real, key, std):>24s}")
    histogram, digits = result["histogram"], result["digits"]
    total = max(sum(histogram), 1)
    shares = [f"{d}:{100 * histogram[d] / total:.1f}%" for d in digits]
    stray = sum(histogram) - sum(histogram[d] for d in digits)
    if stray:  # samples of digits outside a subset run's digits
        shares.append(f"other:{100 * stray / total:.1f}%")
    lines += ["", "generated digits: " + "  ".join(shares)]
    if result["missing"] or result["rare"]:
        lines.append(f"mode dropping: {result['mode_collapse']} (rare: under "
                     f"{100 * RARE / len(digits):.1f}% of samples)")
    else:
        lines.append("mode dropping: none")
    return "\n".join(lines)
