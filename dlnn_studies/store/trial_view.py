"""The cached, sorted view of a study's trials that samplers and pruners read (service.ServiceStudy
wraps an RDB storage in it): reading the study stays cheap however large it grows, since the trials
are re-read at most every `max_staleness_s` and only those that changed."""

from __future__ import annotations

import copy
import time

import optuna

from .optuna_private import CachedStorageBase


class TrialView(CachedStorageBase):
    """Optuna's trial cache plus a cached, sorted view per state filter, refreshed from the
    database at most every `max_staleness_s`. Sampling one trial asks for the study's trials
    a dozen times (TPE per parameter group, the search space, constant liar) and pruning asks at
    every epoch; with Optuna's own cache each ask is a database query for the unfinished trials
    plus a sort of every trial, so at 5,000 trials that is most of the per-trial cost. Here the
    view is rebuilt only when the cache changed, and the database is read only when the view is
    older than the staleness bound or `refresh` was called (the worker does before each ask, so
    queued trials and the budget are always seen fresh). Samplers and pruners already work with
    views that other workers have moved on from; half a second more changes nothing for them. A
    trial this process ends, and a study it creates or deletes, are seen at once."""

    def __init__(self, backend: optuna.storages.RDBStorage, max_staleness_s: float = 0.5):
        super().__init__(backend)
        self.max_staleness_s = max_staleness_s
        self._read_at: dict[int, float] = {}
        self._generation: dict[int, int] = {}
        self._views: dict[tuple, tuple[int, list]] = {}

    def refresh(self, study_id: int) -> None:
        self._read_at.pop(study_id, None)

    def _forget(self, study_id: int) -> None:
        """Drop every view of a study id: a new study may get a deleted one's id (SQLite reuses it)."""
        with self.lock:
            self._read_at.pop(study_id, None)
            self._generation.pop(study_id, None)
            for key in [k for k in self._views if k[0] == study_id]:
                del self._views[key]

    def create_new_study(self, directions, study_name=None) -> int:
        study_id = super().create_new_study(directions, study_name)
        self._forget(study_id)
        return study_id

    def delete_study(self, study_id: int) -> None:
        super().delete_study(study_id)
        self._forget(study_id)

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        """A trial's end is seen at once by this process's next read (other processes within the staleness bound)."""
        done = super().set_trial_state_values(trial_id, state, values)
        study_id = self.study_of_trial(trial_id)
        if study_id is None:
            self._read_at.clear()
        else:
            self.refresh(study_id)
        return done

    def generation(self, study_id: int) -> int:
        """Changes whenever the cached trials of the study change."""
        return self._generation.get(study_id, 0)

    def read_due(self, study_id: int) -> bool:
        last = self._read_at.get(study_id)
        return last is None or time.monotonic() - last >= self.max_staleness_s

    def was_read(self, study_id: int) -> None:
        self._read_at[study_id] = time.monotonic()

    def trials_cached(self, study_id: int) -> None:
        self._generation[study_id] = self._generation.get(study_id, 0) + 1

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states=None) -> list:
        self.read_remote(study_id)
        with self.lock:
            key = (study_id, None if states is None else tuple(sorted(s.value for s in states)))
            generation = self._generation.get(study_id, 0)
            cached = self._views.get(key)
            if cached is None or cached[0] != generation:
                trials = self.cached_trials(study_id)
                if states is not None:
                    trials = [t for t in trials if t.state in states]
                cached = (generation, sorted(trials, key=lambda t: t.number))
                self._views[key] = cached
            trials = list(cached[1])
        return copy.deepcopy(trials) if deepcopy else trials
