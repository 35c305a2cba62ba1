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
  view refreshed at most twice a second (store/trial_view.py).
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
import os
import secrets
import socket
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from . import records
from ..errors import UsageError
from .objective import Objective
from .requeue import Requeues
from .service import BudgetReached, build_study, stored_spec
from .stop import StopFlag
from ..spec.schema import StudySpec
from ..store.optuna_private import trial_id
from ..store.storage import artifact_store, close_storage, connection_error_of, is_connection_error, open_storage
from ..store.urls import redact

CONNECTION_PATIENCE_S = 600.0  # how long a worker waits for a lost database before giving up


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
    run = _Run(url, name, spec, seed, jobs, pack, storage, objective, Requeues(storage, objective, log), stop, log)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    log(f"working on study {name!r} at {redact(url)} (budget {spec.trials} trials, sampler {spec.sampler} seed {seed}, "
        f"pruner {spec.pruner}, heartbeat {spec.heartbeat_interval} s, grace {spec.grace_period} s)")
    try:
        reason = _work(run, n_trials, time.monotonic() + timeout if timeout else None)
    finally:
        close_storage(storage)
        stop.release()
    log(f"exiting after {run.done[0]} trials: {reason}")
    return 0


@dataclass(frozen=True)
class _Run:
    """What one worker's loop works with: the study, its storage, the objective, the re-queues and the stop flag."""

    url: str
    name: str
    spec: StudySpec
    seed: int
    jobs: int
    pack: int
    storage: Any
    objective: Objective
    requeues: Requeues
    stop: StopFlag
    log: Callable[[str], None]
    done: list[int] = field(default_factory=lambda: [0])  # trials this worker has finished

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's callback after each trial: log it, re-queue it if it was stopped or cut, and stop at a signal."""
        self.objective.unfinished.discard(trial_id(trial))
        self.done[0] += 1
        self.log(_describe(trial, self.spec))
        interrupted = trial.user_attrs.get(records.STATUS) == records.INTERRUPTED or trial_id(trial) in self.objective.lost
        if trial.state == TrialState.FAIL and interrupted:
            self.requeues.add(study, trial)
        self.stop.release()
        if self.stop.signal:
            study.stop()


def _work(run: _Run, n_trials: int | None, deadline: float | None) -> str:
    """Optimize until this worker's limits, the study's budget (staying while others still run
    trials) or a signal; a lost database is waited for up to CONNECTION_PATIENCE_S. Returns why it ended."""
    spec, stop = run.spec, run.stop
    lost_since = None
    reason = "done"
    study = None
    while not stop.signal:
        left_trials = None if n_trials is None else n_trials - run.done[0]
        left_time = None if deadline is None else deadline - time.monotonic()
        if (left_trials is not None and left_trials <= 0) or (left_time is not None and left_time <= 0):
            reason = "this worker's own limit (--n-trials/--timeout) reached"
            break
        try:
            if study is None:  # inside the retry: a full or restarting server at start is an outage, not a crash
                study = _build(run)
            run.requeues.recover(study)
            try:
                study.optimize(run.objective, n_trials=left_trials, timeout=left_time, n_jobs=run.jobs, catch=(Exception,),
                               callbacks=[run.after_trial])
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
                raise UsageError(f"lost the storage {redact(run.url)} for more than {CONNECTION_PATIENCE_S:.0f} s: {exc}") from None
            run.log(f"storage connection lost ({type(connection_error_of(exc)).__name__}); retrying in {spec.heartbeat_interval} s")
            with contextlib.suppress(Exception):
                run.storage.remove_session()  # drop the session holding the broken transaction
            stop.sleep(spec.heartbeat_interval)
    if stop.signal:
        reason = f"stopped by {stop.signal}"
        with contextlib.suppress(Exception):
            if study is not None:
                run.requeues.recover(study)
    return reason


def _build(run: _Run) -> optuna.Study:
    """The study as this worker samples it (packed trials share a structure, except on a grid, whose cells are its own)."""
    study = build_study(run.storage, run.name, run.spec, run.seed, log=run.log)
    if run.pack > 1 and not isinstance(study.sampler, optuna.samplers.GridSampler):
        from .pack import SharedStructure

        study.sampler = SharedStructure(study.sampler, run.pack)
    return study


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
