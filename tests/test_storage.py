"""open_storage's own promises beyond Optuna's storage contract (test_storage_contract.py): what it
refuses, what a pickled copy keeps, and one error type for bad heartbeat settings on every storage."""

from __future__ import annotations

import pickle

import optuna
import pytest
import sqlalchemy
from service_support import pg_url  # noqa: F401 (fixture)

from dlnn_studies.errors import UsageError
from dlnn_studies.store.budget import budget_counts
from dlnn_studies.store.storage import close_storage, open_storage, study_lock

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
@pytest.mark.parametrize("create_schema", [True, False])
def test_an_in_memory_sqlite_storage_is_refused_with_the_reason(url, create_schema):
    """Every connection to an in-memory SQLite database gets an empty one of its own, so the storage
    came back without tables; no `dlnn` command could see what another one wrote there either."""
    with pytest.raises(UsageError, match=r"in-memory SQLite database.*Use a file, e.g. sqlite:///dlnn.db"):
        open_storage(url, create_schema=create_schema)


def test_a_pickled_postgresql_storage_keeps_its_budget_lock_and_connection_names(pg_url):  # noqa: F811
    storage = open_storage(pg_url, create_schema=True)
    copy = pickle.loads(pickle.dumps(storage))
    try:
        study_id = copy.create_new_study([optuna.study.StudyDirection.MINIMIZE], "pickled")
        copy.create_new_trial(study_id)
        assert copy.lock_engine is not storage.lock_engine
        with study_lock(copy, study_id) as conn:
            assert budget_counts(conn, study_id)[:2] == (1, 0)
            assert conn.execute(sqlalchemy.text("SELECT current_setting('application_name')")).scalar().startswith(
                "dlnn command budget-lock")
        with copy.engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_setting('application_name')")).scalar().startswith(
                "dlnn command")
    finally:
        close_storage(copy)
        close_storage(storage)


def test_a_pickled_sqlite_storage_keeps_its_pragmas(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}", create_schema=True)
    copy = pickle.loads(pickle.dumps(storage))
    try:
        with copy.engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("PRAGMA synchronous")).scalar() == 1  # NORMAL
            assert conn.execute(sqlalchemy.text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        close_storage(copy)
        close_storage(storage)


@pytest.mark.parametrize("setting", [{"heartbeat_interval": 0}, {"grace_period": -1}])
def test_a_bad_heartbeat_setting_is_a_value_error_on_every_storage(setting, tmp_path):
    """As RDBStorage raises it (Optuna's contract): the gRPC client raised a UsageError instead. The
    client checks before it connects, so no proxy is needed here."""
    for url in (f"sqlite:///{tmp_path / 'h.db'}", "grpc://127.0.0.1:9"):
        with pytest.raises(ValueError):
            open_storage(url, create_schema=True, **setting)


def test_a_log_line_names_the_connection_error_not_what_optuna_raised_while_handling_it():
    """Optuna's tell raises UnboundLocalError while handling a lost database's OperationalError (seen
    in the fleet's restart run): the worker waits on it as an outage and names the OperationalError."""
    from dlnn_studies.store.storage import connection_error_of, is_connection_error

    lost = sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("server closed the connection unexpectedly"))
    try:
        try:
            raise lost
        except sqlalchemy.exc.OperationalError:
            raise UnboundLocalError("cannot access local variable 'frozen_trial'")  # noqa: B904 (as Optuna does)
    except UnboundLocalError as exc:
        raised = exc
    assert connection_error_of(raised) is lost and is_connection_error(raised)
    assert connection_error_of(ValueError("a bug")) is None and not is_connection_error(ValueError("a bug"))
