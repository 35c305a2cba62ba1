"""One trial as a worker runs it (`Objective`): draw the params, build the TrainConfig, fit with
per-epoch pruning (and the study's timeout), evaluate fully where the trial is a reference or among
the best, and record the verdict, the metrics and the artifacts. worker.py's docstring says how the
verdicts (pruned, diverged, out of memory, interrupted) are chosen and why."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from dlnn_core.optim import relative_lr

from . import records
from .service import CONSTRAINT
from .stop import GracefulStop, StopFlag
from ..store.disk import CleanArtifactStore, no_space_reason
from ..spec.space import suggest
from ..spec.schema import PRUNING_METRIC, StudySpec
from ..store.optuna_private import constraint_key, trial_id
from ..store.storage import connection_error_of, is_connection_error

FULL_EVALUATION_TOP = 5  # completed trials this far up get every metric (as many as `dlnn export` exports by default)


class StudyTimeout(optuna.TrialPruned):
    """Raised at the first epoch that ends after the study's budget.timeout_s: the trial is
    recorded as pruned (status "timeout") with its learning curve so far."""


def _study_deadline(trial: optuna.Trial, timeout_s: float | None) -> float | None:
    """The study's end as a time.time() value: timeout_s after its first trial started."""
    if timeout_s is None:
        return None
    starts = [t.datetime_start for t in trial.study.get_trials(deepcopy=False) if t.datetime_start is not None]
    return min(starts).timestamp() + timeout_s if starts else time.time() + timeout_s


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
        fit_config = self._config(trial)
        # Baselines and re-seeded verification runs are references: the pruner never stops them.
        prunable = not any(k in trial.user_attrs for k in ("baseline", "verify_of"))
        last = {"epoch": 0, "value": None}
        report = self._reporter(trial, fit_config.epochs, prunable, last)
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
            values = self._record(trial, result, Path(out), fit_config.device, prunable, retry)
        if retry:
            trial.set_user_attr(records.STATUS, records.OK)
        _set_constraint(trial, 0.0, retry)
        stored = [records.to_stored(m, v) for m, v in zip(spec.metrics, values)]
        return stored[0] if len(spec.metrics) == 1 else stored

    def _config(self, trial: optuna.Trial):
        """The trial's TrainConfig (drawn params, a baseline's overrides, this worker's device), stored
        on the trial as named, and returned with its data file resolved to the pinned local bytes."""
        from dlnn_core import ConfigError

        flat = suggest(trial, self.spec.space, self.base_flat)
        overrides = trial.user_attrs.get("overrides") or {}
        extra = {"device": self.device} if self.device else {}
        try:
            config = self.spec.base.with_flat({**flat, **overrides, **extra})
        except ConfigError as exc:
            records.set_verdict(trial, records.ERROR, f"invalid config: {exc}")
            raise
        records.set_system_attr(trial, records.CONFIG, config.to_dict())  # data.file as named, with its sha256
        from ..store.datasets import localize

        fit_config = localize(config, self.store, self.data_cache, log=self.log)  # the pinned bytes, fetched by hash
        trial.set_user_attr(records.LR_REL, relative_lr(config.optimizer.name, config.optimizer.lr))
        return fit_config

    def _reporter(self, trial: optuna.Trial, epochs: int, prunable: bool, last: dict[str, Any]) -> Callable[[int, float], None]:
        """fit's per-epoch callback: notes the epoch in `last`, stops at a signal, reports the value to
        the pruner (single objective; never pruning the final epoch) and stops at the study's timeout."""
        spec, single = self.spec, len(self.spec.metrics) == 1
        deadline = _study_deadline(trial, spec.timeout_s)

        def report(epoch: int, value: float) -> None:
            last["epoch"], last["value"] = epoch, value
            if self.stop.signal:
                raise GracefulStop(f"stopped by {self.stop.signal} at epoch {epoch}")
            if single and math.isfinite(value):  # a diverging epoch is judged by fit, not the pruner
                trial.report(records.to_stored(PRUNING_METRIC, value), step=epoch)
                if prunable and epoch < epochs and trial.should_prune():  # never at the final epoch
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}: {PRUNING_METRIC} {value:.4g} ({spec.pruner} pruner)")
            if deadline is not None and time.time() > deadline:
                raise StudyTimeout(f"study timeout reached at epoch {epoch} (budget.timeout_s = {spec.timeout_s:g} s)")

        return report

    def _record(self, trial: optuna.Trial, result, out: Path, device: str, prunable: bool, retry: bool) -> list[float]:
        """A finished fit's metrics (every metric for a reference or a trial among the best) and
        artifacts on the trial; the objective values, or the trial recorded infeasible (raises)."""
        spec = self.spec
        trial.set_user_attr("device", result.device)
        metrics = {**result.metrics, "wall_time_s": result.wall_time_s, "epochs": result.epochs_run}
        if result.status != "ok":
            records.record_metrics(trial, metrics)
            self._upload(trial, out / "diverged.json")
            return self._infeasible(trial, records.DIVERGED, f"diverged at epoch {result.diverged_epoch}: {result.reason}", retry)
        missing = [m for m in spec.metrics if m not in metrics]
        if missing:
            raise KeyError(f"fit reported no {', '.join(missing)}; it has {', '.join(sorted(metrics))}")
        values = [float(metrics[m]) for m in spec.metrics]
        finite = all(math.isfinite(v) for v in values)
        full = finite and self.evaluate is not None and bool(result.checkpoint) and (not prunable or _among_best(trial, values))
        if full:
            metrics = self._every_metric(trial, result.checkpoint, device, metrics)
        records.record_metrics(trial, metrics)
        if not finite:
            return self._infeasible(trial, records.DIVERGED, f"non-finite objective {dict(zip(spec.metrics, values))}", retry)
        if result.checkpoint:
            self._upload(trial, Path(result.checkpoint))
            if self.plots and (full or self.evaluate is None):  # the plot's rollout costs what the full evaluation's does
                try:
                    from .plots import rollout_png

                    self._upload(trial, rollout_png(result.checkpoint, out / "rollout.png"))
                except Exception as exc:  # a plot never fails a trial
                    _artifact_error(trial, f"rollout plot: {type(exc).__name__}: {exc}")
        return values

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
