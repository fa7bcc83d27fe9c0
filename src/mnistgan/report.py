"""One self-contained HTML page comparing run folders side by side.

Everything is embedded (images as data URIs, no scripts, no external assets), so the page can
be mailed or archived as one file. For each run: its final sample grid, its progress GIF, its
loss curves, its last metric row (and RUN/eval.json if `mnistgan evaluate` wrote one);
above them, the config keys whose values differ between the runs.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .atomic import atomic_write, writable
from .checkpoint import newer_checkpoints
from .errors import UserError
from .run import read_metrics

METRICS = ("step", "epoch", "d_loss", "g_loss", "d_acc_real", "d_acc_fake", "fid", "kid",
           "precision", "recall", "class_entropy", "conditional_accuracy", "wall_s")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}"""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out


def _read_run(path: Path) -> dict[str, Any]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path} is not an mnistgan run folder (no config.json): give run folders")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{config_file} is not valid JSON: restore it or leave the run out") from None
    rows = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").exists() else []
    grids = sorted((path / "samples").glob("step_*.png"))
    evaluation = None
    if (path / "eval.json").is_file():
        try:
            saved = json.loads((path / "eval.json").read_text(encoding="utf-8"))
            # The step it measured: after a resume the run may have moved on since.
            evaluation = {"step": saved.get("step"), **saved["generated"]}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise UserError(f"{path / 'eval.json'} is damaged: delete it or run mnistgan evaluate "
                            f"{path} again") from None
    last = rows[-1] if rows else {}
    # A run killed or still training has no final weights and plots yet: shown as it stands.
    unfinished = None
    if newer_checkpoints(path) or not (path / "generator.safetensors").is_file():
        unfinished = f"{path} is unfinished: shown as of step {last.get('step', 0)}, its newest logged row"
    return {"path": path, "config": flatten(config), "last": last,
            "grid": grids[-1] if grids else None, "gif": path / "progress.gif",
            "losses": path / "losses.png", "eval": evaluation, "unfinished": unfinished}


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """`data` embedded in a page (an <img> src), so the page is one self-contained file."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image(path: Path | None, mime: str, alt: str) -> str:
    if path is None or not path.is_file():
        return f"<p class=missing>no {html.escape(alt)}</p>"
    return f'<img alt="{html.escape(alt)}" src="{data_uri(path.read_bytes(), mime)}">'


def cell_text(value: Any) -> str:
    """A value as a table shows it: floats to 4 significant digits, structures as JSON."""
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(
        value, (list, dict, bool)) or value is None else str(value)


def _cell(value: Any) -> str:
    return f"<td>{html.escape(cell_text(value))}</td>"


def write_report(runs: list[str | Path], out: str | Path,
                 note: Callable[[str], None] = lambda text: None) -> Path:
    """Compare `runs` on one HTML page written to `out`; `note` hears one line about each
    unfinished run."""
    if not runs:
        raise UserError("give at least one run folder to report on")
    writable(out, "--out")
    items = [_read_run(Path(r)) for r in runs]
    for item in items:
        if item["unfinished"]:
            note(item["unfinished"])
    names = [html.escape(str(r["path"])) for r in items]
    keys = sorted(set().union(*(r["config"] for r in items)))
    differing = [k for k in keys if len({json.dumps(r["config"].get(k)) for r in items}) > 1]

    def table(rows: list[str], title: str) -> str:
        head = "".join(f"<th>{n}</th>" for n in names)
        return (f"<table><caption>{title}</caption><tr><th>key</th>{head}</tr>"
                + "".join(rows) + "</table>")

    def config_rows(which: list[str]) -> list[str]:
        return [f"<tr><th>{html.escape(k)}</th>" + "".join(_cell(r["config"].get(k)) for r in items)
                + "</tr>" for k in which]

    metric_keys = [k for k in METRICS if any(k in r["last"] for r in items)]
    metric_rows = [f"<tr><th>{k}</th>" + "".join(_cell(r["last"].get(k, "")) for r in items) + "</tr>"
                   for k in metric_keys]
    eval_keys = sorted(set().union(*((r["eval"] or {}) for r in items)))
    eval_rows = [f"<tr><th>{html.escape(k)}</th>" + "".join(_cell((r["eval"] or {}).get(k, ""))
                                                             for r in items) + "</tr>" for k in eval_keys]
    columns = "".join(
        f"<div class=run><h2>{name}</h2>"
        + (f"<p class=missing>{html.escape(r['unfinished'])}</p>" if r["unfinished"] else "")
        + f"{_image(r['grid'], 'image/png', 'final sample grid')}"
        f"{_image(r['gif'], 'image/gif', 'progress GIF')}"
        f"{_image(r['losses'], 'image/png', 'loss curves')}</div>"
        for name, r in zip(names, items, strict=True))
    same = "<p>The configs are identical.</p>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mnistgan report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin: 1em 0; }} caption {{ text-align: left; font-weight: bold; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; font-size: 90%; }}
.runs {{ display: flex; gap: 2em; flex-wrap: wrap; }}
.run img {{ display: block; max-width: 420px; margin: 0.5em 0; }}
.missing {{ color: #999; }}
</style></head><body>
<h1>mnistgan: {len(items)} run{'s' if len(items) > 1 else ''}</h1>
{table(config_rows(differing), "config keys that differ") if differing else same}
{table(metric_rows, "last logged metrics") if metric_rows else ""}
{table(eval_rows, "mnistgan evaluate (RUN/eval.json)") if eval_rows else ""}
<div class=runs>{columns}</div>
<details><summary>every config key</summary>{table(config_rows(keys), "full configs")}</details>
</body></html>
"""
    return atomic_write(out, page.encode("utf-8"))
