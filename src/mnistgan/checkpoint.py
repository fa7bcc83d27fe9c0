"""Everything written to disk that can be loaded back, with no pickle anywhere.

Weights: a network's tensors in safetensors with the resolved config in the file's metadata
(`save_weights`, `load_weights`), so a weights file alone is enough to sample.

Training checkpoints: everything needed to continue a run exactly where it stopped.

    RUN/checkpoints/step_0001000/state.safetensors   every tensor: G, D, both Adam states,
                                                     RNG states, the unlogged metric sums
    RUN/checkpoints/step_0001000/state.json          everything else: counters, optimiser
                                                     settings, Python and NumPy RNG states
    RUN/checkpoints/step_0001000/manifest.json       SHA-256 of the two files above

A checkpoint is written into a hidden temporary folder that is renamed into place only once
complete (a rename is atomic), so a crash or kill at any moment leaves the previous checkpoint
as it was. The manifest is checked at load: a truncated or altered file is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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


def save_weights(module: nn.Module, path: str | Path, config: Config, role: str) -> Path:
    """Save a network's state (parameters and batch-norm buffers) with its config."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    metadata = {"format": FORMAT, "role": role, "config": config.to_json()}
    return atomic_write(path, safetensors_bytes(tensors, metadata=metadata))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Config, str]:
    """Read a weights file: (state dict, config, role). Damaged or foreign files are refused
    with a `UserError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist: give a run folder or a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]}): "
            "it is damaged or not mnistgan weights; use the files a training run wrote"
        ) from None
    if metadata.get("format") != FORMAT or "config" not in metadata:
        raise UserError(f"{path} holds no mnistgan config: use the .safetensors files a run wrote")
    config = config_from_json(metadata["config"], source=f"the config inside {path}")
    return tensors, config, metadata.get("role", "")


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

STATE_FORMAT = "mnistgan-checkpoint-1"


@dataclass
class Snapshot:
    """What the training loop hands over to be saved, beyond the GAN itself."""

    metric_sums: torch.Tensor
    since_log: int
    best_fid: float | None = None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _optimizer_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = opt.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{prefix}.{index}.{name}"] = torch.as_tensor(value).detach().cpu().clone()
    return tensors, {"param_groups": state["param_groups"]}


def _optimizer_state(prefix: str, tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(gan: Any, snapshot: Snapshot, folder: Path, keep: int, wall_s: float = 0.0) -> Path:
    """Write a checkpoint of `gan` (a train.GAN) at its current step; keep the newest `keep`."""
    tensors = {f"G.{k}": v for k, v in gan.G.state_dict().items()}
    tensors |= {f"D.{k}": v for k, v in gan.D.state_dict().items()}
    if gan.G_ema is not None:
        tensors |= {f"G_ema.{k}": v for k, v in gan.G_ema.state_dict().items()}
    opt_g, meta_g = _optimizer_tensors("opt_g", gan.opt_g)
    opt_d, meta_d = _optimizer_tensors("opt_d", gan.opt_d)
    tensors |= opt_g | opt_d
    tensors |= {
        "rng.torch": torch.get_rng_state(),
        "rng.data": gan.data_rng.get_state(),
        "rng.noise": gan.noise_rng.get_state(),
        "loop.metric_sums": snapshot.metric_sums,
        "loop.epoch_order": gan.epoch_order,
    }
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    np_state = np.random.get_state()
    meta = {
        "format": STATE_FORMAT,
        "step": gan.step, "d_updates": gan.d_updates, "g_updates": gan.g_updates,
        "since_log": snapshot.since_log, "wall_s": wall_s, "best_fid": snapshot.best_fid,
        "opt_g": meta_g, "opt_d": meta_d,
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "config": gan.config.to_dict(),
    }
    blobs = {"state.safetensors": safetensors_bytes(tensors),
             "state.json": json.dumps(meta).encode()}
    manifest = {name: _sha256(data) for name, data in blobs.items()}

    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{gan.step:07d}"
    tmp = folder / f".tmp-step_{gan.step:07d}-{os.getpid()}"
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
    """Complete checkpoints, oldest first (temporary folders of interrupted writes are not)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step_*") if p.is_dir())


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify one checkpoint folder; damaged ones are refused with a clear error."""
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
    except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc}): delete that folder") from None
    if meta.get("format") != STATE_FORMAT:
        raise UserError(f"checkpoint {path} is not an mnistgan checkpoint: delete that folder")
    return tensors, meta


def restore(gan: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> Snapshot:
    """Load a checkpoint into a freshly built `gan` (same config) and return the loop state."""
    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

    load_state(gan.G, part("G"), source)
    load_state(gan.D, part("D"), source)
    if gan.G_ema is not None:
        load_state(gan.G_ema, part("G_ema"), source)
    try:
        gan.opt_g.load_state_dict(_optimizer_state("opt_g", tensors, meta["opt_g"]))
        gan.opt_d.load_state_dict(_optimizer_state("opt_d", tensors, meta["opt_d"]))
        _match_layouts(gan.opt_g)
        _match_layouts(gan.opt_d)
        gan.step, gan.d_updates, gan.g_updates = meta["step"], meta["d_updates"], meta["g_updates"]
        torch.set_rng_state(tensors["rng.torch"])
        gan.data_rng.set_state(tensors["rng.data"])
        gan.noise_rng.set_state(tensors["rng.noise"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        gan.epoch_order = tensors["loop.epoch_order"].to(gan.device)
        random.setstate(_tupled(meta["rng_python"]))
        kind, keys, *rest = meta["rng_numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
        return Snapshot(tensors["loop.metric_sums"].to(gan.device), int(meta["since_log"]),
                        meta.get("best_fid"))
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"checkpoint {source} does not fit this run ({exc}): "
                        "resume with the run folder it was written in") from None


def _match_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each moment tensor its parameter's memory layout: checkpoints store them
    contiguous, while channels-last parameters (and a fused Adam's exact arithmetic) want
    channels-last moments."""
    for param, state in opt.state.items():
        for name, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
