"""`mnistgan report`: one self-contained page comparing runs."""

import base64
import re

from mnistgan import load_config, train
from mnistgan.cli import main

TINY = ["train.steps=3", "train.batch_size=8", "train.log_every=1", "train.sample_every=2",
        "train.grid_size=4"]


def test_report_compares_two_runs_on_one_self_contained_page(tmp_path, mnist_dir, capsys):
    runs = []
    for dist in ("uniform", "semicircle"):
        config = load_config("seed-000", [*TINY, f"noise.dist={dist}"])
        config.name = "<b>" + dist  # a name to be escaped
        runs.append(train(config, out=tmp_path / dist, progress=False).run_dir)
    out = tmp_path / "report.html"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    # The differing key, with both values; the shared ones only in the full table.
    differ = page.split("config keys that differ")[1].split("</table>")[0]
    assert "noise.dist" in differ and "uniform" in differ and "semicircle" in differ
    assert "train.batch_size" not in differ and "train.batch_size" in page
    assert "&lt;b&gt;uniform" in page and "<b>uniform" not in page
    # Self-contained: every image is embedded and decodes; nothing is fetched.
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 6  # grid, GIF and loss curves per run
    for src in sources:
        assert src.startswith("data:image/")
        base64.b64decode(src.split(",", 1)[1], validate=True)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "d_loss" in page  # the last metric row of each run


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert "not an mnistgan run folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
