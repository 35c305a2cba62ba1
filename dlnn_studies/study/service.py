"""Studies on a storage: the spec `launch` keeps on each study, the budgeted study the workers share,
and the ranking every reader uses (launch.py creates studies, status.py reports on them).

The trial budget is counted across all workers: a trial may only be created while fewer than
`budget.trials` trials count, and the check and the creation happen under one lock per study
(see storage.study_lock). A trial that was failed and retried (killed worker, SIGTERM) counts
once: the retry takes its slot. Queued trials (baselines, retries) are always run.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from dlnn_core.errors import shorten

from ..errors import UsageError
from ..spec.samplers import build_pruner, build_sampler
from ..spec.space import grid_space
from ..spec import definition
from ..spec.schema import StudySpec, parse_spec
from ..store.optuna_private import retry_history, study_id
from ..store.budget import BudgetReached, budget_counts, check_budget
from ..store.storage import study_lock
from ..store.trial_view import TrialView

SPEC_ATTR = "dlnn:spec"  # study user attr: the validated spec as written (parsed TOML): what export and --update compare
DEFINITION_ATTR = "dlnn:definition"  # study user attr: the spec compiled at launch (spec/definition.py), what every reader loads
DIGEST_ATTR = "dlnn:spec_digest"
SLOW_ASK_S = 5.0  # an ask that takes longer is logged by the worker (ServiceStudy.ask)
CONSTRAINT = "diverged"  # trial constraint: > 0 marks a diverged / out-of-memory trial infeasible


def find_study(storage: optuna.storages.BaseStorage, name: str):
    """The FrozenStudy named `name`, or None."""
    for study in storage.get_all_studies():
        if study.study_name == name:
            return study
    return None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def stored_spec(storage: optuna.storages.BaseStorage, name: str) -> StudySpec:
    """The definition `launch` compiled and kept on a study (spec/definition.py), loaded, not compiled
    again; a study launched before definitions were stored is compiled from its raw spec. A UsageError
    if the study does not exist, was not launched by dlnn, or holds a definition of another format."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = study_names(storage)
        hint = f"; studies here: {', '.join(known)}" if known else "; this storage has no studies (run `dlnn launch SPEC`)"
        raise UsageError(f"no study named {shorten(repr(name))}{hint}") from None
    attrs = storage.get_study_user_attrs(study_id)
    raw = attrs.get(SPEC_ATTR)
    if raw is None:
        raise UsageError(f"study {shorten(repr(name))} was not created by `dlnn launch` (it has no stored spec)")
    source = f"stored spec of study {shorten(repr(name))}"
    if DEFINITION_ATTR in attrs:
        return definition.from_record(attrs[DEFINITION_ATTR], raw, source)
    return parse_spec(raw, source=source, check_files=False)  # launched before definitions were stored; checked at launch


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that use budget: all but the retries of failed trials (a retry takes its original's slot)."""
    return sum(1 for t in trials if not retry_history(t))


def first_start(trials: list[FrozenTrial]) -> datetime.datetime | None:
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    return min(starts) if starts else None


class ServiceStudy(optuna.Study):
    """An Optuna study whose `ask` respects the study-wide budget, checked under a per-study lock,
    and that reads a database through the cached trial view (store/trial_view.py)."""

    def __init__(self, study_name: str, storage, sampler, pruner, *, budget: int, timeout_s: float | None,
                 log: Callable[[str], None] | None = None):
        if isinstance(storage, optuna.storages.RDBStorage):
            storage = TrialView(storage)
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.budget, self.timeout_s, self.log = budget, timeout_s, log
        self.storage, self.study_id = storage, study_id(self)  # what Study keeps privately, under public names

    def ask(self, fixed_distributions=None) -> optuna.Trial:
        """A new trial (or a queued one), after the budget check; an ask slower than SLOW_ASK_S is
        logged with how long it waited for the study lock, so a worker whose trials start late says why."""
        start, locked = time.monotonic(), [None]
        try:
            return self._ask_within_budget(fixed_distributions, locked)
        finally:
            took = time.monotonic() - start
            if self.log is not None and took > SLOW_ASK_S:
                waited = (locked[0] or time.monotonic()) - start
                self.log(f"asking for a trial took {took:.1f} s ({waited:.1f} s of it before the study lock was taken, "
                         f"in {threading.current_thread().name})")

    def _ask_within_budget(self, fixed_distributions, locked: list) -> optuna.Trial:
        if isinstance(self.storage, TrialView):
            self.storage.refresh(self.study_id)  # queued trials and new peers seen fresh
        with study_lock(self.storage, self.study_id) as conn:
            locked[0] = time.monotonic()
            if conn is not None:
                used, waiting, start = budget_counts(conn, self.study_id)
            else:
                trials = self.storage.get_all_trials(self.study_id, deepcopy=False)
                used, start = counted(trials), first_start(trials)
                waiting = sum(t.state == TrialState.WAITING for t in trials)
            check_budget(self.budget, self.timeout_s, used, waiting, start)
            try:
                return super().ask(fixed_distributions)
            except Exception as exc:
                # Behind `dlnn proxy` the count above is only a first look (no cross-process lock here): the
                # proxy checks the budget again under the database's study lock and refuses a trial past it.
                from ..store.proxy_client import budget_refusal

                reason = budget_refusal(exc)
                if reason is None:
                    raise
                raise BudgetReached(reason) from None


class StudyBudgets:
    """(trials, timeout in s) of a dlnn study, from its stored spec, read again whenever the spec's
    digest changed (`launch --update`); None for a study that dlnn did not launch. What `dlnn proxy`
    checks each new trial against (ops/proxy.BudgetedStorage), for workers that cannot take the lock."""

    def __init__(self):
        self._known: dict[int, tuple[object, int, float | None]] = {}  # study id -> (digest, trials, timeout)

    def __call__(self, storage: optuna.storages.BaseStorage, study_id: int) -> tuple[int, float | None] | None:
        attrs = storage.get_study_user_attrs(study_id)
        if SPEC_ATTR not in attrs:
            return None
        digest, known = attrs.get(DIGEST_ATTR), self._known.get(study_id)
        if known is None or digest is None or known[0] != digest:
            spec = stored_spec(storage, storage.get_study_name_from_id(study_id))
            known = self._known[study_id] = (digest, spec.trials, spec.timeout_s)
        return known[1], known[2]


def build_study(storage, name: str, spec: StudySpec, seed: int, log: Callable[[str], None] | None = None) -> ServiceStudy:
    sampler = build_sampler(spec.sampler, spec.sampler_options, seed, grid_space(spec.space))
    pruner = build_pruner(spec.pruner, spec.pruner_options, spec.base.epochs)
    return ServiceStudy(name, storage, sampler, pruner, budget=spec.trials, timeout_s=spec.timeout_s, log=log)


# ---------------------------------------------------------------------------------- ranking


def feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed feasible trials, best first (Pareto front first for several objectives)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)
            and t.values is not None and all(math.isfinite(v) for v in t.values)]
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    key = lambda t: tuple(s * v for s, v in zip(signs, t.values))  # noqa: E731
    if len(signs) == 1:
        return sorted(done, key=key)
    front = {t.number for t in study.best_trials if feasible(t)}
    return sorted((t for t in done if t.number in front), key=key) + sorted((t for t in done if t.number not in front), key=key)
