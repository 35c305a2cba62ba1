"""A study's budget in the database: the counts that decide whether a new trial may be created,
read in one query under the study's advisory lock (storage.study_lock) by workers and by the proxy
on their behalf, so that every creator of trials keeps the same budget."""

from __future__ import annotations

import datetime

import optuna
import sqlalchemy


class BudgetReached(Exception):
    """No trial may be created: the study's budget (trials or timeout) is used up."""


def check_budget(budget: int, timeout_s: float | None, used: int, waiting: int, start: datetime.datetime | None, *,
                 new_trial: bool = False) -> None:
    """BudgetReached if no trial may be created: `used` trials count against `budget` (queued ones,
    `waiting`, may still be run unless a `new_trial` is asked for), or the timeout has passed since `start`."""
    if timeout_s is not None and start is not None:
        if (datetime.datetime.now() - start).total_seconds() > timeout_s:
            raise BudgetReached(f"the study's timeout ({timeout_s:g} s from its first trial) has passed")
    if (new_trial or not waiting) and used >= budget:
        raise BudgetReached(f"the study's budget of {budget} trials is used")


def budget_counts(conn: sqlalchemy.engine.Connection, study_id: int) -> tuple[int, int, datetime.datetime | None]:
    """(trials that use budget, queued trials, first start) in one query: a retry of a failed
    trial (it carries Optuna's `retry_history` system attr) takes its original's slot."""
    from .optuna_private import RETRY_HISTORY_KEY, trial_start_column, rdb_models as models

    trial, attr = models.TrialModel, models.TrialSystemAttributeModel
    retry = sqlalchemy.exists().where(attr.trial_id == trial.trial_id, attr.key == RETRY_HISTORY_KEY)
    query = sqlalchemy.select(
        sqlalchemy.func.coalesce(sqlalchemy.func.sum(sqlalchemy.case((retry, 0), else_=1)), 0),
        sqlalchemy.func.coalesce(sqlalchemy.func.sum(sqlalchemy.case((trial.state == optuna.trial.TrialState.WAITING, 1), else_=0)), 0),
        sqlalchemy.func.min(trial_start_column()),  # Optuna 5 stores naive UTC
    ).where(trial.study_id == study_id)
    counted, waiting, first = conn.execute(query).one()
    if isinstance(first, str):  # SQLite returns min() of a DATETIME column as text
        first = datetime.datetime.fromisoformat(first)
    if first is not None:
        first = first.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)
    return int(counted), int(waiting), first
