"""The `mnistgan` command line. Each subcommand is a thin shell over the Python API."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from .atomic import atomic_write, writable
from .config import choices, load_config, preset_names, preset_path, read_toml
from .data import CLASSES, check_digits
from .errors import Interrupted, UserError
from .memory import keep_freed_memory

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .generate import TrainedGenerator


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mnistgan: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: give 1-65535, or 0 for any free one")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be greater than 0")
    return value


# Named options of `train`, each a shorthand for one config key.
NAMED = {
    "seed": ("train.seed", int, "random seed (same seed, same machine: same weights)"),
    "minutes": ("train.max_minutes", positive_float,
                "wall-time budget: stop cleanly, with a checkpoint, after this many minutes "
                "(D pre-training included)"),
    "batch_size": ("train.batch_size", positive_int, "images per training step"),
    "d_lr": ("train.d_lr", positive_float, "discriminator learning rate"),
    "g_lr": ("train.g_lr", positive_float, "generator learning rate"),
    "d_steps": ("train.d_steps", positive_int, "discriminator updates per generator update"),
    "label_smoothing": ("train.label_smoothing", float, "one-sided: real target is 1 - this"),
    "noise": ("noise.dist", str, "latent distribution"),
    "latent_dim": ("noise.dim", positive_int, "latent vector size"),
    "digits": ("data.digits", str, "train on these digits only, e.g. 5 or 3,5,8"),
    "dataset": ("data.dataset", str, "the images to learn"),
    "device": ("train.device", str, "where to train"),
    "threads": ("train.threads", positive_int,
                "CPU threads for PyTorch (default: PyTorch's, one per core; with other work on "
                "the machine, give the number of idle cores)"),
    "precision": ("train.precision", str, "bfloat16 autocast in no network, both, or D only"),
    "log_every": ("train.log_every", positive_int, "steps between metric rows"),
    "sample_every": ("train.sample_every", positive_int, "steps between sample grids"),
}


def build_parser() -> Parser:
    parser = Parser(prog="mnistgan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a GAN and write a run folder")
    p.add_argument("--preset", default="seed-001",
                   help=f"preset name ({', '.join(preset_names())}) or a .toml file")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="training steps (G updates)")
    length.add_argument("--epochs", type=positive_float, help="passes over the training images")
    p.add_argument("--out", type=Path, help="run folder to create (default runs/PRESET-TIME)")
    p.add_argument("--resume", type=Path, metavar="RUN",
                   help="continue RUN from its newest checkpoint (--steps/--epochs: new total)")
    p.add_argument("--data-dir", help="folder with the IDX files (default: $MNISTGAN_DATA, "
                                      "else download into the cache)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set train.d_lr=1e-3 (repeatable)")
    for name, (key, kind, text) in NAMED.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, choices=choices(key), help=f"{text} ({key})")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/tensorboard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as JSON and exit")

    p = sub.add_parser("sample", help="generate digits from a run folder or weights file")
    p.add_argument("weights", help="run folder, one of its checkpoint folders, or generator .safetensors")
    p.add_argument("--n", type=positive_int,
                   help="number of images (default 64; with --grid-by-class, per row, default 10)")
    p.add_argument("--out", type=Path, help="PNG grid to write (default samples.png)")
    p.add_argument("--npy", type=Path, help="also write an (N, 28, 28) uint8 .npy array")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--noise", choices=choices("noise.dist"),
                   help="latent distribution, if not the one trained with")
    p.add_argument("--nrow", type=positive_int, help="images per grid row")
    p.add_argument("--digit", type=int, choices=range(CLASSES), metavar=f"0-{CLASSES - 1}",
                   help="only this digit (class-conditional models)")
    p.add_argument("--grid-by-class", action="store_true",
                   help="one row per digit, --n per row (class-conditional models; default 10)")

    p = sub.add_parser("evaluate", help="sample-quality metrics with the real-data floor")
    p.add_argument("source", help="run folder, one of its checkpoint folders, generator .safetensors, "
                                  "or an (N, 28, 28) uint8 .npy")
    p.add_argument("--n", type=positive_int, default=10000, help="samples to draw (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--draws", type=positive_int, default=1,
                   help="score this many draws of --n samples (seeds SEED, SEED+1, ...) and print "
                        "each score's mean ± standard deviation over them (default 1)")
    p.add_argument("--digits", help="reference digits (default: the run's, or all for .npy)")
    p.add_argument("--json", type=Path,
                   help="also write the results as JSON here (a run folder always gets RUN/eval.json)")
    p.add_argument("--data-dir", help="folder with the IDX files")
    p.add_argument("--dataset", choices=choices("data.dataset"),
                   help="the dataset the samples are measured against (default: the run's; mnist "
                        "for an .npy file)")
    p.add_argument("--inception", action="store_true",
                   help="also the papers' Inception-FID against the test set (pip install "
                        "'mnistgan[inception]'; minutes on a CPU, the first time many more)")
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads for PyTorch (default: one per core; with other work on the "
                        "machine, give the number of idle cores)")

    p = sub.add_parser("classifier", help="the reference classifier behind the metrics")
    csub = p.add_subparsers(dest="classifier_command", required=True, parser_class=Parser)
    c = csub.add_parser("train", help="train it on a dataset's training set, less the held-out floor")
    c.add_argument("--dataset", default="mnist", choices=choices("data.dataset"),
                   help="default mnist (whose classifier ships with mnistgan); for another one it "
                        "goes into the cache, where evaluate finds it")
    c.add_argument("--out", type=Path,
                   help="weights file to write (default: classifier.safetensors for mnist, the "
                        "cache for the others)")
    c.add_argument("--epochs", type=positive_int, default=6)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--data-dir", help="folder with the IDX files")
    c.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="write a run's generator as an ONNX model")
    p.add_argument("weights", help="run folder, one of its checkpoint folders, or generator .safetensors")
    p.add_argument("--onnx", type=Path, required=True, metavar="FILE", help="the .onnx file to write")

    p = sub.add_parser("report", help="one HTML page comparing run folders side by side")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="default report.html")

    p = sub.add_parser("serve", help="a web page to play with a trained generator")
    p.add_argument("weights", help="run folder, one of its checkpoint folders, or generator .safetensors")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="default 8000; 0 picks a free one")

    p = sub.add_parser("sweep", help="a study: settings x seeds, each trial a run folder, with statistics")
    p.add_argument("study", nargs="?", type=Path,
                   help="the study file (STUDY.toml; README: \"Running a study\")")
    p.add_argument("--example", help="a study shipped with mnistgan instead of a file ("
                                     f"{', '.join(_example_names())})")
    p.add_argument("--base", help="base preset (name, .toml or a run's config.json)")
    p.add_argument("--axis", dest="axes", action="append", default=[], metavar="KEY=VALUES",
                   help="an axis: KEY=V1,V2 (values) or KEY=LOW:HIGH[:log|:int] (a range for "
                        "--sampler random/tpe); repeatable")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override for every trial (repeatable)")
    p.add_argument("--seeds", type=positive_int, help="seeds 0..N-1 per setting")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int, help="budget: training steps per trial")
    length.add_argument("--epochs", type=positive_float, help="budget: epochs per trial")
    length.add_argument("--minutes", type=positive_float, help="budget: wall minutes per trial")
    p.add_argument("--metric", help="what trials are judged by (default fid; inception_fid with "
                                    "the inception extra)")
    p.add_argument("--samples", type=positive_int, help="images per evaluation (default 10000)")
    p.add_argument("--sampler", choices=("grid", "random", "tpe"), help="default grid")
    p.add_argument("--settings", type=positive_int, help="settings to draw (random, tpe)")
    p.add_argument("--name", help="the study's name in the storage (default: the file's name)")
    p.add_argument("--out", type=Path, help="study folder (default studies/NAME)")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="trials at once on this machine, the cores split between them (default 1)")
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads per trial (default: the cores divided by --jobs; give fewer "
                        "when other sweeps share the machine)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared with other machines, e.g. postgresql://host/db "
                        "(default: STUDY/study.db, SQLite)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the trials that failed (e.g. out of memory) again")
    p.add_argument("--data-dir", help="folder with the IDX files")

    p = sub.add_parser("presets", help="list the presets, or show one")
    p.add_argument("--show", metavar="NAME", help="print this preset's resolved config")
    return parser


def train_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    for name, (key, _, _) in NAMED.items():
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides + args.overrides


def cmd_train(args: argparse.Namespace) -> int:
    from .train import resume, train

    if args.resume is not None:
        if args.overrides or args.out or args.print_config or any(
                getattr(args, name) is not None for name in NAMED):
            raise UserError("--resume continues a run with its own config: only --steps, "
                            "--epochs, --data-dir and --no-progress go with it")
        result = resume(args.resume, steps=args.steps, epochs=args.epochs,
                        data_dir=args.data_dir, progress=not args.no_progress,
                        tensorboard=args.tensorboard)
        if rank0():
            print(f"run folder: {result.run_dir} (step {result.steps})")
        return 0
    config = load_config(args.preset, train_overrides(args))
    if args.print_config:
        print(config.to_json())
        return 0
    result = train(config, out=args.out, data_dir=args.data_dir,
                   progress=not args.no_progress, tensorboard=args.tensorboard)
    if rank0():
        print(f"run folder: {result.run_dir} ({result.steps} steps, {result.seconds:.1f} s, "
              f"{result.images_per_second:.0f} images/s)")
    return 0


def open_generator(source: str) -> TrainedGenerator:
    """The generator of a run folder or weights file; says in one line when it comes from an
    unfinished run's checkpoint."""
    from .generate import load_generator

    gen = load_generator(source)
    if gen.origin:
        report(gen.origin)
    return gen


def cmd_sample(args: argparse.Namespace) -> int:
    from .viz import save_grid

    if args.grid_by_class and args.digit is not None:
        raise UserError("--grid-by-class shows every digit: leave out --digit")
    npy = writable(args.npy, "--npy") if args.npy is not None else None
    out = writable(args.out or "samples.png", "--out") if args.out is not None or npy is None else None
    gen = open_generator(args.weights)
    nrow = args.nrow
    if args.grid_by_class:
        nrow = args.n or 10
        images = gen.sample_by_class(nrow, seed=args.seed, noise=args.noise)
    else:
        images = gen.sample(args.n or 64, seed=args.seed, noise=args.noise, digit=args.digit)
    written = []
    if npy is not None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, images)
        written.append(atomic_write(npy, buffer.getvalue()))
    if out is not None:
        written.append(save_grid(images, out, nrow=nrow))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


Draw = tuple[np.ndarray, np.ndarray | None]  # images, and the digit each was asked to be


def load_images(source: str, n: int, seeds: Sequence[int]
                ) -> tuple[list[Draw], list[int], TrainedGenerator | None]:
    """Images to evaluate, one draw per seed (with, for a conditional generator, the digit each
    image was asked to be), the digits the source was trained on, and the generator (None for
    an .npy file, whose images are the one draw)."""
    if source.endswith(".npy"):
        if len(seeds) > 1:
            raise UserError(f"--draws {len(seeds)} needs a generator to draw from: {source} is one "
                            "fixed set of images (give a run folder or a generator .safetensors)")
        try:
            images = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise UserError(f"cannot read {source} as a .npy array ({reason}): give an (N, 28, 28) "
                            "uint8 array saved with numpy.save") from None
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise UserError(f"{source} holds a {images.dtype} array of shape {images.shape}: "
                            "evaluate wants (N, 28, 28) uint8, as `mnistgan sample --npy` writes")
        return [(images[:n], None)], [], None
    gen = open_generator(source)
    draws = []
    for seed in seeds:
        labels = gen.labels(n, seed=seed)
        draws.append((gen.sample(n, seed=seed), None if labels is None else labels.cpu().numpy()))
    return draws, list(gen.config.data.digits), gen


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    import torch

    from .data import local_data_dir
    from .metrics import evaluate, format_table

    digits = None if args.digits is None else sorted(set(check_digits(args.digits.split(","))))
    # A run folder keeps its evaluation (`mnistgan report` shows it); --json adds a copy.
    targets = [writable(args.json, "--json")] if args.json is not None else []
    if (Path(args.source) / "config.json").is_file():  # a run folder (not one of its checkpoints)
        try:
            targets.insert(0, writable(Path(args.source) / "eval.json", "the run's eval.json"))
        except UserError:  # a read-only run folder (e.g. someone else's)
            report(f"note: {args.source} is read-only: the scores are printed, not saved in it")
    if args.inception:
        from .metrics.inception import network_path

        network_path()  # the extra is missing: say so before any work
        keep_freed_memory(any_size=True)  # 1.3-1.5x faster on glibc: BENCHMARKS.md
    if args.threads:
        torch.set_num_threads(args.threads)
    draws, run_digits, gen = load_images(args.source, args.n,
                                         range(args.seed, args.seed + args.draws))
    recorded = gen.config.data.dir if gen is not None else ""
    tensors = [(torch.from_numpy(images), None if labels is None else torch.from_numpy(labels))
               for images, labels in draws]
    result = evaluate(tensors[0][0], run_digits if digits is None else digits,
                      local_data_dir(args.data_dir, recorded), tensors[0][1], inception=args.inception,
                      dataset=args.dataset or (gen.config.data.dataset if gen is not None else "mnist"),
                      more_draws=tensors[1:])
    result["source"] = args.source
    if gen is not None:
        result["step"] = gen.step
        if gen.origin:
            result["origin"] = gen.origin
        if gen.classes:
            result["digits_drawn"] = ("with their shares of the training images"
                                      if gen.config.data.digit_frequencies else
                                      "uniformly (the run predates recorded digit shares)")
    print(format_table(result))
    for target in targets:
        atomic_write(target, json.dumps(result, indent=2).encode())
        print(f"wrote {target}")
    return 0


def cmd_classifier(args: argparse.Namespace) -> int:
    from .metrics.classifier import classifier_path, train_classifier

    out = args.out or (Path("classifier.safetensors") if args.dataset == "mnist"
                       else classifier_path(args.dataset))
    result = train_classifier(writable(out, "--out"), dataset=args.dataset, data_dir=args.data_dir,
                              epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    print(f"wrote {out}: test accuracy {100 * result['test_accuracy']:.2f}% "
          f"({result['seconds']:.0f} s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    print(f"wrote {export_onnx(args.weights, args.onnx, note=report)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"wrote {write_report(args.runs, args.out, note=report)}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ImportError:
        raise UserError("mnistgan serve needs FastAPI and uvicorn: "
                        "pip install 'mnistgan[serve]'") from None
    serve(open_generator(args.weights), host=args.host, port=args.port)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .study import example_path, read_study, sweep

    if args.study is not None and args.example is not None:
        raise UserError("give a study file or --example, not both")
    if args.study is None and args.example is None and args.base is None:
        raise UserError("give a study file, --example NAME, or --base PRESET with --axis options")
    path = example_path(args.example) if args.example else args.study
    budget = next(({kind: value} for kind in ("steps", "epochs", "minutes")
                   if (value := getattr(args, kind)) is not None), None)
    study = read_study(path, args.axes, args.overrides, base=args.base, seeds=args.seeds,
                       budget=budget, metric=args.metric, samples=args.samples,
                       sampler=args.sampler, settings=args.settings, name=args.name)
    sweep(study, out=args.out, jobs=args.jobs, threads=args.threads, storage=args.storage,
          data_dir=args.data_dir, retry_failed=args.retry_failed)
    return 0


def _example_names() -> list[str]:
    from .study.spec import example_names

    return example_names()


def cmd_presets(args: argparse.Namespace) -> int:
    if args.show:
        print(load_config(args.show).to_json())
        return 0
    for name in preset_names():
        description = read_toml(preset_path(name)).get("description", "")
        print(f"{name:10s} {description}")
    return 0


def rank0() -> bool:
    """Under torchrun every rank runs this command: rank 0 alone speaks for them."""
    return os.environ.get("RANK", "0") == "0"


def report(text: str) -> None:
    """One line on stderr (from rank 0 only under torchrun)."""
    if rank0():
        print(f"mnistgan: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .distributed import end_process, leave

    try:
        code = dispatch(args)
    finally:
        closed_a_group = args.command == "train" and leave()
    if closed_a_group:
        end_process(code)
    return code


def dispatch(args: argparse.Namespace) -> int:
    """Run the command; a user's mistake or an interruption becomes one line and an exit code."""
    handler = {"train": cmd_train, "sample": cmd_sample, "presets": cmd_presets,
               "classifier": cmd_classifier, "evaluate": cmd_evaluate,
               "export": cmd_export, "report": cmd_report, "serve": cmd_serve,
               "sweep": cmd_sweep}[args.command]
    try:
        return handler(args)
    except UserError as exc:
        report(f"error: {exc}")
        return 2
    except Interrupted as exc:
        report(str(exc))
        return exc.code
    except KeyboardInterrupt:
        report("interrupted")
        return 130
