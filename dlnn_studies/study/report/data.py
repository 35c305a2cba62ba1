"""What a report reads: every trial of a study (and of its verification studies) as a plain Row,
read once from an open storage. Outcomes come from the verdict the worker records (records.STATUS),
never from the text of a reason."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import records
from ..service import feasible, ranked_trials, stored_spec
from ..verify import Candidate, candidates, per_name, verify_name
from ...spec.schema import PRUNING_METRIC, StudySpec

OUTCOMES = ("complete", "pruned", "diverged", "failed")  # the verdicts on a config; interrupted and unfinished are none

# Why a trial diverged or failed, from the worker's verdict: the cause a report groups failures by.
CAUSES = {
    records.DIVERGED: "diverged (non-finite or exploding loss or objective)",
    records.OUT_OF_MEMORY: "out of memory",
    records.ERROR: "error (the config or the code raised)",
    None: "worker lost (no verdict: its heartbeat stopped)",
}


@dataclass(frozen=True)
class Row:
    """One trial as the report sees it; values in the metric's own units."""

    number: int
    outcome: str  # complete, pruned, diverged, failed, interrupted, unfinished
    flat: dict[str, Any]  # the full TrainConfig, dotted ({} when it was never built)
    metrics: dict[str, Any]
    value: float | None  # the (first) objective, complete trials only
    curve: dict[int, float]  # per-epoch validation error (the pruning metric)
    reason: str
    baseline: str | None
    verify_of: int | None  # verification retrains: the trial they retrain (-1 for a reference preset)
    reference: str | None = None  # verification retrains of a preset
    status: str | None = None  # the worker's verdict (records.STATUS)
    choice: Any = None  # `dlnn verify --per` retrains: the choice of the setting they stand for

    @property
    def cause(self) -> str:
        """Why a diverged or failed trial ended, from its structured verdict."""
        return CAUSES.get(self.status, CAUSES[records.ERROR] if self.status else CAUSES[None])


@dataclass(frozen=True)
class StudyData:
    name: str
    spec: StudySpec
    metric: str  # the first objective
    direction: str
    rows: list[Row]
    best: list[int]  # trial numbers, best first (Pareto front first for several objectives)
    verify: list[Row] = field(default_factory=list)  # the child study `<name>-verify`, if any
    per: dict[str, list[Row]] = field(default_factory=dict)  # `<name>-per-<setting>` children: setting -> retrains

    def by(self, outcome: str) -> list[Row]:
        return [r for r in self.rows if r.outcome == outcome]

    @property
    def judged(self) -> list[Row]:
        """Trials that ran to a verdict (interrupted and unfinished ones are not)."""
        return [r for r in self.rows if r.outcome in OUTCOMES]

    @property
    def curve_metric(self) -> str:
        return PRUNING_METRIC

    def row(self, number: int) -> Row:
        return next(r for r in self.rows if r.number == number)

    def has(self, number: int | None) -> bool:
        return number is not None and any(r.number == number for r in self.rows)


def outcome(t: FrozenTrial) -> str:
    status = records.trial_status(t)
    if t.state == TrialState.COMPLETE:
        return "complete" if feasible(t) else "diverged"
    if t.state == TrialState.PRUNED and status == records.TIMEOUT:
        return "unfinished"  # stopped by the study's timeout: no verdict on its config
    if t.state == TrialState.PRUNED:
        return "diverged" if status in records.INFEASIBLE or not feasible(t) else "pruned"
    if t.state == TrialState.FAIL:
        return "interrupted" if status == records.INTERRUPTED else "failed"
    return "unfinished"


def rows_of(study: optuna.Study) -> list[Row]:
    """Every trial of a study as the report sees it."""
    scales = records.stored_scales(study)
    log_curve = scales[0] if scales else False
    rows = []
    for t in study.get_trials(deepcopy=False):
        kind = outcome(t)
        value = records.raw_values(scales, t)[0] if kind == "complete" and t.values else None
        if value is not None and not math.isfinite(value):
            kind, value = "diverged", None
        curve = {int(k): (10.0 ** v if log_curve else v) for k, v in t.intermediate_values.items() if math.isfinite(v)}
        try:
            flat = records.trial_flat(t)
        except Exception:  # a config from another version of the project: report the trial without it
            flat = {}
        rows.append(Row(t.number, kind, flat, records.trial_metrics(t), value, curve, t.user_attrs.get(records.REASON) or "",
                        t.user_attrs.get("baseline"), t.user_attrs.get("verify_of"), t.user_attrs.get("reference"),
                        records.trial_status(t), t.user_attrs.get("choice")))
    return rows


def load(storage: optuna.storages.BaseStorage | str, name: str) -> StudyData:
    """Everything the report needs, read from an open storage (or a storage URL, opened and closed here):
    the study, STUDY-verify and every STUDY-per-SETTING."""
    if isinstance(storage, str):
        from ...store.storage import close_storage, open_storage

        opened = open_storage(storage)
        try:
            return load(opened, name)
        finally:
            close_storage(opened)
    spec = stored_spec(storage, name)
    study = optuna.load_study(study_name=name, storage=storage)
    rows = rows_of(study)
    best = [t.number for t in ranked_trials(study)]
    names = {s.study_name for s in storage.get_all_studies()}
    verify = rows_of(optuna.load_study(study_name=verify_name(name), storage=storage)) if verify_name(name) in names else []
    per = {}
    for q in spec.space:
        child = per_name(name, q.key)
        if child in names:
            per[q.key] = rows_of(optuna.load_study(study_name=child, storage=storage))
    return StudyData(name, spec, spec.metrics[0], spec.directions[0], rows, best, verify, per)


def robust_winner(storage, name: str, direction: str) -> Candidate | None:
    """The verified trial with the best mean over seeds (on an open storage), or None when
    STUDY-verify does not exist or has no finished retrain."""
    child = verify_name(name)
    if child not in {s.study_name for s in storage.get_all_studies()}:
        return None
    rows = rows_of(optuna.load_study(study_name=child, storage=storage))
    ranked = [c for c in candidates(rows, direction) if c.trial is not None]
    return ranked[0] if ranked and ranked[0].mean is not None else None


def counts(rows: list[Row]) -> Counter:
    return Counter(r.outcome for r in rows)
