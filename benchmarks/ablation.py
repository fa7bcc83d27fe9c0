"""Ablation of the `best` preset: each ingredient switched off (or, for those off by default,
on) with everything else as the preset has it, all trained for the same number of epochs and
measured the same way (FID etc. of N samples of the saved generator, conditional accuracy).

    python benchmarks/ablation.py --epochs 2 --n 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mnistgan import load_config, load_generator, train
from mnistgan.metrics import evaluate

VARIANTS: dict[str, list[str]] = {
    "best, as shipped": [],
    "without spectral norm in D": ["discriminator.spectral_norm=false"],
    "label as input planes, not projection": ["discriminator.conditioning=input"],
    "BCE (non-saturating) instead of hinge": ["train.loss=bce"],
    "one learning rate (2e-4 both), not TTUR": ["train.d_lr=2e-4", "train.g_lr=2e-4"],
    "TTUR with D the faster (D 4e-4, G 1e-4)": ["train.d_lr=4e-4", "train.g_lr=1e-4"],
    "without EMA of G": ["train.ema=0"],
    "with DiffAugment (translation, cutout)": ["train.augment=translation,cutout"],
    "with R1 penalty (gamma 1)": ["train.r1=1.0"],
    "nearest upsampling + conv, not transposed convs": ["generator.upsample_mode=nearest"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="NAME")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="ablation-")))
    args = parser.parse_args()
    print("| variant | overrides | minutes | FID ↓ | KID ↓ | precision | recall | "
          "conditional accuracy ↑ | missing / rare digits |")
    print("|---|---|---|---|---|---|---|---|---|")
    floor = None
    for index, name in enumerate(args.variants):
        overrides = [f"train.epochs={args.epochs}", "train.steps=0", *VARIANTS[name]]
        start = time.perf_counter()
        run = train(load_config("best", overrides), out=args.out / f"v{index}", progress=False).run_dir
        minutes = (time.perf_counter() - start) / 60
        gen = load_generator(run)
        labels = gen.labels(args.n)
        result = evaluate(torch.from_numpy(gen.sample(args.n)), labels=labels)
        g, floor = result["generated"], result["real"]
        print(f"| {name} | {' '.join(VARIANTS[name]) or '-'} | {minutes:.1f} | {g['fid']:.3f} | "
              f"{g['kid']:.4f} | {g['precision']:.3f} | {g['recall']:.3f} | "
              f"{100 * g['conditional_accuracy']:.1f}% | "
              f"{g['missing_digits']:.0f} / {g['rare_digits']:.0f} |", flush=True)
    if floor is not None:
        print(f"| real floor (held-out training digits) | | | {floor['fid']:.3f} | {floor['kid']:.4f} | "
              f"{floor['precision']:.3f} | {floor['recall']:.3f} | "
              f"{100 * floor['conditional_accuracy']:.1f}% | | ")
    print(f"\n{args.epochs:g} epochs at batch 64 each; {args.n} samples; torch {torch.__version__}")


if __name__ == "__main__":
    main()
