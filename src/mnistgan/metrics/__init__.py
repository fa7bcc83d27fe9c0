"""Sample-quality metrics, computed one way for the CLI, for training and for the benchmarks.

Every metric works in the reference classifier's space (TF-GAN's "MNIST score" and "MNIST
Fréchet distance" practice): its embedding for distances, its class probabilities for the
class statistics. `METRICS` is the registry; `evaluate` computes all of them for generated
images and, as the floor, for held-out real images against the same reference.

The reference for a run trained on a digit subset is that subset: the MNIST test images of
those digits for FID/KID/precision/recall, and the training images of those digits for the
memorisation check.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..atomic import atomic_write
from ..data import default_cache_dir
from ..errors import UserError
from . import scores
from .classifier import HELD_OUT, MNISTClassifier, reference_classifier


@dataclass(frozen=True)
class FeatureSet:
    features: torch.Tensor  # (N, D) classifier embedding
    probs: torch.Tensor  # (N, 10) class probabilities
    # Each image's digit: the one a conditional generator was asked for, or the true one of a
    # real image; None: the classifier's reading stands in for it.
    labels: torch.Tensor | None = None

    @classmethod
    def of(cls, images_u8: torch.Tensor, classifier: MNISTClassifier,
           labels: torch.Tensor | None = None) -> FeatureSet:
        feats, logits = classifier.features_and_logits_all(images_u8)
        return cls(feats, logits.softmax(1), None if labels is None else labels.cpu())

    def digits(self) -> torch.Tensor:
        return self.probs.argmax(1) if self.labels is None else self.labels

    @cached_property
    def knn_radii(self) -> torch.Tensor:
        """Each point's k-NN radius in its own set: for the reference's test set, computed once
        a process and reused by every evaluation (training's included) and by the floor."""
        return scores.knn_radius(self.features.float())


@dataclass(frozen=True)
class Reference:
    dataset: str  # whose test set samples are compared with, in whose classifier's features
    classifier: MNISTClassifier
    digits: tuple[int, ...]  # the classes a sample set should cover
    test: FeatureSet  # what samples are compared with
    train_bank: torch.Tensor  # training-image features, for memorisation
    heldout: torch.Tensor  # uint8 training images not in the bank: the real-data floor
    heldout_labels: torch.Tensor  # their digits
    memorised_below: float  # nearest-training-image distance of the closest 1 % of real


def reference(digits: Sequence[int] = (), data_dir: str | Path | None = None,
              dataset: str = "mnist") -> Reference:
    """The reference for samples of `digits` (all ten when empty) of `dataset`."""
    return _reference(tuple(sorted(digits)) or tuple(range(10)),
                      str(data_dir) if data_dir is not None else None, dataset)


@lru_cache(maxsize=4)
def _reference(digits: tuple[int, ...], data_dir: str | None, dataset: str) -> Reference:
    from ..data import load_split

    classifier, classifier_sha256 = reference_classifier(dataset)
    test_x, test_y = load_split(dataset, "test", data_dir)
    train_x, train_y = load_split(dataset, "train", data_dir)
    in_digits = torch.isin(test_y, torch.tensor(digits))
    test_x, test_y = test_x[in_digits], test_y[in_digits]
    # The last HELD_OUT training images, never seen by the classifier, are the floor; the
    # rest are the bank that samples are checked against for memorisation.
    keep, split = torch.isin(train_y, torch.tensor(digits)), len(train_x) - HELD_OUT
    bank_x = train_x[:split][keep[:split]]
    heldout, heldout_y = train_x[split:][keep[split:]], train_y[split:][keep[split:]]
    # Embedding ~70,000 images takes minutes on a laptop CPU: the features are cached on disk,
    # keyed by the classifier's weights (the data files are checksummed on every load).
    cache = default_cache_dir() / "reference" / (
        f"{classifier_sha256[:16]}-{dataset}-h{HELD_OUT}-{''.join(map(str, digits))}.safetensors")
    try:
        saved = load_file(cache)
    except (OSError, SafetensorError):
        # One pass over test and training images: a minute or two, once per machine.
        everything = torch.cat([test_x, bank_x, heldout])
        print(f"mnistgan: embedding {len(everything)} reference images, once on this machine "
              f"(cached in {cache.parent})", file=sys.stderr)
        feats, logits = classifier.features_and_logits_all(everything, progress="reference set")
        n_test, n_bank = len(test_x), len(bank_x)
        bank = feats[n_test:n_test + n_bank]
        threshold = torch.tensor(scores.memorisation_threshold(feats[n_test + n_bank:], bank))
        saved = {"test_features": feats[:n_test], "test_probs": logits[:n_test].softmax(1),
                 "bank": bank, "threshold": threshold}
        with contextlib.suppress(UserError):  # a read-only cache costs only the time, next run
            atomic_write(cache, save(saved))
    test = FeatureSet(saved["test_features"], saved["test_probs"], test_y)
    return Reference(dataset, classifier, digits, test, saved["bank"], heldout, heldout_y,
                     float(saved["threshold"]))


def _classes(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    counts = scores.class_histogram(gen.probs)
    share = counts.double() / counts.sum()
    expected = 1 / len(ref.digits)
    wanted = list(ref.digits)
    return {
        "class_entropy": scores.entropy(counts[wanted]),
        "missing_digits": float((counts[wanted] == 0).sum()),
        "rare_digits": float(((share[wanted] < 0.25 * expected) & (counts[wanted] > 0)).sum()),
    }


def _kid(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    mean, std = scores.kid(gen.features, ref.test.features)
    return {"kid": mean, "kid_std": std}


def _pr(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    precision, recall = scores.precision_recall(ref.test.features, gen.features,
                                                 real_radii=ref.test.knn_radii)
    return {"precision": precision, "recall": recall}


def _cs(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    mean, std = scores.classifier_score(gen.probs)
    return {"classifier_score": mean, "classifier_score_std": std}


def _per_digit(gen: FeatureSet, ref: Reference) -> dict[str, float]:
    """FID and recall of each digit's samples against that digit's test images, so that a
    model that collapses inside one class is caught; the worst digit by FID. A digit with
    fewer than MIN_SAMPLES samples is left out (it counts as missing or rare)."""
    out: dict[str, float] = {}
    gen_digits, ref_digits = gen.digits(), ref.test.digits()
    for d in ref.digits:
        mine, theirs = gen.features[gen_digits == d], ref.test.features[ref_digits == d]
        if len(mine) >= MIN_SAMPLES:
            out[f"fid_{d}"] = scores.fid(mine, theirs)
            out[f"recall_{d}"] = scores.recall(theirs, mine)
    measured = [d for d in ref.digits if f"fid_{d}" in out]
    if measured:
        worst = max(measured, key=lambda d: out[f"fid_{d}"])
        out |= {"worst_digit": float(worst), "worst_digit_fid": out[f"fid_{worst}"]}
    return out


MIN_SAMPLES = 10
Metric = Callable[[FeatureSet, Reference], dict[str, float]]
METRICS: dict[str, Metric] = {
    "fid": lambda gen, ref: {"fid": scores.fid(gen.features, ref.test.features)},
    "kid": _kid,
    "precision_recall": _pr,
    "classifier_score": _cs,
    "classes": _classes,
    "memorisation": lambda gen, ref: {
        "memorised": scores.memorised_share(gen.features, ref.train_bank, ref.memorised_below)},
    "per_digit": _per_digit,
}


def check_count(images_u8: torch.Tensor) -> None:
    """Refuse too few images before any work (on a new machine, the reference takes minutes)."""
    if len(images_u8) < MIN_SAMPLES:
        raise UserError(f"{len(images_u8)} images are too few to measure (k-NN and covariance "
                        f"statistics need at least {MIN_SAMPLES}): use e.g. --n 10000")


def compute(images_u8: torch.Tensor, ref: Reference, names: Sequence[str] | None = None,
            labels: torch.Tensor | None = None) -> dict[str, float]:
    """The named metrics (all by default) of uint8 images (N, 28, 28) against `ref`; with the
    digit each image was asked to be (`labels`), also the conditional accuracy: the share the
    reference classifier reads as that digit."""
    check_count(images_u8)
    gen = FeatureSet.of(images_u8, ref.classifier, labels)
    out: dict[str, float] = {}
    for name in names or METRICS:
        out |= METRICS[name](gen, ref)
    if labels is not None:
        out["conditional_accuracy"] = (gen.probs.argmax(1) == gen.labels).double().mean().item()
    return out


def evaluate_images(images_u8: torch.Tensor, digits: Sequence[int] = (),
                    data_dir: str | Path | None = None, names: Sequence[str] | None = None,
                    labels: torch.Tensor | None = None, dataset: str = "mnist") -> dict[str, float]:
    """Metrics of generated images only (what training logs)."""
    check_count(images_u8)
    return compute(images_u8, reference(digits, data_dir, dataset), names, labels)


def evaluate(images_u8: torch.Tensor, digits: Sequence[int] = (),
             data_dir: str | Path | None = None, labels: torch.Tensor | None = None,
             inception: bool = False, dataset: str = "mnist",
             more_draws: Sequence[tuple[torch.Tensor, torch.Tensor | None]] = ()) -> dict:
    """Every metric for the generated images and, as the floor, for as many held-out real
    images (at most all of them), plus the class histogram of the generated images. `labels`:
    the digits a conditional generator was asked for (the floor then uses the real labels).
    Everything is measured against `dataset` (its test set, its classifier); `inception`: also
    the papers' Inception-FID (optional extra).

    `more_draws`: further (images, labels) sets drawn from the same generator with other
    seeds. Each score is then the mean over all the draws, `generated_sd` holds its standard
    deviation across them (the scores' sampling noise) and the histogram is their sum."""
    draws = [(images_u8, labels), *more_draws]
    for images, _ in draws:
        check_count(images)
    ref = reference(digits, data_dir, dataset)
    n_real = min(len(images_u8), len(ref.heldout))
    counts = sum(scores.class_histogram(FeatureSet.of(images, ref.classifier).probs)
                 for images, _ in draws)
    per_draw = [compute(images, ref, labels=y) for images, y in draws]
    real_labels = ref.heldout_labels[:n_real] if labels is not None else None
    real = compute(ref.heldout[:n_real], ref, labels=real_labels)
    if inception:
        from .inception import inception_fid

        for (images, _), generated in zip(draws, per_draw, strict=True):
            generated["inception_fid"], real["inception_fid"] = inception_fid(
                images, ref.digits, n_real, dataset, data_dir)
    result = {
        "samples": len(images_u8),
        "real_samples": n_real,
        "digits": list(ref.digits),
        "generated": per_draw[0],
        "real": real,
        "histogram": counts.tolist(),
    }
    if more_draws:
        result |= {"draws": len(draws)} | _mean_and_sd(per_draw)
    return result


def _mean_and_sd(per_draw: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each score's mean and standard deviation over draws; the worst digit is the one whose
    mean FID is highest."""
    keys = [k for k in per_draw[0] if k not in ("worst_digit", "worst_digit_fid")
            and all(k in draw for draw in per_draw)]
    values = torch.tensor([[draw[k] for k in keys] for draw in per_draw], dtype=torch.float64)
    mean = dict(zip(keys, values.mean(0).tolist(), strict=True))
    sd = dict(zip(keys, values.std(0).tolist(), strict=True))
    measured = [k for k in keys if k.startswith("fid_")]
    if measured:
        worst = max(measured, key=mean.__getitem__)
        mean |= {"worst_digit": float(worst[len("fid_"):]), "worst_digit_fid": mean[worst]}
    return {"generated": mean, "generated_sd": sd}


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


# Shown when measured: the papers' score (evaluate --inception) and a conditional model's.
OPTIONAL_ROWS = [("Inception-FID ↓", "inception_fid", None),
                 ("conditional accuracy ↑", "conditional_accuracy", None)]


def format_table(result: dict) -> str:
    """One table: metric | generated | real (floor); then the class histogram."""
    def cell(values: dict[str, float], key: str, std: str | None,
             spread: dict[str, float] | None = None) -> str:
        text = f"{values[key]:.4f}" if abs(values[key]) < 100 else f"{values[key]:.1f}"
        if spread is not None:  # several draws: the spread across them, not within one
            return f"{text} ± {spread[key]:.4f}"
        return f"{text} ± {values[std]:.4f}" if std else text

    gen, real, spread = result["generated"], result["real"], result.get("generated_sd")
    draws = result.get("draws", 1)
    samples = f"{draws} x {result['samples']}" if draws > 1 else str(result["samples"])
    head = (f"{'metric':30s} {'generated (' + samples + ')':>24s} "
            f"{'real floor (' + str(result['real_samples']) + ')':>24s}")
    lines = [head, "-" * len(head)]
    for label, key, std in ROWS + [row for row in OPTIONAL_ROWS if row[1] in gen]:
        lines.append(f"{label:30s} {cell(gen, key, std, spread):>24s} {cell(real, key, std):>24s}")
    if draws > 1:
        lines.append(f"generated: mean ± standard deviation over {draws} draws of {result['samples']} "
                     "samples (the scores' sampling noise)")
    total = max(sum(result["histogram"]), 1)
    lines.append("")
    if "digits_drawn" in result:
        lines.append(f"digits asked for: drawn {result['digits_drawn']}")
    lines.append("generated digits: " + "  ".join(
        f"{d}:{100 * result['histogram'][d] / total:.1f}%" for d in result["digits"]))
    per_digit = [d for d in result["digits"] if f"fid_{d}" in gen]
    if len(per_digit) > 1:
        for key, label in (("fid", "per-digit FID"), ("recall", "per-digit recall")):
            lines.append(f"{label}: " + "  ".join(
                f"{d}:{gen[f'{key}_{d}']:.3f} ({real.get(f'{key}_{d}', float('nan')):.3f})"
                for d in per_digit) + "   (real floor in brackets)")
        lines.append(f"worst digit: {int(gen['worst_digit'])} (FID {gen['worst_digit_fid']:.3f})")
    expected = total / len(result["digits"])
    missing = [d for d in result["digits"] if result["histogram"][d] == 0]
    rare = [d for d in result["digits"] if 0 < result["histogram"][d] < 0.25 * expected]
    if missing or rare:
        lines.append("mode dropping: " + "; ".join(
            f"{what} {', '.join(map(str, ds))}" for what, ds in (("missing", missing), ("rare", rare)) if ds))
    return "\n".join(lines)
