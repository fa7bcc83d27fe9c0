"""The generator as an ONNX model, for serving it without PyTorch.

Inputs: `z` float32 (N, noise dim) and, for class-conditional generators, `labels` int64 (N,)
holding digits 0-9; output: `images` float32 (N, 1, 28, 28) clamped to the data's range as
sampling clamps them ([-1, 1] for `data.value_range = "tanh"`, [0, 1] for "sigmoid"; only a
linear output, `generator.output = "none"`, ever leaves it). The batch dimension is dynamic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .atomic import writable
from .data import scale_images
from .errors import UserError
from .generate import TrainedGenerator, load_generator


class _Exported(nn.Module):
    """A fixed signature for the exporter, (z) or (z, labels), and the clamp to the data's
    range that sampling applies (`to_uint8`), so that ONNX users get images in range."""

    def __init__(self, net: nn.Module, bounds: tuple[float, float]) -> None:
        super().__init__()
        self.net = net
        self.bounds = bounds

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.net(z) if labels is None else self.net(z, labels)
        return x.clamp(*self.bounds)


def export_onnx(source: str | Path | TrainedGenerator, path: str | Path,
                note: Callable[[str], None] = lambda text: None) -> Path:
    """Write the generator of a run folder or weights file (or one already loaded) as ONNX
    to `path`; `note` hears where an unfinished run's generator came from."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'mnistgan[onnx]'") from None
    path = Path(path)
    if path.suffix != ".onnx":
        raise UserError(f"--onnx {path}: give a file name ending in .onnx")
    writable(path, "--onnx")
    gen = source if isinstance(source, TrainedGenerator) else load_generator(source)
    if gen.origin:
        note(gen.origin)
    z = torch.zeros(2, gen.config.noise.dim)
    conditional = bool(gen.classes)
    # The range is where black and white pixels scale to.
    extremes = torch.tensor([0, 255], dtype=torch.uint8)
    black, white = scale_images(extremes, gen.config.data.value_range).tolist()
    # Wrapper in eval mode: the exporter puts the top module back in its own mode afterwards.
    module = _Exported(gen.net, (black, white)).eval()
    args = (z, torch.zeros(2, dtype=torch.long)) if conditional else (z,)
    names = ["z", "labels"] if conditional else ["z"]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript; for these small feed-forward graphs both give the same model.
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(tmp), input_names=names, output_names=["images"],
                              dynamic_axes={n: {0: "batch"} for n in [*names, "images"]},
                              dynamo=False)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path} ({exc.strerror}): choose a writable folder") from None
    finally:
        gen.net.eval()
    return path
