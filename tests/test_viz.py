import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistgan import UserError, viz
from mnistgan.viz import image_grid, plot_losses, save_comparison, save_gif, save_grid


def digits(n: int, h: int = 28, w: int = 28, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


def labelled(n: int, h: int = 28, w: int = 28) -> np.ndarray:
    """Image k is filled with k + 1, so every tile is identifiable and none equals padding 0."""
    return np.broadcast_to(np.arange(1, n + 1, dtype=np.uint8)[:, None, None], (n, h, w)).copy()


def metric_rows(n: int = 20, fid_every: int | None = None) -> list[dict[str, float]]:
    rows = []
    for i in range(n):
        row = {"step": 100 * (i + 1), "d_loss": 0.7 - 0.01 * i, "g_loss": 0.8 + 0.02 * i,
               "d_acc_real": 0.6, "d_acc_fake": 0.55, "d_real": 0.52, "d_fake": 0.45,
               "wall_s": 0.3 * i}
        if fid_every and i % fid_every == 0:
            row["fid"] = 200.0 / (i + 1)
        rows.append(row)
    return rows


def open_image(path: Path) -> Image.Image:
    # load() reads the whole single-frame file and closes it, keeping `format` for checks.
    im = Image.open(path)
    im.load()
    return im


# -- image_grid ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "nrow", "padding", "expected"),
    [
        (10, 5, 2, (2 * 28 + 3 * 2, 5 * 28 + 6 * 2)),
        (10, None, 2, (3 * 28 + 4 * 2, 4 * 28 + 5 * 2)),  # ceil(sqrt(10)) = 4 per row
        (64, None, 2, (8 * 28 + 9 * 2, 8 * 28 + 9 * 2)),
        (1, None, 2, (32, 32)),
        (7, 3, 0, (3 * 28, 3 * 28)),
        (3, 8, 1, (28 + 2, 3 * 28 + 4)),  # more columns than images: no empty columns
    ],
)
def test_grid_shape_arithmetic(n, nrow, padding, expected):
    grid = image_grid(digits(n), nrow=nrow, padding=padding)
    assert grid.shape == expected
    assert grid.dtype == np.uint8


def test_grid_accepts_channel_axis_and_any_tile_size():
    images = digits(6, h=5, w=9)
    flat = image_grid(images, nrow=3)
    assert flat.shape == (2 * 5 + 3 * 2, 3 * 9 + 4 * 2)
    np.testing.assert_array_equal(image_grid(images[:, None], nrow=3), flat)


def test_each_image_lands_in_its_tile():
    n, nrow, pad, h, w = 10, 4, 3, 28, 20
    grid = image_grid(labelled(n, h, w), nrow=nrow, padding=pad, pad_value=0)
    rows = -(-n // nrow)
    for k in range(rows * nrow):
        r, c = divmod(k, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        tile = grid[y : y + h, x : x + w]
        # Slots past the last image stay padding.
        assert (tile == (k + 1 if k < n else 0)).all(), f"tile {k}"
    mask = np.ones_like(grid, dtype=bool)
    for k in range(n):
        r, c = divmod(k, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        mask[y : y + h, x : x + w] = False
    assert (grid[mask] == 0).all()


def test_grid_pad_value_fills_gaps():
    grid = image_grid(np.zeros((2, 4, 4), np.uint8), nrow=2, padding=1, pad_value=200)
    assert grid[0].tolist() == [200] * grid.shape[1]
    assert grid[1, 0] == 200 and grid[1, 1] == 0


def test_grid_rejects_bad_input():
    with pytest.raises(ValueError):
        image_grid(np.zeros((0, 28, 28), np.uint8))
    with pytest.raises(ValueError):
        image_grid(digits(4), nrow=0)
    with pytest.raises(ValueError):
        image_grid(np.zeros((4, 3, 28, 28), np.uint8))
    with pytest.raises(TypeError, match="to_uint8"):
        image_grid(np.zeros((4, 28, 28), np.float32))


# -- files -----------------------------------------------------------------------------------


def test_png_round_trip_keeps_pixels(tmp_path):
    images = digits(9)
    path = save_grid(images, tmp_path / "grid.png", nrow=3, scale=1)
    assert path == tmp_path / "grid.png"
    np.testing.assert_array_equal(np.asarray(open_image(path)), image_grid(images, nrow=3))


def test_png_scale_is_nearest_neighbour(tmp_path):
    images = digits(4)
    path = save_grid(images, tmp_path / "deep" / "er" / "grid.png", scale=3)
    expected = image_grid(images).repeat(3, axis=0).repeat(3, axis=1)
    np.testing.assert_array_equal(np.asarray(open_image(path)), expected)


def test_gif_frames_size_and_timing(tmp_path):
    frames = [image_grid(digits(16, seed=s)) for s in range(4)]
    path = save_gif(frames, tmp_path / "progress.gif", duration_ms=200)
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.n_frames == 4
        assert im.size == (frames[0].shape[1], frames[0].shape[0])
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert durations == [200, 200, 200, 600]


def test_gif_with_captions_paths_and_mixed_sizes(tmp_path):
    pngs = [save_grid(digits(16, seed=s), tmp_path / f"step_{s}.png", scale=2) for s in range(3)]
    small = image_grid(digits(16, seed=9))  # half the size of the PNGs: resized to match
    frames = [*pngs, small]
    path = save_gif(frames, tmp_path / "progress.gif",
                    captions=[f"step {100 * (i + 1)}" for i in range(4)])
    first = open_image(pngs[0])
    with Image.open(path) as im:
        assert im.n_frames == 4
        assert im.width == first.width
        assert im.height > first.height  # the caption band sits above the grid
    with pytest.raises(ValueError):
        save_gif(frames, tmp_path / "bad.gif", captions=["only one"])
    with pytest.raises(ValueError):
        save_gif([], tmp_path / "empty.gif")


@pytest.mark.parametrize("fid_every", [None, 5])
def test_plot_losses_writes_png(tmp_path, fid_every):
    path = plot_losses(metric_rows(fid_every=fid_every), tmp_path / "losses.png", title="seed-001")
    assert path.stat().st_size > 0
    im = open_image(path)
    assert im.format == "PNG" and im.width > 600


def test_plot_losses_fid_adds_a_panel(tmp_path):
    without = open_image(plot_losses(metric_rows(), tmp_path / "a.png"))
    with_fid = open_image(plot_losses(metric_rows(fid_every=5), tmp_path / "b.png"))
    assert with_fid.height > without.height


def test_plot_losses_tolerates_missing_keys(tmp_path):
    rows = [{"step": 1, "d_loss": 0.7}, {"step": 2, "g_loss": 0.9, "fid": 150.0},
            {"step": 3}, {"step": 4, "d_acc_real": 0.5, "d_fake": 0.3, "fid": None}]
    assert plot_losses(rows, tmp_path / "sparse.png").stat().st_size > 0
    with pytest.raises(ValueError):
        plot_losses([], tmp_path / "none.png")


def test_comparison_is_wider_than_one_grid(tmp_path):
    real, fake = digits(16, seed=1), digits(16, seed=2)
    path = save_comparison(real, fake, tmp_path / "real_vs_fake.png", nrow=4)
    one_grid = image_grid(fake, nrow=4)
    im = open_image(path)
    assert im.width > 2 * one_grid.shape[1] * viz.COMPARISON_SCALE
    assert im.height > one_grid.shape[0] * viz.COMPARISON_SCALE  # titles above the grids


def test_written_files_open_with_expected_modes(tmp_path):
    images = digits(16)
    grid = save_grid(images, tmp_path / "grid.png")
    gif = save_gif([image_grid(images), image_grid(images[::-1])], tmp_path / "a.gif")
    losses = plot_losses(metric_rows(fid_every=4), tmp_path / "losses.png")
    comparison = save_comparison(images, images[::-1], tmp_path / "cmp.png")
    with Image.open(grid) as im:
        assert (im.format, im.mode) == ("PNG", "L")
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.mode in ("P", "L")
    with Image.open(losses) as im:
        assert im.format == "PNG" and im.mode in ("RGB", "RGBA")
    with Image.open(comparison) as im:
        assert (im.format, im.mode) == ("PNG", "L")


# -- atomic writes ---------------------------------------------------------------------------


def test_writes_leave_no_temp_files(tmp_path):
    images = digits(4)
    save_grid(images, tmp_path / "grid.png")
    save_grid(images[::-1], tmp_path / "grid.png")  # overwrite in place
    save_gif([image_grid(images), image_grid(images[::-1])], tmp_path / "a.gif",
             captions=["step 1", "step 2"])
    plot_losses(metric_rows(), tmp_path / "losses.png")
    save_comparison(images, images, tmp_path / "cmp.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "cmp.png", "grid.png",
                                                          "losses.png"]


def test_failed_write_keeps_old_file_and_cleans_up(tmp_path, monkeypatch):
    path = save_grid(digits(4), tmp_path / "grid.png")
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(UserError, match="disk full"):
        save_grid(digits(9, seed=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_plotting_does_not_load_pyplot(tmp_path):
    # pyplot would pick a GUI backend and keep global figure state; check in a fresh
    # interpreter that a whole training-side import never loads it.
    script = textwrap.dedent("""
        import sys, pathlib
        from mnistgan import viz
        import mnistgan.train
        out = pathlib.Path(sys.argv[1]) / "losses.png"
        viz.plot_losses([{"step": 1, "d_loss": 0.5}, {"step": 2, "d_loss": 0.4}], out)
        assert out.stat().st_size > 0
        assert "matplotlib.pyplot" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, timeout=120)
