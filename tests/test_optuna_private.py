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
    assert hasattr(private.GroupDecomposedSearchSpace, "calculate")
    assert {"include_pruned"} <= set(inspect.signature(private.GroupDecomposedSearchSpace.__init__).parameters)
    for name in ("TrialModel", "TrialSystemAttributeModel", "TrialHeartbeatModel"):
        assert hasattr(private.rdb_models, name), name
    for column in ("trial_id", "study_id", "state", "_datetime_start_utc"):
        assert hasattr(private.rdb_models.TrialModel, column), column
    assert issubclass(optuna.storages.RDBStorage, private.BaseHeartbeat)


def test_the_private_methods_the_service_overrides_are_still_called_by_optuna():
    for cls in (optuna.storages.RDBStorage, private.BaseHeartbeat):
        assert hasattr(cls, private.STALE_TRIAL_IDS), cls
    assert list(inspect.signature(getattr(optuna.storages.RDBStorage, private.STALE_TRIAL_IDS)).parameters) == ["self", "study_id"]
    params = inspect.signature(getattr(optuna.Study, private.STUDY_GET_TRIALS)).parameters
    assert {"deepcopy", "states", "use_cache"} <= set(params)


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
