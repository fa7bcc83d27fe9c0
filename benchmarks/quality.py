"""Sample quality of every preset after the same wall-time budget, with the real-data floor.

For each preset: `mnistgan train --preset P --minutes M`, then the metric registry
(`mnistgan.metrics.evaluate`, the same code as `mnistgan evaluate` and training's periodic
evaluation) on N samples. Prints one table, the real-data floor as its last row.

    python benchmarks/quality.py --minutes 5 --n 10000
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from mnistgan import load_config, load_generator, train
from mnistgan.metrics import evaluate

PRESETS = ["seed-000", "seed-001", "seed-002", "seed-004"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="quality-")))
    args = parser.parse_args()
    head = ("| preset | steps | batch | minutes | FID ↓ | KID ↓ | classifier score ↑ | precision | "
            "recall | class entropy | missing / rare digits | memorised |")
    rows, floor = [], None
    for preset in args.presets:
        config = load_config(preset, [f"train.max_minutes={args.minutes}"])
        result = train(config, out=args.out / preset, progress=False)
        images = load_generator(result.run_dir).sample(args.n)
        scores = evaluate(torch.from_numpy(images), config.data.digits)
        g = scores["generated"]
        rows.append(f"| {preset} | {result.steps} | {config.train.batch_size} | {args.minutes:g} | "
                    f"{g['fid']:.2f} | {g['kid']:.3f} | {g['classifier_score']:.2f} | "
                    f"{g['precision']:.3f} | {g['recall']:.3f} | {g['class_entropy']:.3f} | "
                    f"{g['missing_digits']:.0f} / {g['rare_digits']:.0f} | {g['memorised']:.3f} |")
        if not config.data.digits:
            floor = scores["real"]
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    print("\n".join(rows))
    if floor is not None:
        f = floor
        print(f"| real floor (held-out training digits) | | | | {f['fid']:.2f} | {f['kid']:.3f} | "
              f"{f['classifier_score']:.2f} | {f['precision']:.3f} | {f['recall']:.3f} | "
              f"{f['class_entropy']:.3f} | {f['missing_digits']:.0f} / {f['rare_digits']:.0f} | "
              f"{f['memorised']:.3f} |")


if __name__ == "__main__":
    main()
