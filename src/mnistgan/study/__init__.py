"""`mnistgan sweep`: a study of settings x seeds, each trial a normal run folder, on Optuna.

    spec.py      STUDY.toml -> `Study` (checked before anything runs); the example studies
    runner.py    the storage (SQLite in the study folder, or a database URL shared by several
                 machines), the queue of trials, workers that claim, train and evaluate them
    results.py   results.csv, the per-setting statistics and report.html

The study folder:

    STUDY/study.json         the study as run (what its trials share)
    STUDY/study.db           Optuna's storage (unless --storage names another)
    STUDY/runs/NNN-...-seedS/  one run folder per trial
    STUDY/logs/              each trial's command lines and their output
    STUDY/results.csv        one row per trial
    STUDY/report.html        the statistics, a plot of every trial, the best trial's samples
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..atomic import atomic_write
from ..errors import Interrupted, UserError
from .results import trial_rows, write_csv, write_report
from .runner import Worker, default_storage, open_storage, open_study, optuna_module, retry, shown_url
from .spec import Study, example_names, example_path, read_study

__all__ = ["Study", "example_names", "example_path", "read_study", "sweep"]


def sweep(study: Study, out: str | Path | None = None, jobs: int = 1, threads: int | None = None,
          storage: str | None = None, data_dir: str | None = None, retry_failed: bool = False,
          say: Callable[[str], None] | None = None) -> Path:
    """Run (or continue) `study`: `jobs` trials at once on this machine, each on `threads`
    CPU threads (default: the cores split between them); other processes given the same
    storage share the work; `retry_failed`: run the trials that failed (with an error) again.
    Writes and returns STUDY/results.csv (and report.html beside it) once no trial is left to
    start here."""
    say = say or (lambda text: print(text, flush=True))  # a line per trial, also into a log file
    optuna = optuna_module()
    folder = Path(out or Path("studies") / study.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make the study folder {folder} ({exc.strerror}): choose a "
                        "writable --out") from None
    url = storage or default_storage(folder)
    optuna_study = open_study(study, open_storage(url))
    shown = shown_url(url)
    atomic_write(folder / "study.json", json.dumps(
        {"storage": shown, "description": study.description, **study.identity()}, indent=2).encode())
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    say(f"study {study.name}: {_total(study)} trials in {folder} ({jobs} at a time, "
        f"{threads} thread{'s' * (threads > 1)} each; storage {shown})")
    if retry_failed:
        say(f"{retry(study, optuna_study)} failed trials queued again")
    stop = threading.Event()
    failures: list[BaseException] = []

    finished = [threading.Event() for _ in range(jobs)]

    def work(done: threading.Event) -> None:
        try:
            Worker(study, optuna_study, folder, threads, data_dir, say, stop).run()
        except BaseException as exc:  # handed to the main thread
            failures.append(exc)
            stop.set()
        finally:
            done.set()

    # Waited for through events, not Thread.join: a Ctrl-C that lands inside join() can leave
    # the thread looking finished while it still runs (CPython < 3.13).
    for done in finished:
        threading.Thread(target=work, args=(done,), name="trial-worker", daemon=True).start()
    interrupted = False
    with _ctrl_c_raises():
        try:
            for done in finished:
                while not done.wait(0.5):
                    pass
        except KeyboardInterrupt:
            interrupted = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainers are checkpointing
            say("stopping: the running trials save a checkpoint first")
            stop.set()
            for done in finished:
                done.wait()
            # Their trials stopped at a checkpoint: back in the queue now, one at a time.
            Worker(study, optuna_study, folder, threads, data_dir, say, stop).requeue_dead()
    rows = trial_rows(study, optuna_study)
    running = len(optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    write_csv(rows, folder / "results.csv")
    report = write_report(study, rows, folder, running)
    if failures:
        if isinstance(failures[0], (UserError, Interrupted)):
            raise failures[0]
        raise UserError(f"a trial worker stopped ({type(failures[0]).__name__}: {failures[0]}): see "
                        f"{folder / 'logs'}, then run the same command to continue")
    if interrupted:
        raise Interrupted(f"sweep stopped with {len(rows)} of {_total(study)} trials done; the same "
                          "command continues it", 130)
    failed = sum(r["status"] != "done" for r in rows)
    say(f"{len(rows) - failed} of {_total(study)} trials done"
        + (f", {failed} failed (--retry-failed runs them again)" if failed else "")
        + (f", {running} running elsewhere" if running else "")
        + f": {folder / 'results.csv'}, {report}")
    return folder / "results.csv"


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here even if the sweep inherited it ignored: a shell's
    background job (`nohup mnistgan sweep ... &`) starts that way, and `kill -INT` should stop a
    sweep as it stops a `mnistgan train` (whose own handler does not care how it started)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _total(study: Study) -> int:
    return len(study.seeds) * (len(study.grid()) if study.sampler == "grid" else study.settings)
