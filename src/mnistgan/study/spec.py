"""A study as plain data: STUDY.toml (or `--axis` options) read into one `Study`, checked in
full before any training starts.

    name = "noise-000"                 # default: the file's name
    base = "seed-000"                  # preset name, .toml file or a run's config.json
    set = ["train.checkpoint_every=250"]   # overrides every trial gets
    seeds = 5                          # seeds 0..4 per setting (or a list: [0, 7])
    metric = "fid"                     # see METRICS; inception_fid needs the extra
    samples = 10000                    # images each trial is evaluated on
    sampler = "grid"                   # every combination; "random" / "tpe": `settings` draws
    budget = { steps = 1000 }          # or { epochs = 2 } or { minutes = 5 }

    [axes]                             # config keys and their values ...
    "noise.dist" = ["uniform", "semicircle"]
    "train.d_lr" = { low = 1e-4, high = 1e-3, log = true }   # ... or ranges (random, tpe)

    [variants]                         # named sets of overrides: one more axis, "variant"
    "two D steps, EMA 0.998" = ["train.d_steps=2", "train.ema=0.998"]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import load_config, parse_override, read_toml
from ..errors import UserError

# What a trial can be judged by: a key of `mnistgan evaluate`'s "generated" scores, and
# whether lower is better.
METRICS: dict[str, bool] = {
    "fid": True, "kid": True, "inception_fid": True, "memorised": True,
    "precision": False, "recall": False, "conditional_accuracy": False,
    "classifier_score": False, "class_entropy": False,
}
SAMPLERS = ("grid", "random", "tpe")
BUDGETS = ("steps", "epochs", "minutes")
VARIANT = "variant"  # the axis a study's [variants] table becomes


@dataclass(frozen=True)
class Range:
    """A continuous (or integer) axis for random and TPE search."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


Axis = list[Any] | Range


@dataclass
class Study:
    name: str
    base: str
    axes: dict[str, Axis]
    budget: tuple[str, float]
    overrides: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    metric: str = "fid"
    samples: int = 10000
    sampler: str = "grid"
    settings: int = 0  # random / tpe: settings to draw
    description: str = ""

    @property
    def minimize(self) -> bool:
        return METRICS[self.metric]

    def identity(self) -> dict[str, Any]:
        """What decides the trials: two processes may share a study only if these agree."""
        out = asdict(self)
        out.pop("description")
        out["axes"] = {k: asdict(v) if isinstance(v, Range) else v for k, v in self.axes.items()}
        return json.loads(json.dumps(out))

    def overrides_for(self, setting: dict[str, Any], seed: int) -> list[str]:
        """The `--set` overrides of one trial, in the order they apply."""
        out = list(self.overrides)
        for key, value in setting.items():
            out += self.variants[value] if key == VARIANT else [f"{key}={json.dumps(value)}"]
        return out + [f"train.seed={seed}"]

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the axes' values (grid sampler), in axis order."""
        settings: list[dict[str, Any]] = [{}]
        for key, values in self.all_axes().items():
            assert isinstance(values, list)
            settings = [s | {key: v} for s in settings for v in values]
        return settings

    def all_axes(self) -> dict[str, Axis]:
        return self.axes | ({VARIANT: list(self.variants)} if self.variants else {})


def example_names() -> list[str]:
    folder = resources.files("mnistgan") / "studies"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def example_path(name: str) -> Path:
    if name not in example_names():
        raise UserError(f"unknown example study '{name}': choose one of {', '.join(example_names())}")
    return Path(str(resources.files("mnistgan") / "studies" / f"{name}.toml"))


def read_study(path: str | Path | None, axes: list[str] = (), overrides: list[str] = (),
               **given: Any) -> Study:
    """A study from a TOML file (or none: `base` etc. given), with command-line axes
    (`KEY=V1,V2` or `KEY=LOW:HIGH[:log]`), overrides and fields (None: not given) on top;
    checked in full."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"study file {path} does not exist: check the path, or see --example")
        raw = read_toml(path)
        raw.setdefault("name", path.stem)
    known = {"name", "description", "base", "set", "seeds", "metric", "samples", "sampler",
             "settings", "budget", "axes", "variants"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"study key '{unknown[0]}' is unknown: use {', '.join(sorted(known))}")
    raw_axes = dict(raw.get("axes", {}))
    for item in axes:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--axis '{item}' is not KEY=VALUES: write e.g. "
                            "--axis train.label_smoothing=0,0.1 or --axis train.d_lr=1e-4:1e-3:log")
        raw_axes[key.strip()] = parse_axis(key.strip(), text)
    raw["axes"] = raw_axes
    raw["set"] = list(raw.get("set", [])) + list(overrides)
    for key, value in given.items():
        if value is not None:
            raw[key] = value
    return check(_build(raw))


def parse_axis(key: str, text: str) -> Axis:
    """`0,0.1` -> [0, 0.1]; `uniform,semicircle` -> the strings; `[64,32],[128,64]` -> lists;
    `1e-4:1e-3:log` -> a log range."""
    parts = text.split(":")
    if len(parts) in (2, 3) and "[" not in text and (len(parts) == 2 or parts[2] in ("log", "int")):
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            pass
        else:
            mode = parts[2] if len(parts) == 3 else ""
            return Range(low, high, log=mode == "log", integer=mode == "int")
    items, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):  # split at the commas outside [lists]
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [parse_override(f"{key}={item}")[1] for item in items if item.strip()]


def _build(raw: dict[str, Any]) -> Study:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    need(isinstance(raw.get("base"), str) and raw["base"],
         "a study needs a base preset: base = \"seed-002\" in the file, or --base NAME")
    budget = raw.get("budget", {})
    need(isinstance(budget, dict) and len(budget) == 1 and next(iter(budget)) in BUDGETS,
         "a study needs one training budget: budget = { steps = N } (or epochs, or minutes), "
         "or --steps / --epochs / --minutes")
    (kind, amount), = budget.items()
    need(isinstance(amount, (int, float)) and not isinstance(amount, bool) and amount > 0,
         f"the budget of {amount!r} {kind} trains nothing: give a number above 0")
    need(kind != "steps" or float(amount).is_integer(), f"budget steps = {amount} must be a whole number")
    seeds = raw.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        need(seeds >= 1, f"seeds = {seeds}: give at least 1 (seeds 0..N-1) or a list of seeds")
        seeds = list(range(seeds))
    need(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)
         and len(set(seeds)) == len(seeds),
         f"seeds = {seeds!r}: give a count (e.g. 3) or a list of distinct whole numbers")
    axes: dict[str, Axis] = {}
    for key, values in raw.get("axes", {}).items():
        if isinstance(values, Range):  # from the command line
            axes[key] = values
        elif isinstance(values, dict):
            extra = sorted(set(values) - {"low", "high", "log", "int"})
            need(not extra and "low" in values and "high" in values,
                 f"axis {key} = {values}: a range is {{ low = A, high = B }} (optionally log = true, "
                 "int = true)")
            axes[key] = Range(float(values["low"]), float(values["high"]), bool(values.get("log")),
                              bool(values.get("int")))
        else:
            need(isinstance(values, list), f"axis {key} = {values!r}: give a list of values or a range")
            axes[key] = values
    variants = raw.get("variants", {})
    need(isinstance(variants, dict) and all(
        isinstance(v, list) and all(isinstance(i, str) for i in v) for v in variants.values()),
        "[variants] maps a name to a list of \"key=value\" overrides")
    overrides = raw["set"]
    need(isinstance(overrides, list) and all(isinstance(i, str) for i in overrides),
         "set = [...] is a list of \"key=value\" overrides")
    metric = raw.get("metric", "fid")
    need(metric in METRICS, f"metric '{metric}' is unknown: choose one of {', '.join(METRICS)}")
    sampler = raw.get("sampler", "grid")
    need(sampler in SAMPLERS, f"sampler '{sampler}' is unknown: choose one of {', '.join(SAMPLERS)}")
    samples = raw.get("samples", 10000)
    need(isinstance(samples, int) and samples >= 100, f"samples = {samples!r}: give at least 100")
    settings = raw.get("settings", 0)
    need(isinstance(settings, int) and settings >= 0, f"settings = {settings!r}: give a whole number")
    return Study(name=str(raw.get("name") or f"sweep-{Path(raw['base']).stem}"), base=raw["base"], axes=axes,
                 budget=(kind, int(amount) if kind == "steps" else float(amount)),
                 overrides=overrides, variants={k: list(v) for k, v in variants.items()},
                 seeds=seeds, metric=metric, samples=samples, sampler=sampler, settings=settings,
                 description=str(raw.get("description", "")))


def check(study: Study) -> Study:
    """Refuse, in one line, a study that cannot run: an empty axis, a range where every
    combination is needed, a key or value the config does not accept."""
    axes = study.all_axes()
    if not axes:
        raise UserError("the study has no axis: add [axes] (or [variants]) to the file, or "
                        "--axis KEY=V1,V2")
    if VARIANT in study.axes:
        raise UserError(f"'{VARIANT}' names the [variants] axis: use [variants] for named override sets")
    for key, values in axes.items():
        if isinstance(values, list):
            if not values:
                raise UserError(f"axis {key} is empty: give it at least one value")
            if len({json.dumps(v) for v in values}) != len(values):
                raise UserError(f"axis {key} repeats a value: list each value once (seeds repeat runs)")
        else:
            if study.sampler == "grid":
                raise UserError(f"axis {key} is a range, which a grid cannot enumerate: list its "
                                "values, or use sampler = \"random\" or \"tpe\"")
            if not values.low < values.high or (values.log and values.low <= 0):
                raise UserError(f"axis {key}: the range needs low < high (and low > 0 with log)")
    if study.sampler != "grid" and study.settings < 1:
        raise UserError(f"sampler \"{study.sampler}\" draws settings: say how many with settings = N "
                        "(or --settings N)")
    if study.sampler == "random" and all(isinstance(v, list) for v in axes.values()) \
            and study.settings > len(study.grid()):
        raise UserError(f"settings = {study.settings} is more than the {len(study.grid())} combinations "
                        "of the axes: draw fewer, or use the grid")
    try:
        base = load_config(study.base, study.overrides)
    except UserError as exc:
        raise UserError(f"the study's base: {exc}") from None
    if study.metric == "conditional_accuracy" and not base.data.conditional:
        raise UserError(f"metric conditional_accuracy needs a class-conditional base ({study.base} is "
                        "not): choose another metric")
    if study.metric == "inception_fid":
        from ..metrics.inception import network_path

        network_path()  # the extra is missing: say so now, not after the first trial's training
    # Every value of every axis must make a valid config (ranges: both ends).
    for key, values in axes.items():
        for value in _ends(values):
            refusal = _refusal(study, key, value)
            if refusal is None:
                continue
            if isinstance(values, Range) and not values.integer and not any(
                    _refusal(study, key, end) for end in _ends(replace(values, integer=True))):
                hint = f"{key}={values.low:g}:{values.high:g}:int, or int = true in the file"
                raise UserError(f"axis {key} takes whole numbers: mark its range as such ({hint})")
            where = f"variant '{value}'" if key == VARIANT else f"axis {key} = {json.dumps(value)}"
            raise UserError(f"{where}: {refusal}")
    return study


def _ends(axis: Axis) -> list[Any]:
    """The values of an axis that `check` tries: every listed one, or a range's two ends."""
    return axis if isinstance(axis, list) else [_range_value(axis, axis.low), _range_value(axis, axis.high)]


def _refusal(study: Study, key: str, value: Any) -> UserError | None:
    """Why the config refuses `value` on axis `key` (None: it accepts it)."""
    try:
        load_config(study.base, study.overrides_for({key: value}, study.seeds[0]))
    except UserError as exc:
        return exc
    return None


def _range_value(axis: Range, value: float) -> float | int:
    return int(round(value)) if axis.integer else value
