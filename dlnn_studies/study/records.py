"""What a trial stores, and how every reader gets it back: one place for the keys and the scales.

A trial keeps (so the dashboard's trial table stays readable and sortable):
- user attrs: `status` (ok, pruned, timeout, diverged, out_of_memory, interrupted, error) and `reason`,
  `worker` (its id, host:pid), `device`, `lr_rel` (lr / the optimizer's default lr, a unit-free
  learning rate for every optimizer), `evaluation` ("full" where every metric was computed: the
  references and the trials among the best when they completed; see worker.py), and every metric
  measured as its own number (`val_rel_mse`, `test_rollout_error`, ...; non-finite ones as "inf");
- system attrs (not shown in the table): the full `TrainConfig` (`dlnn:config`), the metrics
  as one dict (`dlnn:metrics`) and the worker's identity with package versions (`dlnn:worker`).

Objective values of error metrics are stored as log10 of the metric, so a single exploding
trial cannot flatten the dashboard's plots; the study's metric names say so ("log10(val_rel_mse)")
and `raw_values` turns them back. Studies launched before kept raw values and plain names.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from ..store.optuna_private import set_trial_system_attr

CONFIG = "dlnn:config"
METRICS = "dlnn:metrics"
WORKER = "dlnn:worker"
STATUS = "status"
REASON = "reason"
LR_REL = "lr_rel"
EVALUATION = "evaluation"  # "full" on trials that got every metric; others have their objectives' and the q̈ metrics
DASHBOARD_CONSTRAINTS = "constraints"  # the list form of constraints that optuna-dashboard 0.21 reads
LOG_FLOOR = -30.0  # log10 of a zero error: below any float32 or float64 error a trial can reach

# Trial verdicts (user attr `status`). PRUNED trials are either pruned (by the pruner) or
# infeasible (diverged / out of memory), which the sampler must avoid.
OK, PRUNED, DIVERGED, OUT_OF_MEMORY, INTERRUPTED, ERROR, RUNNING, TIMEOUT = (
    "ok", "pruned", "diverged", "out_of_memory", "interrupted", "error", "running", "timeout")
INFEASIBLE = (DIVERGED, OUT_OF_MEMORY)


def set_verdict(trial: optuna.Trial, status: str, reason: str | None) -> None:
    """A trial's `status` (one of the verdicts above) and the `reason` shown beside it."""
    trial.set_user_attr(STATUS, status)
    trial.set_user_attr(REASON, reason)


def set_system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """Optuna 5's Trial has no public system-attr setter; the adapter makes the storage call."""
    set_trial_system_attr(trial, key, value)


def json_finite(x: Any) -> Any:
    """JSON-safe values: the dashboard parses attrs with JSON.parse, which has no Infinity/NaN."""
    if isinstance(x, dict):
        return {k: json_finite(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def record_metrics(trial: optuna.Trial, metrics: dict[str, Any]) -> None:
    """Every metric as its own user attr (sortable in the dashboard) and all of them as one system attr."""
    safe = json_finite(metrics)
    set_system_attr(trial, METRICS, safe)
    for key, value in safe.items():
        trial.set_user_attr(key, value)


def _as_float(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def trial_metrics(t: FrozenTrial) -> dict[str, Any]:
    """Everything fit measured for a trial ({} if it did not finish training); "inf" back to floats."""
    raw = t.system_attrs.get(METRICS) or t.user_attrs.get("metrics") or {}
    return {k: _as_float(v) for k, v in raw.items()}


def trial_config(t: FrozenTrial) -> dict[str, Any] | None:
    """The full TrainConfig of a trial as a nested dict (None before the worker built it)."""
    return t.system_attrs.get(CONFIG) or t.user_attrs.get("config")


def trial_flat(t: FrozenTrial) -> dict[str, Any]:
    """The trial's config as dotted keys ({} when it has none)."""
    from dlnn_core.config import TrainConfig

    config = trial_config(t)
    return TrainConfig.from_dict(config).to_flat() if isinstance(config, dict) else {}


def trial_worker(t: FrozenTrial) -> dict[str, Any]:
    worker = t.system_attrs.get(WORKER) or t.user_attrs.get("worker")
    return worker if isinstance(worker, dict) else {"id": worker} if worker else {}


def trial_status(t: FrozenTrial) -> str | None:
    return t.user_attrs.get(STATUS)


# ------------------------------------------------------------------------------ value scales


def is_log_scaled(metric: str) -> bool:
    """Error metrics (positive, minimized, spanning many decades) are optimized as log10."""
    from ..spec.schema import LOG_METRICS

    return metric in LOG_METRICS


def metric_names(metrics: tuple[str, ...] | list[str]) -> list[str]:
    """The names a new study gives its objectives (shown by the dashboard on its axes)."""
    return [f"log10({m})" if is_log_scaled(m) else m for m in metrics]


def to_stored(metric: str, value: float) -> float:
    """The objective value a trial reports for `metric` (log10 for error metrics)."""
    if not is_log_scaled(metric) or not math.isfinite(value):
        return value if not is_log_scaled(metric) else (math.inf if value > 0 or math.isnan(value) else LOG_FLOOR)
    return max(LOG_FLOOR, math.log10(value)) if value > 0 else LOG_FLOOR


def stored_scales(study: optuna.Study) -> list[bool]:
    """Per objective, whether the study stores log10 values (from its metric names)."""
    names = study.metric_names or []
    return [isinstance(n, str) and n.startswith("log10(") for n in names] or [False] * len(study.directions)


def raw_values(scales: list[bool], t: FrozenTrial) -> list[float]:
    """A finished trial's objective values in the metrics' own units (`scales` from stored_scales)."""
    return [10.0 ** v if log else v for v, log in zip(t.values or [], scales)]
