"""`dlnn work STUDY`: a worker that trains trials until the study's budget is used.

How a worker behaves:
- It runs `study.optimize` on an RDBStorage with a heartbeat and a grace period well above its
  interval, and Optuna's RetryHeartbeatStaleTrialCallback: a killed worker's trial is failed by
  another worker once its heartbeat is older than the grace period and re-queued with the same
  params (only the killed run's progress is lost).
- The budget is the study's, counted across all workers (service.ServiceStudy). When it is used
  up the worker stays until no trial of the study is running or queued, failing stale ones, so
  a dead worker's trial is still retried and nothing is left RUNNING when the workers exit.
- SIGTERM/SIGINT: the current trial stops at its next epoch, is recorded as failed with the
  reason and re-queued (retryable, not complete), the connections are released and the worker
  exits 0. A second signal exits at once (its trial is then retried after the grace period);
  only while a stopped trial is being failed and re-queued does it wait for those few writes.
  A trial cut by a lost database connection is re-queued the same way once the database is back.
  Neither counts against the spec's max_retry, which bounds only the retries of dead workers' trials.
- Each epoch reports the validation error for pruning (fit's report callback raises
  optuna.TrialPruned); the last epoch is reported but never pruned: a trial that trained every epoch
  completes with its checkpoint instead of being lost to every completed-trial table. A trial that
  diverges or runs out of GPU memory is recorded as PRUNED with
  its reason and the constraint `diverged` = 1: a pruned trial keeps its learning curve, and
  TPE ranks infeasible trials below every feasible one, so the sampler learns to avoid that
  region instead of ignoring it (a FAIL is invisible to samplers). Other trials carry no
  constraint, which Optuna reads as feasible. GP and CMA-ES model completed trials only, so for them a diverged trial is
  simply not a candidate for the best. Any other exception fails that trial alone (with its
  reason) and the worker goes on.
- A trial still training when the study's budget.timeout_s has passed stops at that epoch
  (PRUNED, status "timeout"): no trial outlives the study by more than one epoch.
- Reading the study is cheap however large it grows: samplers and pruners read a cached, sorted
  view refreshed at most twice a second (storage.TrialView).
- A trial's final evaluation computes what the objectives need (the rollouts are its cost: a
  val_rel_mse study rolls out nothing). References (baselines, verify runs) and every trial that
  is among the FULL_EVALUATION_TOP best when it completes (on the Pareto front, for several
  objectives) get every metric, re-evaluated from the checkpoint after `fit`, outside its
  wall_time_s. The study's final top trials are always among them: a trial among the K best at
  the end was among the K best of the fewer trials done when it completed. The rollout plot
  artifact (a rollout as costly as the evaluation's) is drawn for the same trials.
- Each trial stores what records.py lists (the config, the worker, every metric as its
  own sortable attr, its `status` and `reason`) and, as artifacts, its checkpoint and (see above)
  a predicted-vs-true rollout plot. Error objectives are reported and returned as log10 (the
  per-epoch values too), so an exploding trial does not flatten the dashboard's plots.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from dlnn_core.optim import relative_lr

from . import records
from ..store.disk import CleanArtifactStore, no_space_reason
from ..errors import UsageError
from .service import CONSTRAINT, BudgetReached, build_study, stored_spec
from ..spec.space import suggest
from ..spec.schema import PRUNING_METRIC, StudySpec
from ..store.optuna_private import constraint_key, retry_history, trial_id
from ..store.storage import artifact_store, close_storage, connection_error_of, is_connection_error, open_storage
from ..store.urls import redact

CONNECTION_PATIENCE_S = 600.0  # how long a worker waits for a lost database before giving up
FULL_EVALUATION_TOP = 5  # completed trials this far up get every metric (as many as `dlnn export` exports by default)


class GracefulStop(Exception):
    """Raised at the next epoch after SIGTERM/SIGINT: the trial is failed and re-queued."""


class StudyTimeout(optuna.TrialPruned):
    """Raised at the first epoch that ends after the study's budget.timeout_s: the trial is
    recorded as pruned (status "timeout") with its learning curve so far."""


def _study_deadline(trial: optuna.Trial, timeout_s: float | None) -> float | None:
    """The study's end as a time.time() value: timeout_s after its first trial started."""
    if timeout_s is None:
        return None
    starts = [t.datetime_start for t in trial.study.get_trials(deepcopy=False) if t.datetime_start is not None]
    return min(starts).timestamp() + timeout_s if starts else time.time() + timeout_s


@dataclass
class StopFlag:
    """Set by the first signal; the second one exits the process at once, except while a stopped
    trial is being failed and re-queued (a few database writes), so that it is never lost."""

    signal: str | None = None
    log: Callable[[str], None] = print
    _event: threading.Event = field(default_factory=threading.Event)
    _deferred: bool = False
    _exit_code: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.signal is not None:
            if self._deferred:
                self._exit_code = 128 + signum
                self.log(f"second signal ({name}): exiting as soon as the stopped trial is re-queued")
                return
            self.log(f"second signal ({name}): exiting now")
            os._exit(128 + signum)
        self.signal = name
        self._event.set()
        self.log(f"{name}: stopping at the next epoch; the trial will be re-queued (signal again to exit now)")

    def defer_exit(self) -> None:
        self._deferred = True

    def release(self) -> None:
        self._deferred = False
        if self._exit_code is not None:
            os._exit(self._exit_code)

    def sleep(self, seconds: float) -> None:
        self._event.wait(seconds)


def _among_best(trial: optuna.Trial, values: list[float]) -> bool:
    """Whether these objective values (raw) would be among the study's FULL_EVALUATION_TOP best
    completed trials, or, with several objectives, dominated by none of them."""
    study = trial.study
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    scales = records.stored_scales(study)
    mine = [s * v for s, v in zip(signs, values)]
    done = [[s * v for s, v in zip(signs, records.raw_values(scales, t))]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if len(mine) == 1:
        return sum(v[0] < mine[0] for v in done) < FULL_EVALUATION_TOP
    return not any(all(a <= b for a, b in zip(v, mine)) and v != mine for v in done)


def _set_constraint(trial: optuna.Trial, value: float, retry: bool = False) -> None:
    """Mark a trial infeasible (value > 0). Feasible is what a trial without constraints is, so
    nothing is written for it, except on a retry: that one inherits its original's system attrs
    (constraint included) and needs its own verdict written, not set-once."""
    if value <= 0 and not retry:
        return
    # optuna-dashboard 0.21 reads only the older list form: with it, diverged trials are drawn as
    # infeasible (grey) in its history plot. Optuna reads both forms; the verdict is the same.
    records.set_system_attr(trial, records.DASHBOARD_CONSTRAINTS, [float(value)])
    if retry:
        records.set_system_attr(trial, constraint_key(CONSTRAINT), float(value))
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        trial.set_constraint(CONSTRAINT, value)


class Objective:
    """One trial: draw params, build the TrainConfig, fit with per-epoch pruning, record everything."""

    def __init__(self, spec: StudySpec, stop: StopFlag, worker: dict[str, Any], device: str | None, store,
                 fit_fn: Callable | None, log: Callable[[str], None], artifact_plots: bool = True,
                 data_cache: str | Path | None = None, evaluate_fn: Callable | None = None):
        self.spec, self.stop, self.worker = spec, stop, worker
        self.data_cache = data_cache  # where fetched dataset files are kept, by hash (None: datasets.default_cache_dir())
        self.lost: set[int] = set()  # trial ids whose run was cut by a lost database connection
        self.unfinished: set[int] = set()  # trial ids started here whose end after_trial has not seen yet
        self.device, self.log, self.plots = device, log, artifact_plots
        self.store = CleanArtifactStore(store) if store is not None else None
        self.base_flat = spec.base.to_flat()
        if fit_fn is None:
            from dlnn_core.train import evaluate_checkpoint, fit as fit_fn

            evaluate_fn = evaluate_fn or evaluate_checkpoint
        self.fit = fit_fn  # fit(config, report, out_dir, metrics): trains and evaluates what `metrics` names
        self.evaluate = evaluate_fn  # evaluate(checkpoint, device, metrics=names): at least those (None: fit's are all there is)

    def __call__(self, trial: optuna.Trial):
        self.unfinished.add(trial_id(trial))
        try:
            return self._run(trial)
        except (optuna.TrialPruned, GracefulStop):
            raise
        except Exception as exc:
            if is_connection_error(exc):
                if trial_id(trial) not in self.lost:
                    self._connection_lost(trial, exc)
            elif trial.user_attrs.get(records.STATUS) in (None, records.RUNNING):  # a bug outside fit: still say what happened
                with contextlib.suppress(Exception):
                    records.set_verdict(trial, records.ERROR, no_space_reason(exc, "the trial's temporary directory")
                                        or f"{type(exc).__name__}: {exc}"[:2000])
            raise

    def _run(self, trial: optuna.Trial):
        spec = self.spec
        # A retry (heartbeat or signal) carries its original's attrs: clear the verdict, own the constraint.
        retry = "worker" in trial.user_attrs
        trial.set_user_attr("worker", self.worker["id"])
        records.set_system_attr(trial, records.WORKER, self.worker)
        if retry and records.STATUS in trial.user_attrs:
            records.set_verdict(trial, records.RUNNING, None)
        if self.stop.signal:
            return self._interrupted(trial, 0)
        flat = suggest(trial, spec.space, self.base_flat)
        overrides = trial.user_attrs.get("overrides") or {}
        extra = {"device": self.device} if self.device else {}
        from dlnn_core import ConfigError

        try:
            config = spec.base.with_flat({**flat, **overrides, **extra})
        except ConfigError as exc:
            records.set_verdict(trial, records.ERROR, f"invalid config: {exc}")
            raise
        records.set_system_attr(trial, records.CONFIG, config.to_dict())  # data.file as named, with its sha256
        from ..store.datasets import localize

        fit_config = localize(config, self.store, self.data_cache, log=self.log)  # the pinned bytes, fetched by hash
        trial.set_user_attr(records.LR_REL, relative_lr(config.optimizer.name, config.optimizer.lr))
        single = len(spec.metrics) == 1
        # Baselines and re-seeded verification runs are references: the pruner never stops them.
        prunable = not any(k in trial.user_attrs for k in ("baseline", "verify_of"))
        last = {"epoch": 0, "value": None}
        deadline = _study_deadline(trial, spec.timeout_s)

        def report(epoch: int, value: float) -> None:
            last["epoch"], last["value"] = epoch, value
            if self.stop.signal:
                raise GracefulStop(f"stopped by {self.stop.signal} at epoch {epoch}")
            if single and math.isfinite(value):  # a diverging epoch is judged by fit, not the pruner
                trial.report(records.to_stored(PRUNING_METRIC, value), step=epoch)
                if prunable and epoch < fit_config.epochs and trial.should_prune():  # never at the final epoch
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}: {PRUNING_METRIC} {value:.4g} ({spec.pruner} pruner)")
            if deadline is not None and time.time() > deadline:
                raise StudyTimeout(f"study timeout reached at epoch {epoch} (budget.timeout_s = {spec.timeout_s:g} s)")

        with tempfile.TemporaryDirectory(prefix=f"dlnn-trial{trial.number}-") as out:
            try:
                result = self.fit(fit_config, report=report, out_dir=out, metrics=spec.metrics)
            except optuna.TrialPruned as exc:
                records.set_verdict(trial, records.TIMEOUT if isinstance(exc, StudyTimeout) else records.PRUNED, str(exc))
                _set_constraint(trial, 0.0, retry)
                raise
            except GracefulStop:
                return self._interrupted(trial, last["epoch"])
            except Exception as exc:
                if is_connection_error(exc):
                    return self._connection_lost(trial, exc)
                if _is_oom(exc):
                    _free_gpu_memory()
                    return self._infeasible(trial, records.OUT_OF_MEMORY, f"out of memory at epoch {last['epoch'] + 1}: {str(exc).splitlines()[0][:300]}", retry)
                records.set_verdict(trial, records.ERROR, no_space_reason(exc, "the trial's checkpoint and run files")
                                    or f"{type(exc).__name__}: {exc}"[:2000])
                raise
            trial.set_user_attr("device", result.device)
            metrics = {**result.metrics, "wall_time_s": result.wall_time_s, "epochs": result.epochs_run}
            if result.status != "ok":
                records.record_metrics(trial, metrics)
                self._upload(trial, Path(out) / "diverged.json")
                return self._infeasible(trial, records.DIVERGED, f"diverged at epoch {result.diverged_epoch}: {result.reason}", retry)
            missing = [m for m in spec.metrics if m not in metrics]
            if missing:
                raise KeyError(f"fit reported no {', '.join(missing)}; it has {', '.join(sorted(metrics))}")
            values = [float(metrics[m]) for m in spec.metrics]
            finite = all(math.isfinite(v) for v in values)
            full = finite and self.evaluate is not None and bool(result.checkpoint) and (not prunable or _among_best(trial, values))
            if full:
                metrics = self._every_metric(trial, result.checkpoint, fit_config.device, metrics)
            records.record_metrics(trial, metrics)
            if not finite:
                return self._infeasible(trial, records.DIVERGED, f"non-finite objective {dict(zip(spec.metrics, values))}", retry)
            if result.checkpoint:
                self._upload(trial, Path(result.checkpoint))
                if self.plots and (full or self.evaluate is None):  # the plot's rollout costs what the full evaluation's does
                    try:
                        from .plots import rollout_png

                        self._upload(trial, rollout_png(result.checkpoint, Path(out) / "rollout.png"))
                    except Exception as exc:  # a plot never fails a trial
                        _artifact_error(trial, f"rollout plot: {type(exc).__name__}: {exc}")
        if retry:
            trial.set_user_attr(records.STATUS, records.OK)
        _set_constraint(trial, 0.0, retry)
        stored = [records.to_stored(m, v) for m, v in zip(spec.metrics, values)]
        return stored[0] if single else stored

    def _every_metric(self, trial: optuna.Trial, checkpoint: str, device: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """`metrics` completed by a full evaluation of the checkpoint (fit's own values kept; a split
        fit already rolled out for the objectives is not rolled out again). If it fails, the
        objectives are known: the trial stands with what fit measured, and says so."""
        from dlnn_core.metrics import METRICS

        covered = {METRICS[m].source for m in metrics if m in METRICS}  # the passes fit already ran
        try:
            full = {**self.evaluate(checkpoint, device, metrics=[m for m, info in METRICS.items() if info.source not in covered]), **metrics}
        except Exception as exc:
            if is_connection_error(exc):
                raise
            trial.set_user_attr(records.EVALUATION, f"objectives only: the full evaluation failed ({type(exc).__name__}: {exc})"[:500])
            return metrics
        trial.set_user_attr(records.EVALUATION, "full")
        return full

    def _connection_lost(self, trial: optuna.Trial, exc: BaseException):
        """The database went away mid-trial: not the trial's fault, so it is re-queued like a
        stopped one (remembered here, since writing to the trial may fail too)."""
        self.lost.add(trial_id(trial))
        with contextlib.suppress(Exception):
            records.set_verdict(trial, records.INTERRUPTED, f"storage connection lost ({type(connection_error_of(exc) or exc).__name__}); re-queued")
        raise exc

    def _interrupted(self, trial: optuna.Trial, epoch: int):
        self.stop.defer_exit()  # until after_trial has re-queued it
        records.set_verdict(trial, records.INTERRUPTED, f"stopped by {self.stop.signal} at epoch {epoch}; re-queued")
        raise GracefulStop(f"stopped by {self.stop.signal}")

    def _infeasible(self, trial: optuna.Trial, status: str, reason: str, retry: bool):
        records.set_verdict(trial, status, reason)
        _set_constraint(trial, 1.0, retry)
        with contextlib.suppress(Exception):  # the dashboard shows a trial's note under its state badge
            from optuna_dashboard import save_note

            save_note(trial, f"**{status.replace('_', ' ').upper()}** (not pruned): {reason}")
        raise optuna.TrialPruned(reason)

    def _upload(self, trial: optuna.Trial, path: Path) -> None:
        if self.store is None or not path.exists():
            return
        try:
            mimetype = "application/octet-stream" if path.suffix == ".pt" else None  # not "snesdev-page-table"
            optuna.artifacts.upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial, mimetype=mimetype)
        except Exception as exc:  # the store removed any partial file (CleanArtifactStore)
            _artifact_error(trial, f"{path.name}: {type(exc).__name__}: {exc}")


def _artifact_error(trial: optuna.Trial, text: str) -> None:
    """Add one failure to the trial's `artifact_error` list: every failed upload is kept, not the last."""
    errors = trial.user_attrs.get("artifact_error") or []
    trial.set_user_attr("artifact_error", [*([errors] if isinstance(errors, str) else errors), text[:500]])


def _is_oom(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return "out of memory" in str(exc).lower() and type(exc).__name__ in ("RuntimeError", "OutOfMemoryError")


def _free_gpu_memory() -> None:
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _describe(t: FrozenTrial, spec: StudySpec) -> str:
    name = t.params.get("optimizer.name") or (records.trial_config(t) or {}).get("optimizer", {}).get("name", "?")
    metrics = records.trial_metrics(t)
    wall = metrics.get("wall_time_s")
    wall = f", {wall:.1f} s" if isinstance(wall, (int, float)) else ""
    if t.state == TrialState.COMPLETE:
        values = ", ".join(f"{m} {metrics.get(m, float('nan')):.4g}" for m in spec.metrics)
        return f"trial {t.number} complete: {values} ({name}{wall})"
    reason = t.user_attrs.get(records.REASON) or ""
    return f"trial {t.number} {t.state.name.lower()}: {reason} ({name}{wall})"


def worker_identity(seed: int, device: str | None, versions: dict[str, str]) -> dict[str, Any]:
    """Who ran a trial: stored on every trial (status shows it for running trials, export as provenance)."""
    host = socket.gethostname()
    return {"id": f"{host}:{os.getpid()}", "host": host, "pid": os.getpid(), "sampler_seed": seed,
            "device": device or "from config", "versions": versions}


class Requeues:
    """A stopped or cut trial is not at fault: it is re-queued with the same params however often it
    happens (max_retry bounds only trials whose worker died). Re-queues that a lost database
    refused wait here and are written once it is back."""

    def __init__(self, storage: optuna.storages.BaseStorage, objective: "Objective", log: Callable[[str], None]):
        self.storage, self.objective, self.log = storage, objective, log
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.requeue = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)
        self.waiting: list[FrozenTrial] = []
        self._guard = threading.RLock()  # trial threads (--jobs, --pack) end together: each trial is re-queued once

    def add(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._guard:
            self.waiting.append(trial)
            self.flush(study)

    def flush(self, study: optuna.Study) -> None:
        with self._guard:
            while self.waiting:
                self.requeue(study, self.waiting[0])
                self.waiting.pop(0)

    def recover(self, study: optuna.Study) -> None:
        """Trials whose end Optuna could not record because the database was down (it then raises
        UnboundLocalError and skips after_trial): once the database is back, fail each one still
        RUNNING and re-queue it, before any heartbeat check fails it against max_retry; then write
        the re-queues that waited."""
        storage, unfinished = self.storage, self.objective.unfinished
        for stored_id in sorted(unfinished):
            frozen = storage.get_trial(stored_id)
            if frozen.state == TrialState.RUNNING:
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    storage.set_trial_user_attr(stored_id, records.STATUS, records.INTERRUPTED)
                    storage.set_trial_user_attr(stored_id, records.REASON, "storage connection lost while the trial ended; re-queued")
                    storage.set_trial_state_values(stored_id, TrialState.FAIL)
                frozen = storage.get_trial(stored_id)
            retried = any((retry_history(t) or [None])[-1] == frozen.number
                          for t in storage.get_all_trials(study.study_id, deepcopy=False))
            if frozen.state == TrialState.FAIL and not retried and all(t.number != frozen.number for t in self.waiting):
                self.log(f"trial {frozen.number}: cut by the lost database; re-queued")
                self.waiting.append(frozen)
            unfinished.discard(stored_id)
        self.flush(study)


def run_worker(url: str, name: str, *, n_trials: int | None = None, timeout: float | None = None, device: str | None = None,
               jobs: int = 1, seed: int | None = None, artifacts: str | Path | None = "dlnn_artifacts", threads: int | None = None,
               fit_fn: Callable | None = None, log: Callable[[str], None] | None = None, install_signals: bool = True,
               plots: bool = True, data_cache: str | Path | None = None, evaluate_fn: Callable | None = None, pack: int = 1) -> int:
    """Pull trials of study `name` until its budget is used, this worker's own limits hit, or a
    signal arrives; returns the exit code (0). `pack` > 1: that many trial threads, whose trials
    train as one batched program where they share a structure (study/pack.py)."""
    prefix = f"[{socket.gethostname()}:{os.getpid()}]"
    log = log or (lambda msg: print(f"{prefix} {msg}", file=sys.stderr, flush=True))
    if pack > 1:
        from dlnn_core.train import evaluate_checkpoint

        from .pack import PackedFit

        jobs, evaluate_fn = max(jobs, pack), evaluate_fn or (evaluate_checkpoint if fit_fn is None else None)
        fit_fn = PackedFit(pack, fit_fn=fit_fn, log=log)
    if threads:
        import torch

        torch.set_num_threads(threads)
    probe = open_storage(url)
    try:
        spec = stored_spec(probe, name)
    finally:
        close_storage(probe)
    store = artifact_store(artifacts) if artifacts else None  # a wrong bucket or credentials stop the worker here
    _fetch_dataset(spec, store, data_cache, log)
    seed = seed if seed is not None else secrets.randbits(31)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        stale_callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
    storage = open_storage(url, jobs=jobs, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                           stale_callback=stale_callback, worker=True)
    stop = StopFlag(log=log)
    if install_signals:
        stop.install()
    from dlnn_core.provenance import versions  # not dlnn_core.train: a worker with an injected fit imports no torch

    objective = Objective(spec, stop, worker_identity(seed, device, versions()), device, store, fit_fn, log, plots, data_cache, evaluate_fn)
    counter = {"done": 0}
    requeues = Requeues(storage, objective, log)

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        objective.unfinished.discard(trial_id(trial))
        counter["done"] += 1
        log(_describe(trial, spec))
        interrupted = trial.user_attrs.get(records.STATUS) == records.INTERRUPTED or trial_id(trial) in objective.lost
        if trial.state == TrialState.FAIL and interrupted:
            requeues.add(study, trial)
        stop.release()
        if stop.signal:
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    deadline = time.monotonic() + timeout if timeout else None
    log(f"working on study {name!r} at {redact(url)} (budget {spec.trials} trials, sampler {spec.sampler} seed {seed}, "
        f"pruner {spec.pruner}, heartbeat {spec.heartbeat_interval} s, grace {spec.grace_period} s)")
    lost_since = None
    reason = "done"
    try:
        study = None
        while not stop.signal:
            left_trials = None if n_trials is None else n_trials - counter["done"]
            left_time = None if deadline is None else deadline - time.monotonic()
            if (left_trials is not None and left_trials <= 0) or (left_time is not None and left_time <= 0):
                reason = "this worker's own limit (--n-trials/--timeout) reached"
                break
            try:
                if study is None:  # inside the retry: a full or restarting server at start is an outage, not a crash
                    study = build_study(storage, name, spec, seed)
                    if pack > 1 and not isinstance(study.sampler, optuna.samplers.GridSampler):  # a grid's cells are its own
                        from .pack import SharedStructure

                        study.sampler = SharedStructure(study.sampler, pack)
                requeues.recover(study)
                try:
                    study.optimize(objective, n_trials=left_trials, timeout=left_time, n_jobs=jobs, catch=(Exception,),
                                   callbacks=[after_trial])
                    if not stop.signal:
                        reason = "this worker's own limit (--n-trials/--timeout) reached"
                    break
                except BudgetReached as exc:
                    lost_since = None
                    if not _pending(study):
                        reason = str(exc)
                        break
                    # Others still run trials: stay, so a dead worker's trial is failed and retried here.
                    stop.sleep(min(spec.heartbeat_interval, left_time) if left_time else spec.heartbeat_interval)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > CONNECTION_PATIENCE_S:
                    raise UsageError(f"lost the storage {redact(url)} for more than {CONNECTION_PATIENCE_S:.0f} s: {exc}") from None
                log(f"storage connection lost ({type(connection_error_of(exc)).__name__}); retrying in {spec.heartbeat_interval} s")
                with contextlib.suppress(Exception):
                    storage.remove_session()  # drop the session holding the broken transaction
                stop.sleep(spec.heartbeat_interval)
        if stop.signal:
            reason = f"stopped by {stop.signal}"
            with contextlib.suppress(Exception):
                if study is not None:
                    requeues.recover(study)
    finally:
        close_storage(storage)
        stop.release()
    log(f"exiting after {counter['done']} trials: {reason}")
    return 0


def _fetch_dataset(spec: StudySpec, store, cache_dir, log: Callable[[str], None]) -> None:
    """The study's dataset file into the local cache before the first trial: a worker that cannot
    get the pinned bytes stops now, with the file, the hash and the store in its message, instead
    of failing every trial it draws."""
    from ..store import datasets

    file, sha256 = datasets.config_file(spec.base)
    if file is None:
        return
    path = datasets.resolve(file, sha256, store, cache_dir, log=log)
    log(f"dataset {file} (sha256 {datasets.short(sha256)}…) at {path}" if sha256 else f"dataset {file} (not pinned) at {path}")


def _pending(study: optuna.Study) -> int:
    """Trials of the study still running elsewhere or queued, after failing the stale ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    return len(trials)
