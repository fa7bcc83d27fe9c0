"""Everything written to disk that can be loaded back, with no pickle anywhere.

Weights: a network's tensors in safetensors with the resolved config in the file's metadata
(`save_weights`, `load_weights`), so a weights file alone is enough to sample.

Training checkpoints: everything needed to continue a run exactly where it stopped. The
state comes from its owners (`GAN.state_dict()`, the loop's counters) as one nested dict;
this module only writes and reads it.

    RUN/checkpoints/step_0001000/state.safetensors   every tensor of the state, by its path
    RUN/checkpoints/step_0001000/state.json          the rest, with the tensors' places
    RUN/checkpoints/step_0001000/manifest.json       SHA-256 of the two files above

A checkpoint is written into a hidden temporary folder that is renamed into place only once
complete (a rename is atomic), so a crash or kill at any moment leaves the previous checkpoint
as it was. The manifest is checked at load: a truncated or altered file is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import atomic_write
from .config import Config, config_from_json
from .errors import UserError
from .models.common import UpsampleConv2d

FORMAT = "mnistgan-weights-1"


def save_weights(module: nn.Module, path: str | Path, config: Config, role: str,
                 step: int | None = None) -> Path:
    """Save a network's state (parameters and batch-norm buffers) with its config and the
    training step it was taken at."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"format": FORMAT, "role": role, "config": config.to_json()}
    if step is not None:
        metadata["step"] = str(step)
    return atomic_write(path, safetensors_bytes(tensors, metadata=metadata))


@dataclass(frozen=True)
class Weights:
    tensors: dict[str, torch.Tensor]
    config: Config
    role: str  # "generator" or "discriminator"
    step: int | None  # the training step they were taken at (None: files before 2026-12-01)


def _read_weights(path: Path, tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """A weights file's metadata and (unless `tensors` is false) its tensors; a damaged or
    foreign file is a `UserError` naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}): "
            "it is damaged or not mnistgan weights; use the files a training run wrote"
        ) from None
    return metadata, loaded


def _step(metadata: dict[str, str]) -> int | None:
    step = metadata.get("step", "")
    return int(step) if step.isdigit() else None


def weights_step(path: Path) -> int | None:
    """The step recorded in a weights file, read from its header alone."""
    return _step(_read_weights(path, tensors=False)[0])


def load_weights(path: str | Path) -> Weights:
    """Read a weights file. Damaged or foreign files are refused with a `UserError` that
    names the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: give a run folder or a .safetensors file")
    metadata, tensors = _read_weights(path)
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise UserError(f"{path} holds no mnistgan config: use the .safetensors files a run wrote")
    config = config_from_json(metadata["config"], source=f"the config inside {path}")
    return Weights(tensors, config, metadata.get("role", ""), _step(metadata))


def load_state(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` that explains a mismatch instead of dumping a traceback."""
    problem = _mismatch(module, tensors)
    if problem:
        upgraded = _renumber_before_fused_upsampling(module, tensors)
        if _mismatch(module, upgraded) is None:
            tensors, problem = upgraded, None
    if problem:
        raise UserError(
            f"weights in {source} do not fit the network its config describes ({problem}): "
            "the file was edited or comes from another version; use the run's own files"
        )
    module.load_state_dict(tensors)


def _mismatch(module: nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if wrong:
        return (f"shape of {wrong[0]} is {tuple(tensors[wrong[0]].shape)}, expected "
                f"{tuple(own[wrong[0]].shape)}")
    return f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else None


def _renumber_before_fused_upsampling(module: nn.Module, tensors: dict[str, torch.Tensor]
                                      ) -> dict[str, torch.Tensor]:
    """Runs written before upsample + conv became one layer (`UpsampleConv2d`, 2026-11-29)
    have a parameterless nn.Upsample before each such conv, one index earlier in the same
    nn.Sequential: renumber their keys so that those runs still load."""
    tables: dict[str, dict[int, int]] = {}  # "body." -> {old index: new index}
    for name, seq in module.named_modules():
        if isinstance(seq, nn.Sequential) and any(isinstance(m, UpsampleConv2d) for m in seq):
            shift, table = 0, {}
            for i, layer in enumerate(seq):
                shift += isinstance(layer, UpsampleConv2d)
                table[i + shift] = i
            tables[f"{name}."] = table
    renamed = {}
    for key, value in tensors.items():
        for prefix, table in tables.items():
            if not key.startswith(prefix):
                continue
            head, _, rest = key[len(prefix):].partition(".")
            if head.isdigit() and int(head) in table:
                key = f"{prefix}{table[int(head)]}.{rest}"
                break
        renamed[key] = value
    return renamed


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}): the run folder is damaged") from None


# ---------------------------------------------------------------------------------------
# Training checkpoints

STATE_FORMAT = "mnistgan-checkpoint-2"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def flatten_state(tree: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tensors, JSON values) into its tensors, keyed by
    their path, and a JSON skeleton that refers to them by key. Dicts keyed by integers (an
    optimiser's per-parameter state) keep their keys' type."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if torch.is_tensor(node):
            tensors[path] = node.detach().cpu().contiguous()
            return {"$tensor": path}
        if isinstance(node, dict):
            if node and all(isinstance(k, int) for k in node):
                return {"$int_keys": {str(k): walk(v, f"{path}.{k}") for k, v in node.items()}}
            return {k: walk(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(node)]
        return node

    return tensors, walk(tree, "")


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    """The inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"$tensor"}:
            return tensors[skeleton["$tensor"]]
        if set(skeleton) == {"$int_keys"}:
            return {int(k): unflatten_state(tensors, v) for k, v in skeleton["$int_keys"].items()}
        return {k: unflatten_state(tensors, v) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(tensors, v) for v in skeleton]
    return skeleton


def save_checkpoint(state: dict[str, Any], folder: Path, step: int, keep: int) -> Path:
    """Write a training state (any nested dict of tensors and JSON values) as the checkpoint
    of `step`; keep the newest `keep`."""
    tensors, skeleton = flatten_state(state)
    blobs = {"state.safetensors": safetensors_bytes(tensors),
             "state.json": json.dumps({"format": STATE_FORMAT, "state": skeleton}).encode()}
    manifest = {name: _sha256(data) for name, data in blobs.items()}

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:07d}"
    tmp = folder / f".tmp-step_{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, data in blobs.items():
        atomic_write(tmp / name, data)
    atomic_write(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
    if final.exists():  # the same step saved again (e.g. interrupted right after a save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(folder)
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (neither temporary folders of interrupted writes
    nor anything else a user put there)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d{7}", p.name))


def newer_checkpoints(run: Path) -> list[Path]:
    """A run's checkpoints that are newer than its generator.safetensors, oldest first: all of
    them while it has none (a run killed, or still training), those past the file's step
    while a finished run is resumed, none if the file records no step (before 2026-12-01)."""
    checkpoints = list_checkpoints(run / "checkpoints")
    file = run / "generator.safetensors"
    if not file.is_file():
        return checkpoints
    step = weights_step(file)
    return [] if step is None else [c for c in checkpoints if checkpoint_step(c) > step]


def checkpoint_step(path: Path) -> int:
    return int(path.name[len("step_"):])


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify one checkpoint folder: the state `save_checkpoint` was given. Damaged
    ones are refused with a clear error."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
        blobs = {name: (path / name).read_bytes() for name in ("state.safetensors", "state.json")}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint {path} is incomplete or damaged ({exc.__class__.__name__}): "
                        "delete that folder to resume from the one before") from None
    for name, data in blobs.items():
        if not isinstance(manifest, dict) or manifest.get(name) != _sha256(data):
            raise UserError(f"checkpoint file {path / name} does not match its manifest "
                            "(truncated or altered): delete that folder to resume from the one before")
    try:
        tensors = safetensors_load(blobs["state.safetensors"])
        meta = json.loads(blobs["state.json"])
        if meta.get("format") == "mnistgan-checkpoint-1":
            return _from_format_1(tensors, meta)
        if meta.get("format") != STATE_FORMAT:
            raise UserError(f"checkpoint {path} is not an mnistgan checkpoint: delete that folder")
        return unflatten_state(tensors, meta["state"])
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError,
            AttributeError, ValueError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc}): delete that folder") from None


def _from_format_1(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Checkpoints written before the training state had one owner (until 2026-12-01): flat
    tensor names and one torch RNG state, which every rank then used."""
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    def optimiser(prefix: str) -> dict[str, Any]:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in part(prefix).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        return {"state": state, "param_groups": meta[prefix]["param_groups"]}

    gan = {"G": part("G"), "D": part("D"), "opt_g": optimiser("opt_g"), "opt_d": optimiser("opt_d"),
           "counters": {k: meta[k] for k in ("step", "d_updates", "g_updates")},
           "epoch_order": tensors["loop.epoch_order"],
           "rng": {"data": tensors["rng.data"], "noise": tensors["rng.noise"],
                   "torch": [tensors["rng.torch"]]}}
    if "rng.cuda" in tensors:
        gan["rng"]["cuda"] = [tensors["rng.cuda"]]
    if any(k.startswith("G_ema.") for k in tensors):
        gan["G_ema"] = part("G_ema")
    return {"gan": gan, "config": meta["config"],
            "loop": {"metric_sums": tensors["loop.metric_sums"], "since_log": meta["since_log"],
                     "wall_s": meta.get("wall_s", 0.0), "best_fid": meta.get("best_fid")}}


def match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each moment tensor its parameter's memory layout: checkpoints store them
    contiguous, while channels-last parameters (and a fused Adam's exact arithmetic) want
    channels-last moments."""
    for param, state in opt.state.items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
