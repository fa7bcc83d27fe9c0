"""Weights on disk: safetensors tensors with the resolved config in the file's metadata.

No pickle anywhere: a weights file holds only tensors and JSON text, so loading one that a
stranger sent cannot run code. Every write goes to a temporary file in the same folder, is
flushed to disk and renamed into place, so a crash never leaves a half-written file under the
final name.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .atomic import atomic_write
from .config import Config, config_from_json
from .errors import UserError

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
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or extra or wrong:
        what = (f"shape of {wrong[0]} is {tuple(tensors[wrong[0]].shape)}, expected "
                f"{tuple(own[wrong[0]].shape)}" if wrong else
                f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}")
        raise UserError(
            f"weights in {source} do not fit the network its config describes ({what}): "
            "the file was edited or comes from another version; use the run's own files"
        )
    module.load_state_dict(tensors)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}): the run folder is damaged") from None
