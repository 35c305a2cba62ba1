"""Canaries for the Optuna private names the service relies on (all imported through
dlnn_studies/store/optuna_private.py): each fails loudly when an Optuna upgrade moves, renames or reshapes one."""

from __future__ import annotations

import inspect

import optuna
import pytest

from dlnn_studies.store import optuna_private as private


def test_every_private_name_still_exists_with_the_shape_we_use():
    assert issubclass(private.CachedStorage, optuna.storages.BaseStorage)
    assert "backend" in inspect.signature(private.CachedStorage.__init__).parameters
    for name in ("TrialModel", "TrialSystemAttributeModel", "TrialHeartbeatModel"):
        assert hasattr(private.rdb_models, name), name
    for column in ("trial_id", "study_id", "state", "_datetime_start_utc"):
        assert hasattr(private.rdb_models.TrialModel, column), column
    assert issubclass(optuna.storages.RDBStorage, private.BaseHeartbeat)


def test_the_private_methods_the_service_overrides_are_still_called_by_optuna():
    for cls in (optuna.storages.RDBStorage, private.BaseHeartbeat):
        assert hasattr(cls, private.STALE_TRIAL_IDS), cls
    assert list(inspect.signature(getattr(optuna.storages.RDBStorage, private.STALE_TRIAL_IDS)).parameters) == ["self", "study_id"]


def test_the_cached_storage_internals_the_trial_view_uses_are_still_there(tmp_path):
    """storage.TrialView overrides these methods and reads these attributes of Optuna's cache; the
    proxy client and ServiceRDBStorage override the stale-trial query (checked above)."""
    from dlnn_studies.store.proxy_client import HeartbeatGrpcStorageProxy
    from dlnn_studies.store.storage import ServiceRDBStorage, TrialView

    cached = private.CachedStorage(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.db'}"))
    for name in private.CACHED_STORAGE_METHODS:
        assert callable(getattr(cached, name)) and name in vars(TrialView), name
    assert list(inspect.signature(cached._read_trials_from_remote_storage).parameters) == ["study_id"]
    assert list(inspect.signature(cached._add_trials_to_cache).parameters) == ["study_id", "trials"]
    for name in private.CACHED_STORAGE_ATTRS:
        assert hasattr(cached, name), name
    assert isinstance(cached._studies, dict) and isinstance(cached._trial_id_to_study_id_and_number, dict)
    for cls in (ServiceRDBStorage, HeartbeatGrpcStorageProxy):
        assert private.STALE_TRIAL_IDS in vars(cls), cls


def test_the_grpc_server_factory_is_where_the_proxy_takes_it():
    pytest.importorskip("grpc")
    assert callable(private.grpc_make_server())


def test_no_other_module_imports_optuna_private_names():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    pattern = re.compile(r"(from|import)\s+optuna\.(\w+\.)*_\w+|optuna\.storages\._|import\s+_\w+")
    adapter = root / "dlnn_studies" / "store" / "optuna_private.py"
    offenders = [str(p.relative_to(root)) for folder in ("dlnn_studies", "dlnn_core", "benchmarks", "examples")
                 for p in (root / folder).rglob("*.py") if p != adapter and pattern.search(p.read_text())]
    assert offenders == []


def test_the_constraint_attr_key_is_where_optuna_keeps_and_reads_a_constraint():
    """The worker writes a retried trial's constraint under constraint_key directly; Optuna must
    store set_constraint there and read it back from there."""
    study = optuna.create_study()
    trial = study.ask()
    trial.set_constraint("diverged", 1.0)
    assert study._storage.get_trial_system_attrs(trial._trial_id)[private.constraint_key("diverged")] == 1.0
    other = study.ask()
    study._storage.set_trial_system_attr(other._trial_id, private.constraint_key("diverged"), 2.0)
    assert study._storage.get_trial(other._trial_id).constraints == {"diverged": 2.0}
