"""bfloat16 autocast against float32 for one preset: the same training (steps, overrides) for
several seeds in each precision, then FID etc. of N samples of each saved generator.

The unstable presets spread widely from seed to seed (text 004's FID after 2,000 steps ranged
over 2x between two float32 seeds), so one pair says little: this prints every run, the mean
per precision, and a bootstrap interval for the ratio of the means. The precisions are the
axis of a `mnistgan sweep` study (runs under OUT/runs, OUT/results.csv, OUT/report.html),
`--jobs` trials at once with the cores split between them; running it again with the same
OUT continues a killed study. The first of --precisions is the baseline.

    python benchmarks/precision.py --preset seed-004 --steps 2000 --seeds 0 1 2 3 4 \\
        --precisions fp32 bf16 bf16-d --set train.pretrain_images=2000 --jobs 2 \\
        --out runs/precision-seed-004
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import get_args

from mnistgan.config import Precision
from mnistgan.study import Study, sweep
from mnistgan.study.results import bootstrap
from mnistgan.study.spec import check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="seed-004")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=get_args(Precision), help="the first is the baseline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every run (repeatable)")
    parser.add_argument("--n", type=int, default=5000, help="samples per evaluation")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, the cores split")
    parser.add_argument("--out", type=Path, required=True, help="folder for the study")
    args = parser.parse_args()
    study = check(Study(
        name=f"precision-{args.preset}", base=args.preset, axes={"train.precision": args.precisions},
        budget=("steps", args.steps), overrides=args.set, seeds=args.seeds, samples=args.n,
        description=f"benchmarks/precision.py: bfloat16 against float32 for {args.preset}"))
    sweep(study, out=args.out, jobs=args.jobs)
    with (args.out / "results.csv").open() as f:
        rows = {(r["train.precision"], int(r["seed"])): r for r in csv.DictReader(f) if r["status"] == "done"}

    print(f"\n| {args.preset}, {args.steps} steps | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | median |")
    print("|---" * (len(args.seeds) + 3) + "|")
    fids = {p: [float(rows[p, s]["fid"]) for s in args.seeds] for p in args.precisions}
    for p in args.precisions:
        print(f"| FID, {p} | " + " | ".join(f"{f:.2f}" for f in fids[p])
              + f" | {statistics.fmean(fids[p]):.2f} | {statistics.median(fids[p]):.2f} |")
    for p in args.precisions:
        print(f"| recall, {p} | " + " | ".join(f"{float(rows[p, s]['recall']):.3f}" for s in args.seeds)
              + " | | |")
    base = args.precisions[0]
    print()
    for p in args.precisions[1:]:
        ratio = statistics.fmean(fids[p]) / statistics.fmean(fids[base])
        low, high = bootstrap([fids[base], fids[p]], lambda a, b: statistics.fmean(b) / statistics.fmean(a))
        better = sum(b < f for b, f in zip(fids[p], fids[base], strict=True))
        print(f"mean FID {p} / {base}: {ratio:.3f} (95 % bootstrap interval {low:.2f}-{high:.2f}); "
              f"{p} lower in {better} of {len(args.seeds)} seeds")
    print(f"{args.n} samples each; overrides: {' '.join(args.set) or '-'}; every run in "
          f"{args.out}/results.csv")


if __name__ == "__main__":
    main()
