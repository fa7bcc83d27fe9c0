"""What the digits' proportions alone do to FID, on real images only.

A conditional model's samples have whatever digit proportions its sampler asks for, while the
test set the scores compare against has its own (MNIST's: 11.35 % ones, 8.92 % fives). This
weights real features to other digit proportions and scores them against the test set: the
test set against itself reweighted, and the held-out floor as it is, reweighted to uniform
digits and to the training images' shares (what `data.digit_frequencies` records). In
Inception-v3's features (the cached reference of `mnistgan evaluate --inception`, computed once
if missing) and in the reference classifier's (`evaluate`'s FID).

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/digit_shares.py
"""

from __future__ import annotations

import argparse

import torch

from mnistgan.data import CLASSES, ImageBank
from mnistgan.metrics import reference as classifier_reference
from mnistgan.metrics.inception import reference
from mnistgan.metrics.scores import frechet, gaussian


def weighted_gaussian(features: torch.Tensor, labels: torch.Tensor,
                      shares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of `features` with each digit weighted to total its share."""
    counts = torch.bincount(labels, minlength=CLASSES).double()
    w = (shares / counts)[labels]
    w = w / w.sum()
    x = features.double()
    mean = (w[:, None] * x).sum(0)
    centred = x - mean
    # The unbiased weighted covariance (reliability weights); equal weights give torch.cov's.
    return mean, (centred * w[:, None]).T @ centred / (1 - (w ** 2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist")
    args = parser.parse_args()
    inception = reference(args.dataset)
    test_y, held_y = inception["test_labels"].long(), inception["heldout_labels"].long()
    classifier = classifier_reference(dataset=args.dataset)
    held_features = classifier.classifier.features_and_logits_all(classifier.heldout)[0]
    features = {"Inception-FID": (inception["test"], inception["heldout"]),
                "FID (classifier features)": (classifier.test.features, held_features)}
    training = ImageBank.load(args.dataset, "train")
    train_y = training.labels
    shares = {
        "as they are": None,
        "uniform": torch.full((CLASSES,), 1 / CLASSES, dtype=torch.float64),
        # what training records as data.digit_frequencies
        "the training images'": torch.tensor(training.shares(range(CLASSES)), dtype=torch.float64),
    }

    def score(target: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, labels: torch.Tensor,
              share: torch.Tensor | None) -> float:
        fitted = gaussian(x) if share is None else weighted_gaussian(x, labels, share)
        return frechet(*fitted, *target)

    names = list(features)
    print(f"| {args.dataset}: digits weighted to | " + " | ".join(
        f"{n}: the test set itself | {n}: the held-out floor" for n in names) + " |")
    print("|---" * (1 + 2 * len(names)) + "|")
    targets = [gaussian(test) for test, _ in features.values()]
    for name, share in shares.items():
        cells = []
        for target, (test, held) in zip(targets, features.values(), strict=True):
            cells += [f"{score(target, x, y, share):.4f}" for x, y in ((test, test_y), (held, held_y))]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for name, labels in (("test", test_y), ("held out", held_y), ("training", train_y)):
        counts = torch.bincount(labels, minlength=CLASSES).double()
        print(f"{name} digits: " + "  ".join(f"{d}:{100 * c / counts.sum():.2f}%"
                                              for d, c in enumerate(counts.tolist())))


if __name__ == "__main__":
    main()
