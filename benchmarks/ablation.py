"""Ablation of the `best` preset: each ingredient switched off (or, for those off by default,
on) with everything else as the preset has it, every variant trained for the same number of
epochs with several seeds and measured the same way (FID etc. of N samples of the saved
generator, conditional accuracy; Inception-FID with --inception).

Rows per seed, then per variant the mean, the standard deviation over seeds and the range;
a difference from the first variant smaller than the seeds' spread is not a difference.

The variants are a study of `mnistgan sweep` (the variants its [variants] axis): every trial
is a run folder under OUT/runs, OUT/results.csv and OUT/report.html hold what the tables
below show, and a killed ablation continues where it stopped when run again with the same
--out.

    python benchmarks/ablation.py --epochs 6 --seeds 3 --n 10000 --out runs/ablation \
        --variants "best, as shipped" "cosine learning-rate decay"
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

import torch

from mnistgan.study import Study, sweep
from mnistgan.study.spec import check

WITHOUT_28X28_CONV = ["generator.channels=64,32", "generator.kernels=3,3", "generator.upsample=true,true"]
# `best`'s learning rates until 2026-12-04: constant, at half today's starting rates. The rate
# variants below name their rates in full, so that they mean what they meant before that day.
CONSTANT_RATES = ["train.lr_schedule=constant", "train.d_lr=2e-4", "train.g_lr=4e-4"]
# The preset before issue 19's stack (2026-12-03): the reference of BENCHMARKS.md's earlier
# `best` rows, so that their commands still reproduce them.
BEST_UNTIL_2026_12_03 = ["train.d_steps=1", "train.ema=0.999", "train.mode_seeking=0", *WITHOUT_28X28_CONV,
                         "train.standing_stats=0", *CONSTANT_RATES]
# The preset before the longer average (2026-12-07): 3x3 transposed convs, EMA 0.998, D 4e-4 / G 8e-4.
RATES_UNTIL_2026_12_07 = ["train.d_lr=4e-4", "train.g_lr=8e-4"]
CONVS_AND_EMA_UNTIL_2026_12_07 = ["generator.kernels=3,3,3", "train.ema=0.998"]
BEST_UNTIL_2026_12_07 = [*CONVS_AND_EMA_UNTIL_2026_12_07, *RATES_UNTIL_2026_12_07]

VARIANTS: dict[str, list[str]] = {
    "best, as shipped": [],
    "best until 2026-12-03": BEST_UNTIL_2026_12_03,
    "best until 2026-12-07": BEST_UNTIL_2026_12_07,
    "without spectral norm in D": ["discriminator.spectral_norm=false"],
    "label as input planes, not projection": ["discriminator.conditioning=input"],
    "BCE (non-saturating) instead of hinge": ["train.loss=bce"],
    "one learning rate (2e-4 both), not TTUR": ["train.lr_schedule=constant", "train.d_lr=2e-4",
                                                 "train.g_lr=2e-4"],
    "TTUR with D the faster (D 4e-4, G 1e-4)": ["train.lr_schedule=constant", "train.d_lr=4e-4",
                                                "train.g_lr=1e-4"],
    "without EMA of G": ["train.ema=0"],
    "without standing batch-norm statistics": ["train.standing_stats=0"],
    "EMA decay 0.999": ["train.ema=0.999"],
    "one D step per G step": ["train.d_steps=1"],
    "three D steps per G step": ["train.d_steps=3"],
    "without the mode-seeking term": ["train.mode_seeking=0"],
    "without the 28x28 conv in G": WITHOUT_28X28_CONV,
    "with DiffAugment (translation, cutout)": ["train.augment=translation,cutout"],
    "with R1 penalty (gamma 1)": ["train.r1=1.0"],
    "nearest upsampling + conv, not transposed convs": ["generator.upsample_mode=nearest",
                                                        "generator.kernels=3,3,3"],
    "both learning rates doubled (D 4e-4, G 8e-4)": ["train.lr_schedule=constant", "train.d_lr=4e-4",
                                                     "train.g_lr=8e-4"],
    "conditional batch norm in G": ["generator.class_norm=true"],
    "constant learning rates (best until 2026-12-04)": CONSTANT_RATES,
    "cosine learning-rate decay": [*CONSTANT_RATES[1:], "train.lr_schedule=cosine"],
    "linear learning-rate decay": [*CONSTANT_RATES[1:], "train.lr_schedule=linear"],
    # measured on `best` until 2026-12-07, whose 3x3 convs and EMA they keep
    "linear decay from tripled rates (D 6e-4, G 1.2e-3)": [*CONVS_AND_EMA_UNTIL_2026_12_07,
                                                           "train.d_lr=6e-4", "train.g_lr=1.2e-3"],
    # the quadrupled rates are today's preset's own
    "linear decay from quadrupled rates (D 8e-4, G 1.6e-3)": CONVS_AND_EMA_UNTIL_2026_12_07,
    "wider G (128 / 128-64-64 channels)": ["generator.start_channels=128", "generator.channels=128,64,64"],
    "wider D (64-128-256 channels)": ["discriminator.channels=64,128,256"],
    "latent size 128": ["noise.dim=128"],
    "batch 32": ["train.batch_size=32"],
    "batch 128": ["train.batch_size=128"],
    "bfloat16 in D": ["train.precision=bf16-d"],
    "bfloat16 in G and D": ["train.precision=bf16"],
    "minibatch std in D (groups of 4)": ["discriminator.minibatch_std=4"],
    # today's 4x4 convs with the rates and EMA of `best` until 2026-12-07, as they were measured
    "4x4 transposed convs in G (no checkerboard)": [*RATES_UNTIL_2026_12_07, "train.ema=0.998"],
    # `best` since 2026-12-07 but for its longer average
    "4x4 transposed convs, linear decay from quadrupled rates": ["train.ema=0.998"],
    "3x3 transposed convs in G": ["generator.kernels=3,3,3"],
    "top-k G updates (to half the batch)": ["train.top_k=0.5"],
}


def spread(values: list[float]) -> str:
    """mean ± standard deviation [min, max] of one score over seeds."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} "
            f"[{min(values):.3f}, {max(values):.3f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--inception", action="store_true", help="also Inception-FID (slow)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        metavar="NAME")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides applied to every variant (e.g. train.lr_schedule=cosine)")
    parser.add_argument("--jobs", type=int, default=1, help="trials at once, the cores split")
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a new temporary one)")
    args = parser.parse_args()
    # Made here, not as the default: a default is evaluated (and the folder made) on every call.
    args.out = args.out or Path(tempfile.mkdtemp(prefix="ablation-"))
    study = check(Study(
        name="ablation", base="best", axes={}, variants={v: VARIANTS[v] for v in args.variants},
        budget=("epochs", args.epochs), overrides=args.set, seeds=list(range(args.seeds)),
        metric="inception_fid" if args.inception else "fid", samples=args.n,
        description="benchmarks/ablation.py: the ingredients of the best preset"))
    sweep(study, out=args.out, jobs=args.jobs)
    with (args.out / "results.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done"]

    columns = ["minutes", "fid", "recall", "precision", "conditional_accuracy"]
    columns += ["inception_fid"] if args.inception else []
    print("\n| variant | seed | " + " | ".join(columns) + " | worst digit |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    summary: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        row["minutes"] = float(row["train_s"]) / 60  # training only, as the run logged it
        for column in columns:
            summary.setdefault(row["variant"], {}).setdefault(column, []).append(float(row[column]))
        print(f"| {row['variant']} | {row['seed']} | "
              + " | ".join(f"{float(row[c]):.4g}" for c in columns)
              + f" | {float(row['worst_digit']):.0f} ({float(row['worst_digit_fid']):.3f}) |")
    print("\nmean ± standard deviation [min, max] over seeds:\n")
    print("| variant | overrides | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name, values in summary.items():
        print(f"| {name} | {' '.join(VARIANTS[name]) or '-'} | "
              + " | ".join(spread(values[c]) for c in columns) + " |")
    if rows:
        floor = json.loads((args.out / rows[0]["run"] / "eval.json").read_text())["real"]
        print("| real floor (held-out training digits) | | | "
              + " | ".join(f"{floor[c]:.3f}" for c in columns[1:]) + " |")
    print(f"\n{args.epochs:g} epochs each, seeds 0..{args.seeds - 1}, {args.n} samples, "
          f"extra overrides {args.set or 'none'}; torch {torch.__version__}; "
          f"every trial in {args.out}/results.csv and report.html")


if __name__ == "__main__":
    main()
