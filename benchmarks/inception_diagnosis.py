"""What Inception-FID sees in a run's samples: its two terms, and the share of pixel values.

The Fréchet distance is |mu_g - mu_t|^2 (the mean term) plus tr(S_g + S_t - 2 (S_g S_t)^(1/2))
(the covariance term). This prints both for `evaluate`'s first draw and for the held-out floor,
so the excess over the floor splits into "the samples' average looks different" and "their
spread looks different". It then asks whether the pixel values alone explain the excess: the
shares of dark, mid, stroke-core (252-254, where MNIST's strokes peak) and saturated (255)
pixels, and Inception-FID on `--paired` images before and after a change of values only (the
geometry untouched): the samples with their histogram matched to the reference classifier's
training images, and the held-out digits with their stroke cores pushed to 255. Paired scores
are on the same images, so their difference is the change's, not the draw's; at that size FID
carries a large bias, so compare them only with each other.

    MNISTGAN_DATA=../shared/data/mnist python benchmarks/inception_diagnosis.py RUN --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mnistgan.cli import load_images
from mnistgan.data import load_split
from mnistgan.metrics.classifier import HELD_OUT
from mnistgan.metrics.inception import features, reference
from mnistgan.metrics.scores import frechet, gaussian

BINS = [("0", 0, 0), ("1-127", 1, 127), ("128-251", 128, 251), ("252-254", 252, 254), ("255", 255, 255)]


def terms(feats: torch.Tensor, mu_t: torch.Tensor, s_t: torch.Tensor) -> tuple[float, float, float]:
    """(FID, mean term, covariance term) of `feats` against the test set's Gaussian."""
    mu, s = gaussian(feats)
    total = frechet(mu, s, mu_t, s_t)
    mean = float((mu - mu_t).pow(2).sum())
    return total, mean, total - mean


def match_histogram(images: np.ndarray, source: np.ndarray, target: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """`images`, drawn like `source`, with their pixel values mapped monotonically so that
    `source` would take `target`'s distribution: each value to the target quantiles its share
    of `source` spans, at random inside a tied value."""
    below = np.concatenate([[0], np.cumsum(np.bincount(source.ravel(), minlength=256))]) / source.size
    target_cdf = np.cumsum(np.bincount(target.ravel(), minlength=256)) / target.size
    x = images.astype(np.int64)
    u = below[x] + rng.random(x.shape) * (below[x + 1] - below[x])
    return np.searchsorted(target_cdf, u).clip(0, 255).astype(np.uint8)


def embed(images: np.ndarray, name: str) -> torch.Tensor:
    """Inception features of uint8 images, with a progress bar named `name`."""
    return features(torch.from_numpy(np.asarray(images, dtype=np.uint8)), progress=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder or generator .safetensors")
    parser.add_argument("--n", type=int, default=10_000, help="samples (as evaluate's first draw)")
    parser.add_argument("--paired", type=int, default=1_500, help="images per paired score")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    [(generated, _)], _, _ = load_images(args.run, args.n, [0])
    ref = reference(args.dataset)
    mu_t, s_t = gaussian(ref["test"])
    gen_feats = embed(generated, "samples")

    rows = {"held-out real (the floor)": terms(ref["heldout"][:args.n], mu_t, s_t),
            "generated": terms(gen_feats, mu_t, s_t)}
    print(f"| {len(generated)} against the test set | Inception-FID | mean term | covariance term |")
    print("|---|---|---|---|")
    for name, (total, mean, cov) in rows.items():
        print(f"| {name} | {total:.3f} | {mean:.3f} | {cov:.3f} |")
    excess = [g - f for g, f in zip(rows["generated"], rows["held-out real (the floor)"], strict=True)]
    print(f"| excess over the floor | {excess[0]:.3f} | {excess[1]:.3f} ({excess[1] / excess[0]:.0%}) "
          f"| {excess[2]:.3f} ({excess[2] / excess[0]:.0%}) |\n")

    test_x, _ = load_split(args.dataset, "test")
    train_x, _ = load_split(args.dataset, "train")
    held, fit = train_x[-HELD_OUT:].numpy(), train_x[:-HELD_OUT].numpy()
    print("| pixels | " + " | ".join(name for name, _, _ in BINS) + " |")
    print("|---|" + "---|" * len(BINS))
    for name, images in (("test images", test_x.numpy()), ("held-out images", held),
                         ("generated images", generated)):
        shares = [np.mean((images >= lo) & (images <= hi)) for _, lo, hi in BINS]
        print(f"| {name} | " + " | ".join(f"{100 * s:.2f} %" for s in shares) + " |")

    rng = np.random.default_rng(0)
    real = held[:args.paired]
    matched = match_histogram(generated[:args.paired], generated, fit, rng)
    paired = {"generated, as drawn": gen_feats[:args.paired],  # embedded above
              "generated, histogram matched to the training pixels": embed(matched, "matched"),
              "held-out real, as it is": embed(real, "held-out"),
              "held-out real, stroke cores (252-254) set to 255": embed(np.where(real >= 252, 255, real),
                                                                        "cores to 255")}
    print(f"\n| {args.paired} images, paired | Inception-FID | mean term | covariance term |")
    print("|---|---|---|---|")
    for name, feats in paired.items():
        total, mean, cov = terms(feats, mu_t, s_t)
        print(f"| {name} | {total:.3f} | {mean:.3f} | {cov:.3f} |")


if __name__ == "__main__":
    main()
