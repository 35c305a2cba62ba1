"""Canaries for the Optuna private names the service relies on (all imported through
dlnn_studies/store/optuna_private.py): each fails loudly when an Optuna upgrade moves, renames or reshapes one."""

from __future__ import annotations

import inspect

import optuna
import pytest

from dlnn_studies.store import optuna_private as private


def test_every_private_name_still_exists_with_the_shape_we_use():
    assert issubclass(private.CachedStorageBase, optuna.storages.BaseStorage)
    assert "backend" in inspect.signature(private.CachedStorageBase.__init__).parameters
    for name in ("TrialModel", "TrialSystemAttributeModel", "TrialHeartbeatModel"):
        assert hasattr(private.rdb_models, name), name
    for column in ("trial_id", "study_id", "state", "_datetime_start_utc"):
        assert hasattr(private.rdb_models.TrialModel, column), column
    assert issubclass(optuna.storages.RDBStorage, private.BaseHeartbeat)


def test_the_private_methods_the_service_overrides_are_still_called_by_optuna():
    for cls in (optuna.storages.RDBStorage, private.BaseHeartbeat):
        assert hasattr(cls, private.STALE_TRIAL_IDS), cls
    assert list(inspect.signature(getattr(optuna.storages.RDBStorage, private.STALE_TRIAL_IDS)).parameters) == ["self", "study_id"]


def test_the_cached_storage_internals_the_adapter_uses_are_still_there(tmp_path):
    """CachedStorageBase overrides these methods and reads these attributes of Optuna's cache, and
    the storages' stale-trial query reaches Optuna through StaleTrialsHook."""
    from dlnn_studies.store.proxy_client import HeartbeatGrpcStorageProxy
    from dlnn_studies.store.storage import ServiceRDBStorage
    from dlnn_studies.store.trial_view import TrialView

    backend = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'c.db'}")
    cached = private.CachedStorageBase(backend)
    for name in private.CACHED_STORAGE_METHODS:
        assert callable(getattr(cached, name)) and name in vars(private.CachedStorageBase), name
    assert list(inspect.signature(cached._read_trials_from_remote_storage).parameters) == ["study_id"]
    assert list(inspect.signature(cached._add_trials_to_cache).parameters) == ["study_id", "trials"]
    for name in private.CACHED_STORAGE_ATTRS:
        assert hasattr(cached, name), name
    assert isinstance(cached._studies, dict) and isinstance(cached._trial_id_to_study_id_and_number, dict)
    assert private.backend_of(cached) is backend and private.backend_of(backend) is backend
    for name in private.CACHED_STORAGE_METHODS:  # TrialView works through the hooks, not these
        assert name not in vars(TrialView), name
    for cls in (ServiceRDBStorage, HeartbeatGrpcStorageProxy):
        assert getattr(cls, private.STALE_TRIAL_IDS) is getattr(private.StaleTrialsHook, private.STALE_TRIAL_IDS), cls


def test_optunas_cache_calls_the_hooks(tmp_path):
    """A read of the study and a new trial reach CachedStorageBase's hooks; a read that is not due
    leaves the database alone."""

    class Counting(private.CachedStorageBase):
        def __init__(self, backend):
            super().__init__(backend)
            self.reads, self.cached, self.due = 0, 0, True

        def read_due(self, study_id):
            return self.due

        def was_read(self, study_id):
            self.reads += 1

        def trials_cached(self, study_id):
            self.cached += 1

    backend = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'h.db'}")
    view = Counting(backend)
    study = optuna.create_study(storage=view)
    study.ask()
    view.read_remote(study._study_id)
    assert view.reads >= 1 and view.cached >= 1
    assert [t.number for t in view.cached_trials(study._study_id)] == [0]
    assert view.study_of_trial(view.cached_trials(study._study_id)[0]._trial_id) == study._study_id
    view.due = False
    optuna.load_study(study_name=study.study_name, storage=backend).ask()  # another process's trial
    reads = view.reads
    view.read_remote(study._study_id)
    assert view.reads == reads and len(view.cached_trials(study._study_id)) == 1
    view.due = True
    view.read_remote(study._study_id)
    assert len(view.cached_trials(study._study_id)) == 2


def test_the_grpc_server_factory_is_where_the_proxy_takes_it():
    pytest.importorskip("grpc")
    assert callable(private.grpc_make_server())
    service_class, add_service = private.grpc_proxy_service()
    assert callable(add_service) and callable(service_class.CreateNewTrial)  # the method ops/proxy.py's servicer overrides
    assert "_backend" in vars(service_class(object()))  # where CreateNewTrial finds the storage


def test_no_other_module_imports_or_overrides_optuna_private_names():
    """Optuna's private modules and names are imported, and the private methods and attributes the
    service overrides or reads are named, in the adapter module alone."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    private_members = (private.STALE_TRIAL_IDS, *private.CACHED_STORAGE_METHODS, *private.CACHED_STORAGE_ATTRS)
    pattern = re.compile(r"(from|import)\s+optuna\.(\w+\.)*_\w+|optuna\.storages\._|import\s+_\w+|"
                         + "|".join(rf"\b{re.escape(name)}\b" for name in private_members))
    adapter = root / "dlnn_studies" / "store" / "optuna_private.py"
    offenders = [str(p.relative_to(root)) for folder in ("dlnn_studies", "dlnn_core", "benchmarks", "examples")
                 for p in (root / folder).rglob("*.py") if p != adapter and pattern.search(p.read_text())]
    assert offenders == []
    assert pattern.search("    def _get_stale_trial_ids(self, study_id):") and pattern.search("x = self._studies[1]")
    assert not pattern.search("_thread_lock = threading.Lock()")


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


def test_the_ids_are_the_ones_the_storage_takes():
    """study_id and trial_id give what the storage's public calls know a study and a trial by, on a
    Study, a FrozenStudy, a Trial and a FrozenTrial; set_trial_system_attr writes where Optuna reads."""
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="ids", storage=storage)
    study.ask()
    trial = study.ask()
    assert private.study_id(study) == storage.get_study_id_from_name("ids")
    assert private.study_id(storage.get_all_studies()[0]) == storage.get_study_id_from_name("ids")
    expected = storage.get_trial_id_from_study_id_trial_number(private.study_id(study), trial.number)
    assert private.trial_id(trial) == expected == private.trial_id(study.get_trials()[1])
    private.set_trial_system_attr(trial, "dlnn:probe", [1, 2])
    assert storage.get_trial(expected).system_attrs["dlnn:probe"] == [1, 2]


def test_the_retry_history_is_what_the_retry_callback_writes_and_reads(tmp_path):
    """A trial failed as stale and retried by Optuna's retry callback carries RETRY_HISTORY_KEY, and
    retry_history reads it (the budget's SQL query counts retries by that key)."""
    import time
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental callback; heartbeat outside optimize
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)  # what the worker uses
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'r.db'}", heartbeat_interval=1, grace_period=1,
                                             heartbeat_stale_trial_callback=retry)
        study = optuna.create_study(storage=storage)
        first = study.ask()
        storage.record_heartbeat(private.trial_id(first))
        time.sleep(2.1)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert private.retry_history(trials[0]) == []
    assert private.retry_history(trials[1]) == [0] == trials[1].system_attrs[private.RETRY_HISTORY_KEY]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t) for t in trials] == [[], [0]]


def test_the_artifact_path_is_where_the_file_store_puts_an_artifact(tmp_path):
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path)
    import io

    store.write("abc", io.BytesIO(b"x"))
    assert private.artifact_path(store, "abc") == tmp_path / "abc" and (tmp_path / "abc").read_bytes() == b"x"
    with pytest.raises(ValueError):
        private.artifact_path(store, "../outside")


def test_the_trial_start_column_is_the_one_optuna_fills(tmp_path):
    """The budget's query reads the first start from trial_start_column: it must be the column behind
    FrozenTrial.datetime_start (naive UTC in the database, local time in Optuna's objects)."""
    from dlnn_studies.store.budget import budget_counts

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    study.ask()
    with storage.engine.connect() as conn:
        used, waiting, first = budget_counts(conn, private.study_id(study))
    assert (used, waiting) == (1, 0)
    assert abs((first - study.get_trials()[0].datetime_start).total_seconds()) < 1e-3
