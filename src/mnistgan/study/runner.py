"""Running a study: Optuna's storage holds the trials, workers claim and run them.

A trial is one (setting, seed): a normal run folder, trained and then evaluated by the
command line (`mnistgan train`, `mnistgan evaluate`) in a child process, so that every trial
is what a user would get by hand. Grid and random studies put every trial in the storage's
queue when the study is created; TPE draws a new setting (with its other seeds queued) when
the queue is empty. A worker claims a queued trial by moving it from WAITING to RUNNING,
which the storage does for one claimant only, so workers in one process (`jobs`), in several
processes, or on several machines sharing a database URL never run a trial twice.

A trial whose worker died (killed sweep, lost machine) is put back in the queue: at once
when it ran on this machine (its claim file's lock is free), after `STALE_AFTER` without a
heartbeat otherwise. The copy uses the same run folder, so training resumes from the last
checkpoint rather than starting again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from ..checkpoint import list_checkpoints
from ..errors import Interrupted, UserError
from .spec import VARIANT, Range, Study

# What a trial put back in the queue keeps: its place in the study, its run folder, and
# whether that run finished training.
KEPT = ("seed", "setting", "label", "run", "drawn", "trained", "retry_of")
STALE_AFTER = 600.0  # seconds without a heartbeat before another machine's trial is retried
HEARTBEAT = 60.0


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("mnistgan sweep needs Optuna: pip install 'mnistgan[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    """Optuna's RDB storage at `url`; a URL that cannot be opened is one line."""
    optuna = optuna_module()
    sqlite = url.startswith("sqlite:///")
    try:
        # Opening a new SQLite file creates its tables: one process at a time.
        with _file_lock(Path(url[len("sqlite:///"):] + ".lock")) if sqlite else contextlib.nullcontext():
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": {"timeout": 120}} if sqlite else None)
    except UserError:
        raise
    except Exception as exc:  # SQLAlchemy's many kinds: bad URL, missing driver, refused connection
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot open the storage {shown_url(url)} ({reason[:200]}): give a database URL "
                        "such as sqlite:///path/study.db or postgresql://user@host/db") from None
    if sqlite:
        _serialise_sqlite(storage.engine)
    return storage


def shown_url(url: str) -> str:
    """The URL with its password hidden, for messages and study.json."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: nothing in it to hide
        return url


def _serialise_sqlite(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it starts (BEGIN IMMEDIATE).
    Python's sqlite3 otherwise begins a transaction only at its first write, so two processes
    could both read a trial as WAITING and both claim it (SQLAlchemy's pysqlite recipe)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN: the one below

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners go


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def open_study(study: Study, storage: Any) -> Any:
    """The study in `storage`, created with its queue of trials if new. A study of the same
    name with other settings is refused (its trials would not be comparable)."""
    optuna = optuna_module()
    direction = "minimize" if study.minimize else "maximize"
    # Unseeded: a second process (or a resumed sweep) must not redraw the first one's settings.
    sampler = optuna.samplers.TPESampler() if study.sampler == "tpe" else None
    try:
        created = optuna.create_study(study_name=study.name, storage=storage, direction=direction,
                                      sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        created = None
    if created is not None:
        created.set_user_attr("spec", study.identity())
        for index, setting in enumerate(_queued_settings(study)):
            for seed in study.seeds:
                created.enqueue_trial(_encode(setting), user_attrs=_trial_attrs(index, setting, seed))
        created.set_user_attr("ready", True)
        return created
    loaded = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
    for _ in range(600):  # another process is still queueing its trials
        if loaded.user_attrs.get("ready"):
            break
        time.sleep(0.2)
        loaded = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler)
    else:
        raise UserError(f"study '{study.name}' in the storage was never finished being set up (its "
                        "creator stopped): delete it (optuna delete-study) or give another --out")
    stored = loaded.user_attrs.get("spec")
    if stored != study.identity():
        keys = sorted(k for k in study.identity() if (stored or {}).get(k) != study.identity()[k])
        raise UserError(f"the storage already holds study '{study.name}' with another "
                        f"{', '.join(keys)}: run the same study file, or give another --out "
                        "(or name) for this one")
    return loaded


def _queued_settings(study: Study) -> list[dict[str, Any]]:
    """The settings queued when the study is made: all of them (grid), `settings` drawn by
    Optuna's random sampler (random), none (TPE draws as it goes)."""
    if study.sampler == "grid":
        return study.grid()
    if study.sampler == "tpe":
        return []
    optuna = optuna_module()
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    settings: list[dict[str, Any]] = []
    while len(settings) < study.settings:  # check() made sure there are enough distinct ones
        setting = _decode(study, draw.ask(_distributions(study)).params)
        if setting not in settings:
            settings.append(setting)
    return settings


def _distributions(study: Study) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, axis in study.all_axes().items():
        if isinstance(axis, Range):
            kind = IntDistribution if axis.integer else FloatDistribution
            low, high = (int(axis.low), int(axis.high)) if axis.integer else (axis.low, axis.high)
            out[key] = kind(low, high, log=axis.log)
        else:
            out[key] = CategoricalDistribution([_choice(v) for v in axis])
    return out


def _suggest(study: Study, trial: Any) -> dict[str, Any]:
    """The trial's value on every axis: its queued one, or the sampler's draw."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    for key, dist in _distributions(study).items():
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(key, dist.low, dist.high, log=dist.log)
        else:
            trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return dict(trial.params)


def _choice(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a list value travels as its JSON."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _encode(setting: dict[str, Any]) -> dict[str, Any]:
    return {key: _choice(value) for key, value in setting.items()}


def _decode(study: Study, params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, axis in study.all_axes().items():
        value = params[key]
        out[key] = (next(v for v in axis if _choice(v) == value) if isinstance(axis, list) else value)
    return out


def setting_label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{value}" if key == VARIANT else
                     f"{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in setting.items())


def _trial_attrs(index: int, setting: dict[str, Any], seed: int) -> dict[str, Any]:
    short = "-".join(str(v) if k == VARIANT else f"{k.split('.')[-1]}-{v}" for k, v in setting.items())
    slug = "".join(c if c.isalnum() or c in ".-" else "-" for c in short.lower())
    return {"seed": seed, "setting": index, "label": setting_label(setting),
            "run": f"runs/{index:03d}-{slug[:60].strip('-')}-seed{seed}"}


def _kept(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: attrs[k] for k in KEPT if k in attrs}


def retry(study: Study, optuna_study: Any) -> int:
    """Queue again every trial that failed with an error and has not been retried."""
    optuna = optuna_module()
    trials = optuna_study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs
              and t.number not in retried]
    for trial in failed:
        attrs = _kept(trial.user_attrs) | {"retry_of": trial.number}
        optuna_study.enqueue_trial(trial.params, user_attrs=attrs)
    return len(failed)


class Worker:
    """Claims and runs trials until the queue is empty or `stop` is set."""

    def __init__(self, study: Study, optuna_study: Any, folder: Path, threads: int,
                 data_dir: str | None, say: Callable[[str], None], stop: threading.Event) -> None:
        self.study, self.optuna_study, self.folder = study, optuna_study, folder
        self.storage = optuna_study._storage  # the study's own, so claims and tells agree
        self.study_id = self.storage.get_study_id_from_name(study.name)
        self.threads, self.data_dir, self.say, self.stop = threads, data_dir, say, stop
        self.host = socket.gethostname()
        # A claim file's lock says whether a trial's worker lives only to a worker that sees the
        # same file: same machine and same study folder. Other trials go by their heartbeat.
        self.claims = f"{_machine_id()}:{(folder / 'claims').resolve()}"

    def run(self) -> None:
        while not self.stop.is_set():
            self.requeue_dead()
            claimed = self.claim()
            if claimed is None:
                return
            trial, lock = claimed
            try:
                self.run_trial(trial)
            finally:
                lock.close()
            # Finished, or stopped and put back in the queue as a new trial by `requeue_dead`:
            # a lock probe recreates the file if it ever looks again.
            (self.folder / "claims" / f"{trial._trial_id}.lock").unlink(missing_ok=True)

    # -- the queue ----------------------------------------------------------------------

    def claim(self) -> tuple[Any, IO[str]] | None:
        """A trial now RUNNING for this worker and its claim file, locked while it runs."""
        optuna = optuna_module()
        waiting = self.storage.get_all_trials(self.study_id, deepcopy=False,
                                              states=(optuna.trial.TrialState.WAITING,))
        for frozen in waiting:
            lock = self._claim_lock(frozen._trial_id)
            if lock is None:
                continue
            try:
                if self.storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.RUNNING):
                    return self._started(optuna.Trial(self.optuna_study, frozen._trial_id)), lock
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            lock.close()
        if self.study.sampler != "tpe":
            return None
        # Counting the drawn settings and drawing the next is one step for all workers of this
        # folder (threads and processes): two workers that both saw one setting left would
        # otherwise both draw one.
        (self.folder / "claims").mkdir(parents=True, exist_ok=True)
        with _file_lock(self.folder / "claims" / "draw.lock"):
            if self._drawn_settings() >= self.study.settings:
                return None
            trial = self.optuna_study.ask()  # pops a trial queued meanwhile, or draws a setting
            lock = self._claim_lock(trial._trial_id)
            for _ in range(50):  # a popped one: another worker may be letting go of its claim file
                if lock is not None:
                    break
                time.sleep(0.1)
                lock = self._claim_lock(trial._trial_id)
            else:
                raise UserError(f"cannot take the claim file of trial {trial.number}: run the sweep again")
            if "seed" not in trial.user_attrs:  # a new setting: queue its other seeds
                index = trial.number
                setting = _decode(self.study, _suggest(self.study, trial))
                for key, value in _trial_attrs(index, setting, self.study.seeds[0]).items():
                    trial.set_user_attr(key, value)
                trial.set_user_attr("drawn", True)
                for seed in self.study.seeds[1:]:
                    self.optuna_study.enqueue_trial(_encode(setting),
                                                    user_attrs=_trial_attrs(index, setting, seed))
        return self._started(trial), lock

    def _drawn_settings(self) -> int:
        return len({t.user_attrs["setting"] for t in self.optuna_study.get_trials(deepcopy=False)
                    if t.user_attrs.get("drawn")})

    def _claim_lock(self, trial_id: int) -> IO[str] | None:
        """The claim file of a trial, locked by this worker; None if another holds it."""
        path = self.folder / "claims" / f"{trial_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return _try_lock(path)

    def _started(self, trial: Any) -> Any:
        _suggest(self.study, trial)  # records a queued trial's values as its params
        trial.set_user_attr("host", self.host)
        trial.set_user_attr("claims", self.claims)
        trial.set_user_attr("alive", time.time())
        return trial

    def requeue_dead(self) -> None:
        """Put back in the queue the trials whose worker has gone."""
        optuna = optuna_module()
        running = self.optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for frozen in running:
            attrs = frozen.user_attrs
            if attrs.get("claims") == self.claims:
                lock = self._claim_lock(frozen._trial_id)
                if lock is None:
                    continue  # its worker is alive
                lock.close()
            elif time.time() - attrs.get("alive", frozen.datetime_start.timestamp()) < STALE_AFTER:
                continue
            try:
                if not self.storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker put it back first
            params = frozen.system_attrs.get("fixed_params") or frozen.params
            if set(params) != set(self.study.all_axes()) or "run" not in attrs:
                continue  # died while TPE drew its setting: TPE draws another
            self.optuna_study.enqueue_trial(params, user_attrs=_kept(attrs))
            self.say(f"put back trial {frozen.number} ({attrs.get('label')}, seed {attrs.get('seed')}): "
                     "its worker stopped")

    # -- one trial ------------------------------------------------------------------------

    def run_trial(self, trial: Any) -> None:
        optuna = optuna_module()
        attrs = trial.user_attrs
        run = self.folder / attrs["run"]
        log = self.folder / "logs" / f"{run.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        setting = _decode(self.study, trial.params)
        beat = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(trial, beat), daemon=True)
        heartbeat.start()
        start = time.perf_counter()
        try:
            scores = self.trained_and_evaluated(trial, run, setting, log)
        except Interrupted:
            # Stopped by the user: left RUNNING with its claim released, so that `requeue_dead`
            # puts it back in the queue, the one way a stopped trial returns.
            return
        except UserError as exc:
            trial.set_user_attr("error", str(exc))
            self.optuna_study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.say(f"trial {trial.number} ({attrs['label']}, seed {attrs['seed']}) failed: {exc}")
            return
        finally:
            beat.set()
        from ..run import read_metrics

        rows = read_metrics(run / "metrics.jsonl")
        value = scores["generated"][self.study.metric]
        try:
            trial.set_user_attr("scores", scores["generated"])
            trial.set_user_attr("floor", scores["real"])
            trial.set_user_attr("steps", scores.get("step"))
            trial.set_user_attr("wall_s", round(time.perf_counter() - start, 1))
            trial.set_user_attr("train_s", rows[-1].get("wall_s") if rows else None)  # all sessions
            self.optuna_study.tell(trial, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            # Its heartbeat was missed (a sleeping laptop, a lost database) and another worker
            # queued it again: that copy's result will stand.
            self.say(f"trial {trial.number} was taken over by another worker: its result is dropped")
            return
        self.say(f"trial {trial.number} done: {attrs['label']}, seed {attrs['seed']}: "
                 f"{self.study.metric} {value:.4g} ({scores.get('step')} steps, "
                 f"{time.perf_counter() - start:.0f} s)")

    def _heartbeat(self, trial: Any, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT):
            with contextlib.suppress(Exception):  # a lost connection must not kill the trial
                self.storage.set_trial_user_attr(trial._trial_id, "alive", time.time())

    def trained_and_evaluated(self, trial: Any, run: Path, setting: dict[str, Any], log: Path) -> dict:
        """Train the trial's run (resuming it if an earlier worker left a checkpoint), then
        evaluate it; a run already trained is not trained again, one evaluated not redone."""
        evaluation = run / "eval.json"
        if evaluation.exists():
            done = json.loads(evaluation.read_text())
            if done.get("samples") == self.study.samples and self.study.metric in done["generated"]:
                return done
        kind, amount = self.study.budget
        length = {"steps": ["--steps", str(amount)], "epochs": ["--epochs", str(amount)],
                  "minutes": ["--minutes", str(amount)]}[kind]
        data = ["--data-dir", self.data_dir] if self.data_dir else []
        mnistgan = [sys.executable, "-m", "mnistgan"]
        _wait_unlocked(run)  # a killed sweep's trainer may still be writing its last checkpoint
        checkpoints = list_checkpoints(run / "checkpoints")
        if not trial.user_attrs.get("trained") and not _finished(run):
            if checkpoints:
                train = [*mnistgan, "train", "--resume", str(run), "--no-progress", *data]
                train += length if kind != "minutes" else []
            else:
                shutil.rmtree(run, ignore_errors=True)  # started, but not as far as a checkpoint
                train = [*mnistgan, "train", "--preset", self.study.base, "--out", str(run),
                         "--threads", str(self.threads), "--no-progress", *data, *length,
                         *(f"--set={item}" for item in
                           self.study.overrides_for(setting, trial.user_attrs["seed"]))]
            self._child(train, log)
            trial.set_user_attr("trained", True)
        evaluate = [*mnistgan, "evaluate", str(run), "--n", str(self.study.samples), *data]
        self._child(evaluate + (["--inception"] if self.study.metric == "inception_fid" else []), log)
        return json.loads(evaluation.read_text())

    def _child(self, command: list[str], log: Path) -> None:
        env = os.environ | {"OMP_NUM_THREADS": str(self.threads)}
        with log.open("a", encoding="utf-8") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            # A session of its own: a terminal's Ctrl-C reaches the sweep, which passes on one
            # SIGINT (a trainer takes a second one as "stop now, without a checkpoint").
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, preexec_fn=_die_with_parent)
            while process.poll() is None:
                try:
                    process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    if self.stop.is_set():
                        process.send_signal(signal.SIGINT)  # checkpoint and stop
                        process.wait()
        if process.returncode in (130, 143, -signal.SIGINT, -signal.SIGTERM) or self.stop.is_set():
            raise Interrupted("interrupted", 130)
        if process.returncode != 0:
            lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
            raise UserError(f"{command[3]} exited with {process.returncode}: "
                            f"{lines[-1] if lines else 'no output'} (see {log})")


def _try_lock(path: Path) -> IO[str] | None:
    """`path` opened and exclusively locked (until closed); None if another holds the lock."""
    import fcntl

    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _wait_unlocked(run: Path, seconds: float = 120.0) -> None:
    """Wait until no process holds the run folder's lock (see run.py)."""
    if not (run / ".lock").exists():
        return
    deadline = time.monotonic() + seconds
    while (handle := _try_lock(run / ".lock")) is None:
        if time.monotonic() > deadline:
            raise UserError(f"{run} stays in use by another process: stop it, then run the sweep again")
        time.sleep(0.2)
    handle.close()


def _finished(run: Path) -> bool:
    """Whether the run's training ran to its end: its log's last word on it is "finished"."""
    try:
        lines = (run / "log.txt").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in reversed(lines):
        words = line.split(" ", 2)
        if len(words) > 1 and words[1] == "finished":
            return True
        if len(words) > 1 and words[1] in ("stopped", "resumed"):
            return False
    return False


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            return Path(path).read_text().strip()
    return socket.gethostname()


def _prctl() -> Any:
    with contextlib.suppress(Exception):
        import ctypes

        return ctypes.CDLL(None).prctl
    return None


# Looked up here, in the parent: after fork, with other threads running, the child may only
# make the call (loading a library there can deadlock).
PRCTL = _prctl()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the sweep dies, even by kill -9, so that no orphan goes on
    training into a run folder the resumed sweep will claim (training checkpoints and stops)."""
    if PRCTL is not None:
        PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
