"""Pictures of a run: sample grids, a training-progress GIF, loss curves, real beside fake.

Everything here writes files and never shows a window. Matplotlib is driven through
`Figure` + `FigureCanvasAgg` rather than pyplot, so no global backend or figure registry is
touched: plotting is safe from worker threads and from servers without a display, and other
modules keep whatever backend they chose.

Every file is written to a temporary name in the destination folder and renamed into place,
so a reader (a browser refreshing `progress.gif`, a crash mid-write) only ever sees a whole
old file or a whole new one.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write

if TYPE_CHECKING:
    pass

__all__ = [
    "encode_gif",
    "encode_grid",
    "encode_trial_plot",
    "image_grid",
    "plot_losses",
    "save_comparison",
    "save_gif",
    "save_grid",
]

# GIF viewers loop straight back to the first frame; holding the last one longer lets people
# actually look at the final samples before the animation restarts.
LAST_FRAME_HOLD = 3
# Comparison images are upscaled like `save_grid`'s default so both read the same at a glance.
COMPARISON_SCALE = 2
PLOT_DPI = 150


def image_grid(
    images: np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
    """Tile N grey images into one uint8 (H, W) mosaic, `nrow` images per row.

    `images` is (N, H, W) or (N, 1, H, W) uint8 (a single (H, W) image is taken as N = 1).
    `nrow` defaults to ceil(sqrt(N)) and is capped at N. Every tile is surrounded by
    `padding` pixels of `pad_value`, and unused tiles in the last row are left as
    `pad_value`, so the result is ``(rows*H + (rows+1)*padding, cols*W + (cols+1)*padding)``.
    """
    tiles = _as_uint8_images(images)
    n, h, w = tiles.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be in 0..255, got {pad_value}")
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)

    slots = np.full((rows * cols, h, w), pad_value, dtype=np.uint8)
    slots[:n] = tiles
    # Pad each tile on its top and left, lay the tiles out row-major, then close the bottom
    # and right edges: the same arithmetic as torchvision's make_grid, without a loop.
    p = padding
    slots = np.pad(slots, ((0, 0), (p, 0), (p, 0)), constant_values=pad_value)
    grid = slots.reshape(rows, cols, h + p, w + p).transpose(0, 2, 1, 3)
    grid = grid.reshape(rows * (h + p), cols * (w + p))
    return np.pad(grid, ((0, p), (0, p)), constant_values=pad_value)


def encode_grid(images: np.ndarray, nrow: int | None = None, scale: int = 2) -> bytes:
    """`image_grid(images, nrow)` as greyscale PNG bytes, upscaled `scale` times with
    nearest-neighbour so 28-pixel digits stay sharp and visible."""
    return _encode(_upscale(Image.fromarray(image_grid(images, nrow=nrow)), scale), "PNG")


def save_grid(
    images: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 2
) -> Path:
    """Write `encode_grid(images, nrow, scale)` to `path`. Returns the path."""
    return atomic_write(path, encode_grid(images, nrow=nrow, scale=scale))


def save_gif(
    frames: Sequence[np.ndarray | str | Path],
    path: str | Path,
    duration_ms: int = 300,
    loop: int = 0,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write `encode_gif(...)` (grids over training, say) to `path`. Returns the path."""
    return atomic_write(path, encode_gif(frames, duration_ms, loop, captions))


def encode_gif(
    frames: Sequence[np.ndarray | str | Path],
    duration_ms: int = 300,
    loop: int = 0,
    captions: Sequence[str] | None = None,
    hold_last: bool = True,
) -> bytes:
    """Animate frames into GIF bytes.

    `frames` are uint8 2-D arrays or paths of images (e.g. the PNGs `save_grid` wrote); any
    frame whose size differs from the first is resized to it. With `captions`, one string per
    frame (e.g. ``"step 500"``) is drawn in a band above it. Each frame shows for
    `duration_ms`, the last one three times as long unless `hold_last` is false (an animation
    that loops back and forth should not pause at one end); `loop` 0 repeats forever.

    Pillow merges consecutive identical frames into one longer frame, so the file can hold
    fewer frames than given while playing for the same total time.
    """
    if len(frames) == 0:
        raise ValueError("save_gif needs at least one frame")
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"got {len(captions)} captions for {len(frames)} frames")
    if duration_ms < 0:
        raise ValueError(f"duration_ms must be >= 0, got {duration_ms}")
    if loop < 0:
        raise ValueError(f"loop must be >= 0 (0 = forever), got {loop}")

    images = [_load_frame(frame) for frame in frames]
    size = images[0].size
    images = [im if im.size == size else im.resize(size, Image.Resampling.NEAREST) for im in images]
    if captions is not None:
        font = _font(max(12, size[0] // 24))
        band = _text_height(font) + 2 * _margin(font)
        images = [_with_title(im, str(text), font, band, fill=0, ink=255)
                  for im, text in zip(images, captions, strict=True)]

    last = duration_ms * (LAST_FRAME_HOLD if hold_last else 1)
    durations = [duration_ms] * (len(images) - 1) + [last]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=durations, loop=loop)
    return buffer.getvalue()


def plot_losses(rows: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """Plot logged metric rows as a PNG: D and G loss; D's accuracy and mean output on real
    and fake; and, when any row has ``"fid"``, FID on a log axis.

    Rows are dicts like ``{"step": 100, "d_loss": 0.6, "g_loss": 0.8, ...}``. A key missing
    from some rows (FID is only computed now and then) is plotted where present.
    """
    if len(rows) == 0:
        raise ValueError("plot_losses needs at least one metric row")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    has_fid = any(_present(row.get("fid")) for row in rows)
    panels = 3 if has_fid else 2
    fig = Figure(figsize=(8.0, 2.8 * panels + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]

    loss_ax = axes[0]
    _plot_series(loss_ax, rows, "d_loss", "D loss", color="tab:blue")
    _plot_series(loss_ax, rows, "g_loss", "G loss", color="tab:orange")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("losses", fontsize="medium")

    d_ax = axes[1]
    d_values = [
        *_plot_series(d_ax, rows, "d_acc_real", "D accuracy on real", color="tab:green"),
        *_plot_series(d_ax, rows, "d_acc_fake", "D accuracy on fake", color="tab:red"),
        *_plot_series(d_ax, rows, "d_real", "mean D(x)", color="tab:green", linestyle="--"),
        *_plot_series(d_ax, rows, "d_fake", "mean D(G(z))", color="tab:red", linestyle="--"),
    ]
    # Fixing 0..1 makes runs comparable by eye, but only when every value is a probability;
    # otherwise clipping would hide the data.
    finite = [v for v in d_values if math.isfinite(v)]
    if finite and min(finite) >= 0.0 and max(finite) <= 1.0:
        d_ax.set_ylim(-0.03, 1.03)
        d_ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    d_ax.set_ylabel("fraction / probability")
    d_ax.set_title("discriminator on real and fake", fontsize="medium")

    if has_fid:
        fid_ax = axes[2]
        # A log axis cannot show zero or negative values; FID is never below 0 in practice.
        fid = _plot_series(fid_ax, rows, "fid", "FID", color="tab:purple", marker="o",
                           keep=lambda v: v > 0)
        if fid:
            fid_ax.set_yscale("log")
        fid_ax.set_ylabel("FID (lower is better)")
        fid_ax.set_title("Fréchet Inception Distance", fontsize="medium")

    for ax in axes:
        ax.grid(True, which="major", alpha=0.4)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small", framealpha=0.8)
    axes[-1].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI)
    return atomic_write(path, buffer.getvalue())


def encode_trial_plot(groups: Sequence[tuple[str, Sequence[float]]], xlabel: str,
                      floor: float | None = None) -> bytes:
    """PNG bytes of one horizontal box per group (a study's setting) with a dot per value (a
    seed), first group on top; `floor`: a dashed line for the real-data score."""
    import random

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 0.6 * len(groups) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sideways = ({"orientation": "horizontal"} if tuple(map(int, matplotlib.__version__.split(".")[:2]))
                >= (3, 10) else {"vert": False})  # `vert` is deprecated from Matplotlib 3.10
    ax.boxplot([values for _, values in groups], widths=0.5, showfliers=False, **sideways)
    jitter = random.Random(0)  # the same page for the same results
    for i, (_, values) in enumerate(groups, start=1):
        ax.scatter(values, [i + jitter.uniform(-0.12, 0.12) for _ in values], s=18, zorder=3,
                   color="tab:blue")
    if floor is not None:
        ax.axvline(floor, color="tab:green", linestyle="--", label="real floor")
        ax.legend(loc="best")
    ax.set_yticks(range(1, len(groups) + 1), [name for name, _ in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI)
    return buffer.getvalue()


def save_comparison(
    real: np.ndarray,
    fake: np.ndarray,
    path: str | Path,
    nrow: int | None = None,
    titles: tuple[str, str] = ("real (MNIST)", "generated"),
) -> Path:
    """Write real and generated digits side by side, each grid under its title, as one
    greyscale PNG. Both grids use the same `nrow` (default ceil(sqrt(N)) of the larger set)
    so digits line up across the two."""
    real_tiles, fake_tiles = _as_uint8_images(real), _as_uint8_images(fake)
    if nrow is None:
        nrow = math.ceil(math.sqrt(max(len(real_tiles), len(fake_tiles))))
    grids = [
        _upscale(Image.fromarray(image_grid(t, nrow=nrow)), COMPARISON_SCALE)
        for t in (real_tiles, fake_tiles)
    ]
    font = _font(max(14, max(g.width for g in grids) // 18))
    margin = _margin(font)
    band = _text_height(font) + 2 * margin
    panels = [_with_title(g, str(t), font, band, fill=255, ink=0)
              for g, t in zip(grids, titles, strict=True)]

    gap = 4 * margin
    width = sum(p.width for p in panels) + gap + 2 * margin
    height = max(p.height for p in panels) + 2 * margin
    canvas = Image.new("L", (width, height), 255)
    x = margin
    for panel in panels:
        canvas.paste(panel, (x, margin))
        x += panel.width + gap
    return _save_image(canvas, path, "PNG")


# -- helpers ---------------------------------------------------------------------------------


def _as_uint8_images(images: Any) -> np.ndarray:
    """Validate a batch of grey images and return it as uint8 (N, H, W)."""
    array = np.asarray(images)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(f"expected one channel in (N, 1, H, W), got shape {array.shape}")
        array = array[:, 0]
    elif array.ndim != 3:
        raise ValueError(f"expected images shaped (N, H, W) or (N, 1, H, W), got {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("no images to draw: the batch is empty")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ValueError("integer images must hold values in 0..255")
        return array.astype(np.uint8)
    # Floats could be in (-1, 1), (0, 1) or 0..255; guessing would silently draw a wrong
    # picture, so the caller says which with to_uint8.
    raise TypeError(f"images must be uint8 (got {array.dtype}): convert with "
                    "mnistgan.data.to_uint8(images, value_range) first")


def _load_frame(frame: np.ndarray | str | Path) -> Image.Image:
    if isinstance(frame, (str, Path)):
        with Image.open(frame) as im:
            return im.convert("L")
    array = np.asarray(frame)
    if array.ndim != 2:
        raise ValueError(f"GIF frames must be 2-D (H, W) arrays, got shape {array.shape}")
    return Image.fromarray(_as_uint8_images(array)[0])


def _upscale(image: Image.Image, scale: int) -> Image.Image:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    if scale == 1:
        return image
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        # Pillow built without FreeType (or older than 10.1) only has the fixed bitmap font.
        return ImageFont.load_default()


def _text_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    # Measure letters with ascenders and descenders so every caption gets the same band.
    return int(math.ceil(font.getbbox("Hgjy0")[3]))


def _margin(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    return max(2, _text_height(font) // 3)


def _with_title(
    image: Image.Image,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    band: int,
    fill: int,
    ink: int,
) -> Image.Image:
    """`image` with a `band`-pixel strip above it holding `text`, centred."""
    out = Image.new("L", (image.width, image.height + band), fill)
    out.paste(image, (0, band))
    draw = ImageDraw.Draw(out)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    x = max(0, (image.width - (right - left)) // 2 - left)
    draw.text((x, _margin(font)), text, fill=ink, font=font)
    return out


def _present(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _plot_series(
    ax: Any,
    rows: Sequence[Mapping[str, float]],
    key: str,
    label: str,
    keep: Callable[[float], bool] = lambda v: True,
    **style: Any,
) -> list[float]:
    """Plot `key` against step over the rows that have it; return the values plotted."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        value = row.get(key)
        if _present(value) and keep(float(value)):
            # Rows normally carry "step"; falling back to the row index still gives a
            # readable curve for hand-made rows.
            xs.append(float(row.get("step", i)))
            ys.append(float(value))
    if xs:
        ax.plot(xs, ys, label=label, linewidth=1.4, **style)
    return ys


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _save_image(image: Image.Image, path: str | Path, fmt: str) -> Path:
    return atomic_write(path, _encode(image, fmt))
