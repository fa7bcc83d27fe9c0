"""Configuration as plain data.

A run is described by one `Config`: a preset file (TOML, shipped in `mnistgan/presets/`) read
into these dataclasses, with `section.key=value` overrides on top. Every key is typed; an
unknown key, a wrong type or an impossible value is a `UserError` naming the key and the fix,
never silently ignored. The resolved config is written into every run folder as JSON, and that
JSON loads back through the same validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

from .augment import TRANSFORMS
from .data import CLASSES, DATASETS, VALUE_RANGES, check_digits
from .distributed import LR_SCALING
from .errors import UserError
from .losses import LOSSES
from .models.common import ACTIVATIONS, INITS
from .models.dense import DENSE_KERNELS
from .noise import DISTRIBUTIONS
from .schedules import LR_SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Which networks run under bfloat16 autocast in each precision: the registry of precisions.
# "bf16-d": D only, G stays float32 (most of bf16's error in one step's G gradient comes from
# G's own layers: benchmarks/bf16_gradients.py).
PRECISIONS: dict[str, tuple[str, ...]] = {"fp32": (), "bf16": ("G", "D"), "bf16-d": ("D",)}

# The allowed values of each choice come from the registry that implements it, so that a new
# entry there is at once a valid config value, a CLI choice and a server parameter value.
Activation = Literal[tuple(ACTIVATIONS)]  # type: ignore[valid-type]
Init = Literal[tuple(INITS)]  # type: ignore[valid-type]
Precision = Literal[tuple(PRECISIONS)]  # type: ignore[valid-type]
DenseKernel = Literal[DENSE_KERNELS]  # type: ignore[valid-type]
Dataset = Literal[tuple(DATASETS)]  # type: ignore[valid-type]
ValueRange = Literal[VALUE_RANGES]  # type: ignore[valid-type]
NoiseDistribution = Literal[tuple(DISTRIBUTIONS)]  # type: ignore[valid-type]
Loss = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
Augmentation = Literal[tuple(TRANSFORMS)]  # type: ignore[valid-type]
LearningRateScaling = Literal[tuple(LR_SCALING)]  # type: ignore[valid-type]
LearningRateSchedule = Literal[tuple(LR_SCHEDULES)]  # type: ignore[valid-type]


@dataclass
class DataConfig:
    dataset: Dataset = "mnist"
    # The folder the IDX files are read from ("": the download cache). Training records the
    # folder it used (--data-dir or $MNISTGAN_DATA), so that evaluating or resuming the run
    # reads the same data unless told otherwise.
    dir: str = ""
    digits: list[int] = field(default_factory=list)  # empty: all ten classes
    # "tanh": pixels in [-1, 1] as (x - 127.5) / 127.5; "sigmoid": x / 255 in [0, 1].
    value_range: ValueRange = "tanh"
    # "random": indices drawn with replacement (np.random.randint in the tutorials);
    # "epoch": shuffled passes without replacement.
    sampling: Literal["random", "epoch"] = "random"
    # Class-conditional: G and D are given each image's digit label (G as a one-hot code
    # beside the noise, D as `discriminator.conditioning` says), so a user can ask for a digit.
    conditional: bool = False
    # Each digit's share of the training images (in the order of `digits`, or 0-9), recorded
    # by training a conditional run. Sampling without a digit (`mnistgan sample`, `evaluate`,
    # the server) draws digits with these shares, so that samples have the data's proportions:
    # MNIST's test set, which the scores compare against, has 11.4 % ones and 8.9 % fives, and
    # uniform digits cost real images 0.02-0.05 of Inception-FID (BENCHMARKS.md). Empty:
    # uniform (runs trained before it was recorded). G trains on uniformly drawn digits.
    digit_frequencies: list[float] = field(default_factory=list)


@dataclass
class NoiseConfig:
    dim: int = 100
    dist: NoiseDistribution = "normal"
    # Support of "uniform", and [-r, r] with r = (high - low) / 2 around the centre for
    # "semicircle"; ignored by "normal".
    low: float = -1.0
    high: float = 1.0


@dataclass
class MLPGeneratorConfig:
    arch: Literal["mlp"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [256, 512, 1024])
    activation: Activation = "leaky_relu"
    slope: float = 0.2
    batch_norm: bool = False
    bn_momentum: float = 0.99  # Keras convention: weight of the old running value
    bn_eps: float = 1e-3
    bn_after_activation: bool = True  # tutorial 001: Dense -> LeakyReLU -> BatchNorm
    dropout: float = 0.0
    output: Activation = "tanh"
    init: Init = "keras"


@dataclass
class ConvGeneratorConfig:
    arch: Literal["conv"] = "conv"
    start_channels: int = 128
    start_size: int = 7
    channels: list[int] = field(default_factory=lambda: [64, 32])
    kernels: list[int] = field(default_factory=lambda: [5, 5])
    upsample: list[bool] = field(default_factory=lambda: [True, True])
    # "nearest": UpSampling2D then a 'same' conv (texts 000, 004); "transpose": one stride-2
    # transposed conv per upsampling layer (same output size, ~4x cheaper on a CPU).
    upsample_mode: Literal["nearest", "transpose"] = "nearest"
    out_kernel: int = 5
    activation: Activation = "leaky_relu"
    slope: float = 0.2
    batch_norm: bool = True
    bn_momentum: float = 0.99
    bn_eps: float = 1e-3
    # Keras 1 BatchNormalization(mode=2): batch statistics in training and sampling alike.
    bn_batch_stats: bool = False
    dropout: float = 0.0
    # "none": a linear output, clamped to the data's range only when it becomes pixels
    # (StyleGAN's practice); "clamp": clamped to [-1, 1] in training too, gradients passed
    # straight through; "clamp_black": the identity clamped at -1 below 0, tanh above. Unlike
    # tanh these can reach the exact black of MNIST's background; on `best` all three scored a
    # worse Inception-FID than tanh (BENCHMARKS.md, "A linear output instead of tanh" and after).
    output: Activation = "tanh"
    init: Init = "keras"
    init_first: Init | None = None  # a different init for the first dense layer (text 004)
    spectral_norm: bool = False
    # With data.conditional and batch_norm: each batch norm's scale and shift learned per digit
    # (conditional batch norm), so that the label steers every layer, not only G's input.
    class_norm: bool = False


@dataclass
class MLPDiscriminatorConfig:
    arch: Literal["mlp"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    activation: Activation = "leaky_relu"
    slope: float = 0.2
    dropout: float = 0.0
    # "sigmoid": one output unit; "softmax2": two units [fake, real] or [real, fake].
    head: Literal["sigmoid", "softmax2"] = "sigmoid"
    real_index: int = 1  # which softmax2 unit means "real"
    init: Init = "keras"
    spectral_norm: bool = False
    # With data.conditional: "projection" (Miyato & Koyama 2018) or "input" (one-hot planes).
    conditioning: Literal["projection", "input"] = "projection"


@dataclass
class ConvDiscriminatorConfig:
    arch: Literal["conv"] = "conv"
    channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel: int = 5
    stride: int = 2
    activation: Activation = "leaky_relu"
    slope: float = 0.2
    batch_norm: bool = False
    bn_momentum: float = 0.99
    bn_eps: float = 1e-3
    dropout: float = 0.0
    hidden: list[int] = field(default_factory=list)  # dense layers after flattening
    hidden_activation: Activation = "leaky_relu"
    head: Literal["sigmoid", "softmax2"] = "sigmoid"
    real_index: int = 1
    init: Init = "keras"
    spectral_norm: bool = False
    conditioning: Literal["projection", "input"] = "projection"
    # Group size of the minibatch standard-deviation channel before flattening (0: none).
    minibatch_std: int = 0


GENERATOR_CONFIGS: dict[str, type] = {"mlp": MLPGeneratorConfig, "conv": ConvGeneratorConfig}
DISCRIMINATOR_CONFIGS: dict[str, type] = {
    "mlp": MLPDiscriminatorConfig,
    "conv": ConvDiscriminatorConfig,
}
GeneratorConfig = Union[MLPGeneratorConfig, ConvGeneratorConfig]  # noqa: UP007
DiscriminatorConfig = Union[MLPDiscriminatorConfig, ConvDiscriminatorConfig]  # noqa: UP007


@dataclass
class TrainConfig:
    # Length: `steps` (G updates) wins when > 0; otherwise `epochs` passes over the
    # training images at `batch_size` images per step (60,000 / 32 = 1,875 steps an epoch).
    steps: int = 0
    epochs: float = 0.0
    # Also stop (cleanly, with a checkpoint) after this much wall time, D pre-training included.
    max_minutes: float = 0.0
    batch_size: int = 32
    d_lr: float = 2e-4
    g_lr: float = 2e-4
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    g_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    adam_eps: float = 1e-7  # Keras 2's default (Keras 1: 1e-8)
    # Keras `decay`: lr / (1 + decay * updates), counted per optimiser update.
    decay: float = 0.0
    lr_milestones: list[int] = field(default_factory=list)  # steps where lr *= lr_gamma
    lr_gamma: float = 0.1
    # Both learning rates times a factor of the run's progress (schedules.LR_SCHEDULES):
    # "constant", or "linear" / "cosine" decay to zero at the run's last step.
    lr_schedule: LearningRateSchedule = "constant"
    # "bce": the tutorials' (binary cross-entropy; G non-saturating); "minimax": Goodfellow's
    # saturating G loss; "hinge"; "lsgan" (least squares); "wgan-gp" (critic + gradient penalty).
    loss: Loss = "bce"
    instance_noise: float = 0.0  # std of Gaussian noise added to every image D sees
    # Differentiable augmentation of every image D sees, real and fake, in both steps (Zhao et
    # al. 2020, "DiffAugment"): any of "translation", "cutout", "brightness", "contrast".
    augment: list[Augmentation] = field(default_factory=list)
    # Weight of the mode-seeking term in G's loss (losses.mode_seeking; Mao et al. 2019): the
    # G step's batch is taken as pairs (its halves, the same digits in a conditional model) and
    # G is penalised where different noise gives alike images. 0: off.
    mode_seeking: float = 0.0
    # Top-k G updates (losses.top_k; Sinha et al. 2020): G learns only from the fakes D scores
    # as most real. The share kept falls linearly over the run from the whole batch to this
    # fraction (the paper anneals it per epoch over runs of hundreds of epochs; ours are
    # 5-20). 1: off, e.g. 0.5. On `best` (conditional, hinge) it wrecked a 20-epoch run: the
    # fakes dropped from G's loss were never repaired (BENCHMARKS.md).
    top_k: float = 1.0
    r1: float = 0.0  # gamma of the R1 penalty gamma/2 * |grad_x D(x)|^2 on real images
    # Exponential moving average of G's weights, used for every sample the run produces
    # (grids, evaluation, generator.safetensors); 0: off, e.g. 0.999.
    ema: float = 0.0
    # Batches of fresh noise whose batch-norm statistics replace the sampling generator's
    # moving ones (average.standing_statistics: BigGAN's "standing statistics"); 0: off.
    standing_stats: int = 0
    d_steps: int = 1  # D updates per G update
    label_smoothing: float = 0.0  # one-sided: D's target for real images is 1 - this
    # "half": batch_size/2 real + batch_size/2 fake (texts 000, 001); "full": batch_size each.
    d_batch: Literal["half", "full"] = "half"
    # "separate": one D update on real, another on fake (texts 000-002); "mixed": one update
    # on the concatenated batch (text 004).
    d_update: Literal["separate", "mixed"] = "separate"
    # "predict": fakes for D come from G in inference mode without gradients, as Keras's
    # generator.predict() (batch norm uses its moving statistics, dropout is off);
    # "train": G in training mode.
    fakes: Literal["predict", "train"] = "predict"
    # "fresh": the G step draws new noise; "reuse": it uses the D step's noise (text 002).
    g_noise: Literal["fresh", "reuse"] = "fresh"
    # With g_noise = "reuse": run G once per step and let the G step reuse the D step's fakes
    # (with their graph) instead of generating them again. Exact when G has no batch norm or
    # dropout (its training and inference passes agree), as in text 002.
    share_fakes: bool = False
    # D pre-training (text 004): this many real and as many generated images, one epoch.
    pretrain_images: int = 0
    pretrain_batch: int = 128
    seed: int = 0
    # Distributed runs (torchrun): batch_size is per process, so the effective batch is
    # batch_size x world_size; the learning rates are scaled by world_size ("linear", Goyal et
    # al. 2017), its square root ("sqrt") or not at all ("none", the default: the run then
    # equals one process at the effective batch). world_size is recorded by the trainer.
    lr_scaling: LearningRateScaling = "none"
    world_size: int = 1
    threads: int = 0  # 0: PyTorch's default
    device: Literal["cpu", "cuda", "mps", "auto"] = "cpu"
    # bfloat16 autocast for the matmuls and convolutions of the networks PRECISIONS names
    # (weights, optimiser state and losses stay float32).
    precision: Precision = "fp32"
    # Channels-last (NHWC) tensors for the conv layers: oneDNN's fast path for narrow convs
    # (measured in BENCHMARKS.md; it helps the small `best` networks, not text 000's).
    channels_last: bool = False
    # The kernel of the dense layers' float32 products on the CPU (models.dense.DENSE_KERNELS):
    # "onednn" (AVX-512 on AMD processors too: 2x MKL's rate on this project's CPU) or "blas"
    # (PyTorch's default, MKL). Same products; they differ in rounding only.
    dense_kernel: DenseKernel = "onednn"
    # Keep the memory a step frees on the heap for the next step (glibc's mallopt, for the whole
    # process once a run asks): otherwise each step maps its large blocks afresh and faults their
    # pages in (a tenth of `best`'s CPU time went there). Same arithmetic, same peak memory.
    # BENCHMARKS.md has the A/B. No effect without glibc (macOS, musl).
    reuse_memory: bool = True
    # Capture the whole step (both updates, their backward passes and Adam) as one compiled
    # graph on the first step (step_graph.py): the same arithmetic without PyTorch's per-op
    # dispatch. Fully connected networks on the CPU (any train.precision) without dropout,
    # augmentation or penalties; otherwise (or without a C++ compiler) the step runs op by op,
    # with a note saying why.
    compile_step: bool = False
    log_every: int = 50
    sample_every: int = 500
    # Sample-quality evaluation (FID etc. against the test set) every N steps; 0: off. The
    # run keeps the generator with the best FID as generator_best.safetensors.
    eval_every: int = 0
    eval_samples: int = 2000
    checkpoint_every: int = 1000  # steps between resumable checkpoints (and at the end)
    keep_checkpoints: int = 3
    grid_size: int = 100  # samples in each progress grid (a square number reads best)


@dataclass
class Config:
    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    generator: GeneratorConfig = field(default_factory=MLPGeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=MLPDiscriminatorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------------------
# Presets


def preset_names() -> list[str]:
    """Names of the presets shipped in the package, sorted."""
    folder = resources.files("mnistgan") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_path(name: str) -> Path:
    """The TOML file behind a preset name, or the path itself if `name` is a .toml file (or a
    run's config.json)."""
    if name.endswith((".toml", ".json")):
        path = Path(name)
        if not path.is_file():
            raise UserError(f"config file {name} does not exist: check the path")
        return path
    path = Path(str(resources.files("mnistgan") / "presets" / f"{name}.toml"))
    if not path.is_file():
        raise UserError(
            f"unknown preset '{name}': choose one of {', '.join(preset_names())} "
            "or give a .toml file or a run's config.json"
        )
    return path


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}): fix the file") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): check the path") from None


def load_config(preset: str = "seed-001", overrides: list[str] | None = None) -> Config:
    """Read a preset (name, .toml path, or a run's config.json) and apply `section.key=value`
    overrides. `train.epochs` given without `train.steps` sets the run's length in epochs."""
    path = preset_path(preset)
    raw = read_toml(path) if path.suffix != ".json" else config_from_json(
        path.read_text(encoding="utf-8"), str(path)).to_dict()
    keys: set[str] = set()
    for item in overrides or []:
        key, value = parse_override(item)
        section_name = key.partition(".")[0]
        section = raw.get(section_name)
        if key.endswith(".arch") and isinstance(section, dict) and section.get("arch") != value:
            # Another architecture has other keys: start it from its own defaults.
            raw[section_name] = {}
        set_dotted(raw, key, value)
        keys.add(key)
    if "train.epochs" in keys and "train.steps" not in keys:
        # A length asked for in epochs replaces the preset's length in steps, which would win.
        set_dotted(raw, "train.steps", 0)
    return config_from_dict(raw)


def choices(key: str) -> tuple[Any, ...] | None:
    """The allowed values of a `section.key` whose type is a choice; None for free values."""
    section, _, name = key.partition(".")
    cls = typing.get_type_hints(Config).get(section)
    if not dataclasses.is_dataclass(cls):
        return None
    tp = typing.get_type_hints(cls).get(name)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def config_from_json(text: str, source: str = "config.json") -> Config:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source} is not valid JSON ({exc.msg}): restore it from the run") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source} does not hold a config object: restore it from the run")
    return config_from_dict(raw)


# ---------------------------------------------------------------------------------------
# Overrides


def parse_override(item: str) -> tuple[str, Any]:
    """`train.batch_size=64` -> ("train.batch_size", 64). Values are read as TOML values
    (numbers, true/false, [lists], "strings"); anything else is taken as a bare string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set '{item}' is not key=value: write e.g. --set train.batch_size=64")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: i + 1])
            raise UserError(f"'{where}' is a value, not a section: check the --set key '{key}'")
        node = child
    node[leaf] = value


# ---------------------------------------------------------------------------------------
# Validation: dict -> typed dataclasses


def config_from_dict(raw: dict[str, Any]) -> Config:
    raw = dict(raw)
    for where, table in (("generator", GENERATOR_CONFIGS), ("discriminator", DISCRIMINATOR_CONFIGS)):
        section = raw.get(where, {})
        if not isinstance(section, dict):
            raise UserError(f"'{where}' must be a section (a table of keys), got {section!r}")
        raw[where] = _build(_arch_class(section, table, where), section, where)
    config = _build(Config, raw, "")
    check_values(config)
    return config


def _arch_class(section: dict[str, Any], table: dict[str, type], where: str) -> type:
    arch = section.get("arch", "mlp")
    if not isinstance(arch, str) or arch not in table:
        raise UserError(f"{where}.arch = {arch!r} is unknown: choose one of {', '.join(table)}")
    return table[arch]


def _build(cls: type, raw: Any, where: str) -> Any:
    if dataclasses.is_dataclass(raw):
        return raw
    if not isinstance(raw, dict):
        raise UserError(f"'{where}' must be a section (a table of keys), got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = str(unknown[0])
        full = (f"{where}.{key}" if where else key).encode("unicode_escape").decode()
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(fields)}"
        raise UserError(f"unknown config key '{full}': {hint}")
    values = {}
    for name, value in raw.items():
        full = f"{where}.{name}" if where else name
        values[name] = _coerce(value, hints[name], full)
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if all(dataclasses.is_dataclass(a) for a in options):
            return value  # generator / discriminator: already built by arch
        return _coerce(value, options[0], key)
    if origin is Literal:
        if value not in args:
            raise UserError(
                f"{key} = {value!r} is not allowed: choose one of "
                + ", ".join(repr(a) for a in args)
            )
        return value
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str) and "," in value:
            value = [parse_override(f"x={part}")[1] for part in value.split(",")]
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key} must be a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{key} must be a string, got {value!r}")
    raise TypeError(f"config type {tp} for {key} is not handled")  # a bug in this file


# The generator outputs that fit each data range (the one home of `generator.output`'s choices).
OUTPUTS_FOR_RANGE: dict[str, tuple[str, ...]] = {
    "tanh": ("tanh", "clamp", "clamp_black", "none"),
    "sigmoid": ("sigmoid", "none"),
}


def check_values(c: Config) -> None:
    """Ranges and combinations that types alone cannot express."""
    t = c.train

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    need(t.steps >= 0, f"train.steps = {t.steps} must be positive: e.g. --steps 1000")
    need(t.epochs >= 0, f"train.epochs = {t.epochs} must be positive: e.g. --epochs 5")
    need(t.max_minutes >= 0, f"train.max_minutes = {t.max_minutes} must be 0 (no limit) or more")
    need(t.batch_size >= 1, f"train.batch_size = {t.batch_size} must be at least 1")
    need(t.d_batch == "full" or t.batch_size >= 2, "train.d_batch = 'half' needs batch_size >= 2")
    for name in ("d_lr", "g_lr"):
        lr = getattr(t, name)
        need(lr > 0, f"train.{name} = {lr} must be greater than 0: e.g. --set train.{name}=2e-4")
    for name in ("d_betas", "g_betas"):
        betas = getattr(t, name)
        need(
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            f"train.{name} = {betas} must be two numbers in [0, 1): e.g. [0.5, 0.999]",
        )
    need(t.adam_eps > 0, "train.adam_eps must be greater than 0")
    need(t.decay >= 0, "train.decay must be 0 or more")
    need(0 < t.lr_gamma <= 1, "train.lr_gamma must be in (0, 1]")
    need(t.instance_noise >= 0, "train.instance_noise must be 0 or more")
    need(t.mode_seeking >= 0,
         "train.mode_seeking must be 0 (off) or more: e.g. --set train.mode_seeking=0.05")
    need(not t.mode_seeking or (t.g_noise == "fresh" and t.batch_size >= 2),
         "train.mode_seeking pairs the G step's own noise: "
         "it needs train.g_noise = 'fresh' and batch_size >= 2")
    need(0 < t.top_k <= 1, f"train.top_k = {t.top_k} must be in (0, 1]: 1 (off) or the share "
         "of G's batch kept at the run's end, e.g. 0.5")
    need(t.r1 >= 0, "train.r1 must be 0 (off) or more: e.g. --set train.r1=1")
    need(0 <= t.ema < 1, f"train.ema = {t.ema} must be in [0, 1): 0 (off) or e.g. 0.999")
    need(len(set(t.augment)) == len(t.augment), "train.augment lists an augmentation twice")
    need(t.standing_stats >= 0, f"train.standing_stats = {t.standing_stats} must be 0 (off) or a "
         "number of batches, e.g. 100")
    need(t.d_steps >= 1, f"train.d_steps = {t.d_steps} must be at least 1")
    need(
        0 <= t.label_smoothing < 0.5,
        f"train.label_smoothing = {t.label_smoothing} must be in [0, 0.5): e.g. 0.1",
    )
    need(
        t.g_noise == "fresh" or t.d_batch == "full",
        "train.g_noise = 'reuse' needs train.d_batch = 'full' (the G step uses the D step's noise)",
    )
    need(not t.share_fakes or t.g_noise == "reuse",
         "train.share_fakes = true needs train.g_noise = 'reuse' (the G step must use the D step's noise)")
    need(t.pretrain_images >= 0 and t.pretrain_batch >= 1, "train.pretrain_* must be positive")
    need(t.world_size >= 1, "train.world_size must be at least 1 (it is recorded, not chosen: "
         "launch several processes with torchrun)")
    need(t.threads >= 0, "train.threads must be 0 (automatic) or more")
    need(t.log_every >= 1, "train.log_every must be at least 1")
    need(t.sample_every >= 1, "train.sample_every must be at least 1")
    need(t.eval_every >= 0, "train.eval_every must be 0 (off) or more")
    need(t.eval_samples >= 100, "train.eval_samples must be at least 100")
    need(t.checkpoint_every >= 1, "train.checkpoint_every must be at least 1")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints must be at least 1")
    need(t.grid_size >= 1, "train.grid_size must be at least 1")
    check_digits(c.data.digits, "data.digits")
    need(len(set(c.data.digits)) == len(c.data.digits), "data.digits lists a digit twice")
    shares = c.data.digit_frequencies
    if shares:
        classes = len(c.data.digits) or CLASSES
        need(len(shares) == classes and min(shares) >= 0 and sum(shares) > 0,
             f"data.digit_frequencies needs {classes} shares, none negative, not all 0 (one per digit "
             f"of data.digits, or of 0-9); leave it empty and training records the data's")
    need(c.noise.dim >= 1, f"noise.dim = {c.noise.dim} must be at least 1")
    need(c.noise.high > c.noise.low, "noise.high must be greater than noise.low")
    g, d = c.generator, c.discriminator
    if isinstance(g, ConvGeneratorConfig):
        need(
            len(g.channels) == len(g.kernels) == len(g.upsample),
            "generator.channels, .kernels and .upsample must have the same length",
        )
        size = g.start_size * 2 ** sum(g.upsample)
        need(size == 28, f"the conv generator makes {size}x{size} images, not 28x28: "
             "set generator.start_size and generator.upsample so that they reach 28")
        odd = [k for k, up in zip(g.kernels, g.upsample, strict=True)
               if not (up and g.upsample_mode == "transpose")] + [g.out_kernel]
        need(all(k % 2 == 1 for k in odd), "generator kernels must be odd, except those of "
             "upsampling layers with generator.upsample_mode = 'transpose'")
    for name, m in (("generator", g), ("discriminator", d)):
        need(0 <= m.dropout < 1, f"{name}.dropout must be in [0, 1)")
        need(m.slope >= 0, f"{name}.slope must be 0 or more")
        need(all(h >= 1 for h in getattr(m, "hidden", [1])), f"{name}.hidden sizes must be >= 1")
    if isinstance(d, ConvDiscriminatorConfig):
        need(d.minibatch_std >= 0, "discriminator.minibatch_std must be 0 (off) or a group size such as 4")
    need(d.real_index in (0, 1), "discriminator.real_index must be 0 or 1")
    need(any(c.generator.output in fits for fits in OUTPUTS_FOR_RANGE.values()),
         "generator.output must be tanh, sigmoid, clamp ([-1, 1], straight-through), clamp_black (clamped "
         "at -1 below 0, tanh above) or none (linear, clamped to the data's range as pixels)")
    need(
        c.generator.output in OUTPUTS_FOR_RANGE[c.data.value_range],
        f"generator.output = {c.generator.output!r} does not match data.value_range = "
        f"{c.data.value_range!r}: set both to tanh ([-1, 1]) or both to sigmoid ([0, 1])",
    )
