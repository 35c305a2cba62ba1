"""The only module that names Optuna's private parts: its private modules and classes, the private
attributes of its objects (`_trial_id`, `_study_id`, `_get_filepath`, ...) and the system attr keys
it writes (`retry_history`); tests/test_layout.py checks that no other module does. Each one is used
where Optuna's public API has no equivalent; tests/test_optuna_private.py fails loudly when an Optuna upgrade moves or
changes one of them (and pyproject pins optuna below its next minor version for the same reason)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages import _CachedStorage
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY as CONSTRAINTS_KEY
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models as rdb_models

if TYPE_CHECKING:  # optuna.artifacts imports boto3: not at the start of every command
    from optuna.artifacts import FileSystemArtifactStore


# The system attr RetryHeartbeatStaleTrialCallback writes on a retry: the trial numbers it retries, oldest
# first. Named here for the budget's SQL query (budget.budget_counts), which reads it in the database.
RETRY_HISTORY_KEY = "retry_history"


def study_id(study: Any) -> int:
    """The storage's id of an `optuna.Study` or a `FrozenStudy` (Optuna keeps it only as `_study_id`;
    the public route, `storage.get_study_id_from_name`, costs a query)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of an `optuna.Trial` or a `FrozenTrial` (only `_trial_id` in Optuna 5): what the
    storage's own calls (set_trial_system_attr, get_trial, ...) take."""
    return trial._trial_id


def set_trial_system_attr(trial: Any, key: str, value: Any) -> None:
    """A system attr on a running trial: Optuna 5's Trial has no public setter, its storage call needs the id."""
    trial.storage.set_trial_system_attr(trial_id(trial), key, value)


def retry_history(trial: Any) -> list[int]:
    """The numbers of the trials a retried trial repeats (empty for a first run): what Optuna's
    experimental `RetryHeartbeatStaleTrialCallback.retry_history` reads (a canary test compares
    them), read directly since that one warns on every call and `catch_warnings` is not thread-safe."""
    return trial.system_attrs.get(RETRY_HISTORY_KEY, [])


def artifact_path(store: FileSystemArtifactStore, artifact_id: str) -> Path:
    """The file an artifact id names in Optuna's file-system store (its checks against `..` and absolute ids kept)."""
    return store._get_filepath(artifact_id)


def trial_start_column() -> Any:
    """The RDB column of a trial's start time (naive UTC in Optuna 5), for the budget's SQL query."""
    return rdb_models.TrialModel._datetime_start_utc


def constraint_key(name: str) -> str:
    """The system attr under which `Trial.set_constraint(name, v)` keeps v: written directly where
    set-once does not fit (a retried trial's own verdict, a seeded trial's feasibility)."""
    return f"{CONSTRAINTS_KEY}:{name}"


class StaleTrialsHook:
    """Mixin for a storage with a heartbeat: Optuna asks its private `_get_stale_trial_ids` which
    RUNNING trials to fail; the storage answers in `stale_trial_ids`. List it before the storage class."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        raise NotImplementedError


class CachedStorageBase(_CachedStorage):
    """Optuna's trial cache in front of an RDBStorage, with the internals trial_view.TrialView builds on
    under public names: `read_due` decides whether a read of the database happens, `was_read` and
    `trials_cached` hear of each read and of newly cached trials, and `lock`, `cached_trials` and
    `study_of_trial` read the cache."""

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        if self.read_due(study_id):
            super()._read_trials_from_remote_storage(study_id)
            self.was_read(study_id)

    def _add_trials_to_cache(self, study_id: int, trials: list) -> None:
        super()._add_trials_to_cache(study_id, trials)
        if trials:
            self.trials_cached(study_id)

    def read_due(self, study_id: int) -> bool:
        return True

    def was_read(self, study_id: int) -> None:
        pass

    def trials_cached(self, study_id: int) -> None:
        pass

    def read_remote(self, study_id: int) -> None:
        """New and unfinished trials from the database (when `read_due`)."""
        self._read_trials_from_remote_storage(study_id)

    @property
    def lock(self):
        return self._lock

    def cached_trials(self, study_id: int) -> list:
        """The cached FrozenTrials of a study (call under `lock`), in no particular order."""
        return list(self._studies[study_id].trials.values())

    def study_of_trial(self, trial_id: int) -> int | None:
        owner = self._trial_id_to_study_id_and_number.get(trial_id)
        return None if owner is None else owner[0]


def backend_of(storage: Any) -> Any:
    """The storage behind Optuna's cache (the storage itself when it has none)."""
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def grpc_proxy_service():
    """(Optuna's gRPC storage servicer class, the generated function that adds a servicer to a
    grpc.Server): what make_server puts together, for a servicer of our own (ops/proxy.py)."""
    from optuna.storages._grpc.auto_generated.api_pb2_grpc import add_StorageServiceServicer_to_server
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    return OptunaStorageProxyService, add_StorageServiceServicer_to_server


def grpc_make_server():
    """Optuna's gRPC proxy server factory (run_grpc_proxy_server minus its endless wait); imported
    on use because it needs grpcio."""
    from optuna.storages._grpc.server import make_server

    return make_server


# Private methods the service overrides or calls (checked by the canary tests).
STALE_TRIAL_IDS = "_get_stale_trial_ids"  # RDBStorage / BaseHeartbeat: which RUNNING trials are stale
# CachedStorage internals that CachedStorageBase overrides (methods) or reads (attributes).
CACHED_STORAGE_METHODS = ("_read_trials_from_remote_storage", "_add_trials_to_cache")
CACHED_STORAGE_ATTRS = ("_backend", "_studies", "_trial_id_to_study_id_and_number", "_lock")

__all__ = ["BaseHeartbeat", "CachedStorageBase", "StaleTrialsHook", "backend_of", "CONSTRAINTS_KEY", "constraint_key", "rdb_models", "grpc_make_server", "grpc_proxy_service",
           "RETRY_HISTORY_KEY", "study_id", "trial_id", "set_trial_system_attr", "retry_history", "artifact_path", "trial_start_column",
           "STALE_TRIAL_IDS",
           "CACHED_STORAGE_METHODS", "CACHED_STORAGE_ATTRS"]
