"""Re-queueing the trials a worker stopped or a lost database cut: not their fault, so each is
re-queued with the same params however often it happens, once the database takes the write."""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import TYPE_CHECKING, Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from . import records
from ..store.optuna_private import retry_history

if TYPE_CHECKING:
    from .objective import Objective


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
