"""A study's results: one row per trial (STUDY/results.csv) and per setting the mean, the
spread over seeds and a bootstrap interval (STUDY/report.html, one self-contained page)."""

from __future__ import annotations

import csv
import html
import io
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..report import cell_text, data_uri
from ..viz import encode_trial_plot
from .spec import Study

# Scores every row carries besides the study's metric (when the evaluation measured them).
SCORES = ("fid", "kid", "precision", "recall", "conditional_accuracy", "inception_fid", "worst_digit",
          "worst_digit_fid")


def trial_rows(study: Study, optuna_study: Any) -> list[dict[str, Any]]:
    """One row per trial that finished (done, or failed with an error), in trial order; a
    trial put back in the queue after its worker stopped is not one (its copy is), nor a
    failed one that was run again (--retry-failed)."""
    import optuna

    trials = optuna_study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        failed = (trial.state == optuna.trial.TrialState.FAIL and "error" in attrs
                  and trial.number not in retried)
        if trial.state != optuna.trial.TrialState.COMPLETE and not failed:
            continue
        scores = attrs.get("scores", {})
        row = {"trial": trial.number, "setting": attrs["label"], **trial.params, "seed": attrs["seed"],
               study.metric: trial.value if not failed else None}
        row |= {k: scores[k] for k in SCORES if k in scores and k != study.metric}
        row |= {"steps": attrs.get("steps"), "wall_s": attrs.get("wall_s"),
                "train_s": attrs.get("train_s"), "run": attrs["run"], "host": attrs.get("host"),
                "status": "failed: " + attrs["error"] if failed else "done"}
        row["_floor"] = attrs.get("floor", {}).get(study.metric)
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and not k.startswith("_")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, buffer.getvalue().encode())


def bootstrap(samples: Sequence[Sequence[float]], statistic: Callable[..., float],
              rounds: int = 10000, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of `statistic(*resampled)`, each sample resampled with replacement
    on its own (seeded: the same data give the same interval)."""
    rng = random.Random(0)
    values = sorted(statistic(*(rng.choices(s, k=len(s)) for s in samples)) for _ in range(rounds))
    tail = (1 - level) / 2
    return values[int(tail * rounds)], values[int((1 - tail) * rounds) - 1]


# Student's t, 97.5 % quantile, by degrees of freedom (a two-sided 95 % interval).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def t975(df: float) -> float:
    """Rounded down (the wider interval) for Welch's fractional degrees of freedom."""
    return T975[min(max(int(df), 1), len(T975)) - 1] if df < len(T975) + 1 else 1.960


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """95 % interval of mean(b) - mean(a) without assuming equal spreads (Welch)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t975(df) * (va + vb) ** 0.5
    return diff - half, diff + half


@dataclass
class Summary:
    setting: str
    values: list[float]
    mean: float
    std: float
    low: float  # 95 % bootstrap interval of the mean
    high: float
    floor: float | None  # the metric on held-out real images (the same for every setting)


def summarise(study: Study, rows: list[dict[str, Any]]) -> list[Summary]:
    """Per setting, best first by the mean of the metric over seeds."""
    by_setting: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row[study.metric] is not None:
            by_setting.setdefault(row["setting"], []).append(row)
    out = []
    for setting, group in by_setting.items():
        values = [r[study.metric] for r in group]
        low, high = bootstrap([values], statistics.fmean) if len(values) > 1 else (values[0], values[0])
        out.append(Summary(setting, values, statistics.fmean(values),
                           statistics.stdev(values) if len(values) > 1 else 0.0, low, high,
                           group[0]["_floor"]))
    return sorted(out, key=lambda s: s.mean if study.minimize else -s.mean)


def verdict(study: Study, summaries: list[Summary]) -> str:
    """The plain sentence on whether the best setting beats the next one: by a 95 % interval
    of the difference of their means (Welch), not by eye from the two intervals."""
    if len(summaries) < 2:
        return ""
    best, second = summaries[0], summaries[1]
    if len(best.values) < 2 or len(second.values) < 2:
        return (f"With one seed per setting there is no spread to judge by: {best.setting} leads "
                f"{second.setting} on this seed only.")
    low, high = welch_interval(best.values, second.values)
    lead = (f"The best setting ({best.setting}, {study.metric} {best.mean:.4g}) and the next "
            f"({second.setting}, {second.mean:.4g}) differ by {second.mean - best.mean:+.4g}, 95 % "
            f"interval [{low:.4g}, {high:.4g}] over seeds (Welch)")
    if low <= 0 <= high:
        return (f"{lead}: the best setting is not separable from the next within the seed spread. "
                "Call it no difference, or run more seeds.")
    return f"{lead}: the best setting is separable from the next."


def write_report(study: Study, rows: list[dict[str, Any]], folder: Path, running: int = 0) -> Path:
    """STUDY/report.html: everything embedded, no scripts."""
    summaries = summarise(study, rows)
    esc = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>study {esc(study.name)}"
             "</title><style>body{font-family:sans-serif;margin:2em;max-width:70em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:left}td.n{text-align:right}</style></head><body>",
             f"<h1>Study {esc(study.name)}</h1>"]
    if study.description:
        parts.append(f"<p>{esc(study.description)}</p>")
    kind, amount = study.budget
    done = sum(r["status"] == "done" for r in rows)
    parts.append(f"<p id='about'>Base preset <code>{esc(study.base)}</code>, overrides "
                 f"<code>{esc(' '.join(study.overrides) or '-')}</code>; {amount:g} {kind} per trial, "
                 f"seeds {', '.join(map(str, study.seeds))}; {study.samples} samples per evaluation; "
                 f"{study.sampler} sampler. {done} trials done"
                 + (f", {running} still running" if running else "") + ".</p>")
    sentence = verdict(study, summaries)
    if sentence:
        parts.append(f"<p id='verdict'><strong>{esc(sentence)}</strong></p>")
    if summaries:
        parts.append(f"<h2>Per setting ({esc(study.metric)}, best first)</h2><table id='settings'>"
                     "<tr><th>setting</th><th>seeds</th><th>mean</th><th>std</th>"
                     "<th>95 % bootstrap interval of the mean</th><th>every seed</th></tr>")
        for s in summaries:
            parts.append(f"<tr><td>{esc(s.setting)}</td><td class='n'>{len(s.values)}</td>"
                         f"<td class='n'>{s.mean:.4g}</td><td class='n'>{s.std:.3g}</td>"
                         f"<td>[{s.low:.4g}, {s.high:.4g}]</td>"
                         f"<td>{', '.join(f'{v:.4g}' for v in s.values)}</td></tr>")
        if summaries[0].floor is not None:
            parts.append(f"<tr><td>real floor (held-out real images)</td><td></td>"
                         f"<td class='n'>{summaries[0].floor:.4g}</td><td></td><td></td><td></td></tr>")
        parts.append("</table>")
        plot = encode_trial_plot(
            [(s.setting, s.values) for s in summaries],
            f"{study.metric} ({'lower' if study.minimize else 'higher'} is better); one dot per seed",
            summaries[0].floor)
        parts.append(f"<h2>Every trial</h2><img id='strip' alt='{esc(study.metric)} of every trial' "
                     f"src='{data_uri(plot)}'>")
        best = min((r for r in rows if r["status"] == "done"),
                   key=lambda r: r[study.metric] if study.minimize else -r[study.metric])
        grids = sorted((folder / best["run"] / "samples").glob("step_*.png"))
        parts.append(f"<h2>The best trial: {esc(best['setting'])}, seed {best['seed']}</h2>")
        if grids:
            parts.append(f"<img id='best-grid' alt='samples of the best trial' "
                         f"src='{data_uri(grids[-1].read_bytes())}'>"
                         f"<p>{esc(str(best['run']))}, {esc(grids[-1].stem.replace('_', ' '))}</p>")
        else:
            parts.append(f"<p>Its run folder {esc(str(best['run']))} is on {esc(str(best['host']))}.</p>")
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        parts.append("<h2>Failed trials</h2><ul>" + "".join(
            f"<li>{esc(r['setting'])}, seed {r['seed']}: {esc(r['status'])}</li>" for r in failed) + "</ul>")
    columns = [c for c in rows[0] if not c.startswith("_")] if rows else []
    def cells(row: dict[str, Any]) -> str:
        return "".join(f"<td>{esc('' if row.get(c) is None else cell_text(row[c]))}</td>" for c in columns)

    parts.append("<h2>Results</h2><table id='trials'><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns)
                 + "</tr>" + "".join(f"<tr>{cells(r)}</tr>" for r in rows) + "</table>")
    parts.append("</body></html>")
    return atomic_write(folder / "report.html", "\n".join(parts).encode())

