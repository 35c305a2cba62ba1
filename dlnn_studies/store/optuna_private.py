"""The only module that imports Optuna's private names. Each one is used where Optuna's public
API has no equivalent; tests/test_optuna_private.py fails loudly when an Optuna upgrade moves or
changes one of them (and pyproject pins optuna below its next minor version for the same reason)."""

from __future__ import annotations

from optuna.storages import _CachedStorage as CachedStorage
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY as CONSTRAINTS_KEY
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models as rdb_models


def constraint_key(name: str) -> str:
    """The system attr under which `Trial.set_constraint(name, v)` keeps v: written directly where
    set-once does not fit (a retried trial's own verdict, a seeded trial's feasibility)."""
    return f"{CONSTRAINTS_KEY}:{name}"


def grpc_make_server():
    """Optuna's gRPC proxy server factory (run_grpc_proxy_server minus its endless wait); imported
    on use because it needs grpcio."""
    from optuna.storages._grpc.server import make_server

    return make_server


# Private methods the service overrides or calls (checked by the canary tests).
STALE_TRIAL_IDS = "_get_stale_trial_ids"  # RDBStorage / BaseHeartbeat: which RUNNING trials are stale
# CachedStorage internals that storage.TrialView overrides (methods) or reads (attributes).
CACHED_STORAGE_METHODS = ("_read_trials_from_remote_storage", "_add_trials_to_cache")
CACHED_STORAGE_ATTRS = ("_backend", "_studies", "_trial_id_to_study_id_and_number", "_lock")

__all__ = ["BaseHeartbeat", "CachedStorage", "CONSTRAINTS_KEY", "constraint_key", "rdb_models", "grpc_make_server",
           "STALE_TRIAL_IDS",
           "CACHED_STORAGE_METHODS", "CACHED_STORAGE_ATTRS"]
