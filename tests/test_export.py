"""`mnistgan export RUN --onnx FILE`: the generator in onnxruntime matches PyTorch."""

import numpy as np
import pytest
import torch

from mnistgan import load_config, load_generator, train
from mnistgan.cli import main
from mnistgan.export import export_onnx

ort = pytest.importorskip("onnxruntime")

TINY = ["train.steps=2", "train.log_every=1", "train.sample_every=1000", "train.grid_size=4"]


@pytest.mark.parametrize("preset, extra", [
    ("seed-002", ["train.batch_size=8"]),  # MLP
    ("seed-000", ["train.batch_size=8"]),  # upsampling convs, batch norm, dropout
    ("best", ["train.batch_size=8"]),      # class-conditional: a labels input
])
def test_onnx_matches_pytorch_for_any_batch(preset, extra, tmp_path, mnist_dir):
    run = train(load_config(preset, [*TINY, *extra]), out=tmp_path / "run", progress=False).run_dir
    onnx_file = tmp_path / "g.onnx"
    assert main(["export", str(run), "--onnx", str(onnx_file)]) == 0
    gen = load_generator(run)
    session = ort.InferenceSession(str(onnx_file))
    assert [i.name for i in session.get_inputs()] == (["z", "labels"] if gen.classes else ["z"])
    for n in (1, 7):
        z = gen.noise(n, seed=n)
        labels = gen.labels(n)
        feed = {"z": z.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
        (images,) = session.run(None, feed)
        with torch.inference_mode():
            expected = gen.net(z, labels).numpy()
        assert images.shape == (n, 1, 28, 28)
        assert np.abs(images - expected).max() < 1e-4


@pytest.mark.parametrize("output", ["none", "clamp_black"])
def test_linear_and_clamp_black_outputs_export_clamped_to_the_data_range(tmp_path, mnist_dir, output):
    config = load_config("best", [*TINY, "train.batch_size=8", f"generator.output={output}"])
    gen = load_generator(train(config, out=tmp_path / "run", progress=False).run_dir)
    last = [m for m in gen.net.modules() if getattr(m, "weight", None) is not None][-1]
    with torch.no_grad():
        last.weight.mul_(50)  # raw outputs far outside [-1, 1]
    onnx_file = export_onnx(gen, tmp_path / "g.onnx")
    z, labels = gen.noise(16, seed=3), gen.labels(16)
    (images,) = ort.InferenceSession(str(onnx_file)).run(None, {"z": z.numpy(), "labels": labels.numpy()})
    with torch.inference_mode():
        raw = gen.net(z, labels).numpy()
    if output == "none":
        assert raw.min() < -1.5 and raw.max() > 1.5
    else:  # its own clamp at the black end, tanh (saturated by the scaled weights) at the white
        assert raw.min() == -1 and raw.max() <= 1
    assert np.abs(images - raw.clip(-1, 1)).max() < 1e-4
    pixels = np.rint(raw.clip(-1, 1) * 127.5 + 127.5)[:, 0].astype(np.uint8)
    assert np.array_equal(gen.decode(z, labels), pixels)  # sampling clamps the same way


def test_export_refuses_bad_requests_in_one_line(tmp_path, mnist_dir, capsys):
    run = train(load_config("seed-002", [*TINY, "train.batch_size=8"]), out=tmp_path / "run",
                progress=False).run_dir
    cases = [
        ([str(run / "discriminator.safetensors"), "--onnx", str(tmp_path / "d.onnx")], "not a generator"),
        ([str(run), "--onnx", str(tmp_path / "g.txt")], "ending in .onnx"),
        ([str(run), "--onnx", str(run / "log.txt" / "g.onnx")], "cannot write there"),
        ([str(tmp_path / "missing"), "--onnx", str(tmp_path / "g.onnx")], "does not exist"),
    ]
    for args, words in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.onnx"))
