"""Sample quality against wall-clock minutes, for `best` and every seed preset, on one plot.

Each preset trains as `mnistgan train --preset P` does (its own length, cut at --minutes when
that comes first) and keeps a checkpoint about every minutes / points. Every checkpoint's
generator (the moving average of G where the preset keeps one) is then scored, after training
so that the clock counts training only: FID in the reference classifier's features on --n
samples and Inception-FID on --inception-n samples, both against the test images of the
preset's digits (seed-000 trains and is scored on the digit 5 alone). The minutes are the
run's own wall clock at the checkpoint (sample grids and checkpoint writes included, process
start-up not). Of the checkpoints, the --points nearest to equal steps of wall time are scored
(a preset that starts slowly, as seed-004 with its D pre-training, leaves more checkpoints
than points). The real-data floors (held-out training images) are the dashed lines.
Given the --out of an interrupted run, presets that finished training there are not
retrained (their minutes are those of the original run), and points already scored with the
same --n and --inception-n are read from RUN/quality-scores.json instead of scored again.

    python benchmarks/quality.py --minutes 13 --points 6 --n 10000 --inception-n 2000 \\
        --png benchmarks/quality.png
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mnistgan import load_config, load_generator, train  # noqa: E402
from mnistgan.atomic import atomic_write  # noqa: E402
from mnistgan.checkpoint import checkpoint_step, list_checkpoints, read_checkpoint  # noqa: E402
from mnistgan.metrics import evaluate  # noqa: E402

PRESETS = ["best", "seed-000", "seed-001", "seed-002", "seed-004"]
PROBE_MINUTES = 0.25  # at most: a short run first, to space each preset's checkpoints in time


def measure_preset(preset: str, minutes: float, points: int, n: int, inception_n: int,
                   out: Path, overrides: list[str]) -> dict:
    """Train one preset for the budget and score its checkpoints: the curve's points."""
    if (out / preset / "generator.safetensors").exists():
        print(f"reusing the finished run {out / preset}", flush=True)
        return score_checkpoints(preset, out / preset, points, n, inception_n)
    for unfinished in (out / preset, out / f"{preset}-probe"):
        shutil.rmtree(unfinished, ignore_errors=True)
    probe_minutes = min(PROBE_MINUTES, minutes / 4)
    probe = train(load_config(preset, [*overrides, f"train.max_minutes={probe_minutes}"]),
                  out=out / f"{preset}-probe", progress=False)
    # The probe's last logged interval, not its whole time: that includes the start-up and,
    # with train.compile_step, the compiler, and would space the checkpoints too far apart.
    per_step = probe.last.get("images_per_s", 0) / load_config(preset, overrides).train.batch_size
    rate = max(per_step, probe.steps / (60 * probe_minutes))
    every = max(1, math.ceil(rate * 60 * minutes / points))
    config = load_config(preset, [*overrides, f"train.max_minutes={minutes}",
                                  f"train.checkpoint_every={every}", "train.keep_checkpoints=1000"])
    run = train(config, out=out / preset, progress=False).run_dir
    return score_checkpoints(preset, run, points, n, inception_n)


def spaced_in_time(folders: list[Path], points: int) -> list[tuple[Path, float]]:
    """The checkpoints nearest to `points` equal steps of wall time (the last one always),
    each with its wall-clock seconds."""
    timed = [(folder, read_checkpoint(folder)["loop"]["wall_s"]) for folder in folders]
    if not timed:
        return []
    end = timed[-1][1]
    picked: list[Path] = []
    for k in range(1, points + 1):
        rest = [fw for fw in timed if fw[0] not in picked]
        if rest:
            picked.append(min(rest, key=lambda fw: abs(fw[1] - end * k / points))[0])
    return [fw for fw in timed if fw[0] in picked]


def table_row(preset: str, point: dict, inception_n: int) -> str:
    return (f"| {preset} | {point['step']} | {point['minutes']:.2f} | {point['fid']:.3f} | "
            + (f"{point['inception_fid']:.2f} |" if inception_n else "- |"))


def score_checkpoints(preset: str, run: Path, points: int, n: int, inception_n: int) -> dict:
    config = load_config(str(run / "config.json"))
    cache_path = run / "quality-scores.json"
    key = f"n={n} inception_n={inception_n}"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    scored = cache.setdefault(key, {})
    curve = []
    for folder, wall in spaced_in_time(list_checkpoints(run / "checkpoints"), points):
        step = checkpoint_step(folder)
        if str(step) in scored:
            point = scored[str(step)]
            print(table_row(preset, point, inception_n) + " (scored before)", flush=True)
            curve.append(point)
            continue
        gen = load_generator(folder)
        images = torch.from_numpy(gen.sample(max(n, inception_n)))
        labels = gen.labels(len(images))
        scores = evaluate(images[:n], config.data.digits,
                          labels=None if labels is None else labels[:n])
        point = {"step": step, "minutes": wall / 60,
                 "fid": scores["generated"]["fid"], "fid_floor": scores["real"]["fid"]}
        if inception_n:
            from mnistgan.metrics.inception import inception_fid

            point["inception_fid"], point["inception_floor"] = inception_fid(
                images[:inception_n], config.data.digits, inception_n)
        print(table_row(preset, point, inception_n), flush=True)
        curve.append(point)
        scored[str(step)] = point
        atomic_write(cache_path, json.dumps(cache, indent=1).encode())  # a kill leaves the old file
    return {"preset": preset, "digits": config.data.digits,
            "checkpoint_every": config.train.checkpoint_every,
            "batch_size": config.train.batch_size, "points": curve}


def draw(curves: list[dict], png: Path, n: int, inception_n: int) -> None:
    panels = [("fid", "fid_floor", f"FID, classifier features ({n} samples)")]
    if inception_n:
        panels.append(("inception_fid", "inception_floor", f"Inception-FID ({inception_n} samples)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, floor_key, title) in zip(axes[0], panels, strict=True):
        for index, curve in enumerate(curves):
            color = f"C{index}"
            label = curve["preset"] + (" (digit 5 only)" if curve["digits"] == [5] else "")
            xs = [p["minutes"] for p in curve["points"]]
            ax.plot(xs, [p[key] for p in curve["points"]], "o-", color=color, label=label)
            if curve["points"]:
                ax.axhline(curve["points"][-1][floor_key], color=color, linestyle="--", linewidth=0.8)
        ax.set(xlabel="wall-clock minutes of training (2-core CPU)", ylabel=title, yscale="log",
               title=title + "; dashed: real floor")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--minutes", type=float, default=13.0, help="training budget per preset")
    parser.add_argument("--points", type=int, default=6, help="checkpoints scored per preset")
    parser.add_argument("--n", type=int, default=10000, help="samples for the classifier FID")
    parser.add_argument("--inception-n", type=int, default=0,
                        help="samples for Inception-FID (0: skip; slow on a CPU, ~13 images/s)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every preset (e.g. train.threads=2)")
    parser.add_argument("--png", type=Path, default=Path("quality.png"))
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a new temporary one)")
    args = parser.parse_args()
    # Made here, not as the default: a default is evaluated (and the folder made) on every call.
    args.out = args.out or Path(tempfile.mkdtemp(prefix="quality-"))
    print("| preset | step | minutes | FID (classifier) | Inception-FID |")
    print("|---|---|---|---|---|")
    curves = [measure_preset(p, args.minutes, args.points, args.n, args.inception_n,
                             args.out, args.set) for p in args.presets]
    print("\nreal floors (held-out training images of the preset's digits): "
          + "; ".join(f"{c['preset']} FID {c['points'][-1]['fid_floor']:.3f}"
                      + (f", Inception-FID {c['points'][-1]['inception_floor']:.2f}" if args.inception_n
                         else "") for c in curves if c["points"]))
    (args.out / "quality.json").write_text(json.dumps(curves, indent=1))
    draw(curves, args.png, args.n, args.inception_n)
    print(f"\nwrote {args.png} and {args.out / 'quality.json'}; torch {torch.__version__}")


if __name__ == "__main__":
    main()
