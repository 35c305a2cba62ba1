"""Storage, connection pool, budget lock and artifact store: the service's side of the database.

Any SQLAlchemy URL works (the default is an SQLite file in the working directory; PostgreSQL is
the production storage), and `grpc://host:port` names an Optuna gRPC storage proxy. A worker holds
one PostgreSQL connection while it trains (its heartbeat shares it) and opens a second one only for
the moment of creating a trial (the budget lock), so a default server (max_connections 100, 3 of
them reserved for superusers) holds 97 workers minus the few that create a trial at the same time.
Connections are pre-pinged and recycled, so a restarted database is survived, and a connection
refused because the server is full is retried for a while instead of failing (see `_wait_for_a_slot`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy
import sqlalchemy.orm
from optuna.exceptions import ExperimentalWarning
from sqlalchemy import exc as sa_exc

from ..errors import UsageError
from .optuna_private import StaleTrialsHook, backend_of
from .urls import in_memory_sqlite, is_grpc, is_sqlite, normalize_url, redact

LOCK_NAMESPACE = 0x444C4E4E  # "DLNN": first key of PostgreSQL advisory locks taken by the service
FULL_SERVER_PATIENCE_S = 60.0  # how long a new connection waits for a free slot on a full server

_thread_lock = threading.Lock()  # serializes budget checks between threads of one worker (--jobs)


class ServiceRDBStorage(StaleTrialsHook, optuna.storages.RDBStorage):
    """RDBStorage whose heartbeat survives a database hiccup: Optuna's heartbeat thread dies on the
    first failed write, after which a healthy trial would be failed as stale by other workers."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self.remove_session()  # the next beat gets a fresh, pre-pinged connection

    def __getstate__(self) -> dict[str, Any]:
        """Pickled as Optuna's RDBStorage (its engine is rebuilt on load), less the budget lock's engine:
        `__setstate__` sets both engines up again as `open_storage` did."""
        state = super().__getstate__()
        state.pop("lock_engine", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if getattr(self, "dlnn_role", None) is not None:
            _set_up_engines(self, self.dlnn_role)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's rule (RUNNING, last heartbeat older than the grace period), plus RUNNING trials
        that never recorded a heartbeat and started longer than the grace period ago (their worker
        died, or lost the database, before its first beat): Optuna skips those, so they would stay
        RUNNING forever. One query, as Optuna's own."""
        from .optuna_private import rdb_models as models

        grace = datetime.timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 1))
        session = self.scoped_session()
        try:
            db_now = session.execute(sqlalchemy.func.now()).scalar().replace(tzinfo=None)
            rows = (session.query(models.TrialModel)
                    .options(sqlalchemy.orm.selectinload(models.TrialModel.heartbeats))
                    .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                    .filter(models.TrialModel.study_id == study_id).all())
            now = datetime.datetime.now()  # the clock datetime_start was written with
            stale = []
            for t in rows:
                if t.heartbeats:
                    if db_now - t.heartbeats[0].heartbeat > grace:
                        stale.append(t.trial_id)
                elif t.datetime_start is not None and now - t.datetime_start > grace:
                    stale.append(t.trial_id)
            session.commit()
            return stale
        except Exception:
            session.rollback()
            raise
        finally:
            session.close()


def engine_kwargs(url: str, jobs: int = 1, worker: bool = False) -> dict[str, Any]:
    """The connection pool of one process.

    A worker (`worker=True`) keeps one connection per --jobs thread and never opens more: its
    heartbeat thread waits for the connection instead of opening a second one (Optuna holds a
    connection only for the length of one storage call, and a worker has no heartbeat while it
    creates a trial, so the wait is short). The budget lock has its own short-lived connection
    (`lock_engine`). A training worker therefore holds 1 connection and 2 for the moment of a
    trial's creation: a default PostgreSQL (100 connections, 3 reserved) holds about 90 workers,
    97 once none starts a trial; past that, raise max_connections or put the gRPC proxy in front.
    Other commands (the dashboard, status, export) keep one connection and open up to four more in
    bursts, closed after use. Pre-ping and recycle: connections dropped by a restarted database
    or a proxy are replaced instead of failing a trial."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 120}, "pool_pre_ping": True}
    jobs = max(1, jobs)
    return {
        "pool_size": jobs,  # kept: one per trial thread, shared with that trial's heartbeat
        "max_overflow": 0 if worker else 4,
        "pool_pre_ping": True,
        "pool_recycle": 300,
        "pool_timeout": 120,
    }


def _server_full(exc: BaseException) -> bool:
    """PostgreSQL refused a new connection for lack of slots (SQLSTATE 53300: max_connections, the
    superuser reserve, or a role's or database's CONNECTION LIMIT). libpq gives no code at connect
    time, so the message says it."""
    text = str(exc).lower()
    return any(m in text for m in ("too many clients", "too many connections", "connection slots are reserved"))


def _wait_for_a_slot(engine: sqlalchemy.engine.Engine, role: str) -> None:
    """A new connection to a full server waits for a free slot (retried with jittered back-off for
    FULL_SERVER_PATIENCE_S) instead of failing the call that needed it: a worker that meets a full server
    mid-trial, when its connection is recycled or its heartbeat reconnects, keeps its trial. After
    that the error is a connection error like any outage (see `is_connection_error`). Every
    connection is named in pg_stat_activity.application_name by role, host and pid, unless the URL
    names it."""
    name = f"dlnn {role} {socket.gethostname()}:{os.getpid()}"[:63]

    @sqlalchemy.event.listens_for(engine, "do_connect")
    def _connect(dialect, _record, cargs, cparams):
        cparams.setdefault("application_name", name)
        deadline = time.monotonic() + FULL_SERVER_PATIENCE_S
        delay = 0.25
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception as exc:
                if not _server_full(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(min(delay * (0.5 + random.random()), max(0.0, deadline - time.monotonic())))
                delay = min(2 * delay, 5.0)


def open_storage(url: str, *, create_schema: bool = False, jobs: int = 1, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, stale_callback=None, worker: bool = False) -> optuna.storages.BaseStorage:
    """An RDBStorage (or gRPC proxy) for `url`. Only `launch` creates the schema; workers never race it.
    `worker`: the worker's pool (see `engine_kwargs`), without the schema version check (open a
    storage without `worker` first for that; `run_worker` does). An in-memory SQLite URL is refused
    (see `in_memory_sqlite`)."""
    if is_grpc(url):  # a gRPC storage proxy in front of the database (proxy_client.py), for large fleets
        from .proxy_client import connect, parse_proxy_url, require_grpc

        try:
            parse_proxy_url(url)
            require_grpc()
        except (ValueError, RuntimeError) as exc:
            raise UsageError(str(exc)) from None
        try:  # a bad heartbeat_interval or grace_period is a ValueError, as RDBStorage raises it
            return connect(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                           heartbeat_stale_trial_callback=stale_callback)
        except ConnectionError as exc:
            raise UsageError(str(exc)) from None
    given, url = url, normalize_url(url)
    if in_memory_sqlite(url):
        raise UsageError(f"--storage {given!r} is an in-memory SQLite database, which lives inside one connection of "
                         "one process: every `dlnn` command (launch, work, status, the dashboard) and every connection "
                         "would open an empty one of its own. Use a file, e.g. sqlite:///dlnn.db")
    if not create_schema and url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if path and not os.path.exists(path):  # do not leave an empty database file behind
            raise UsageError(f"{given} does not exist here ({os.path.abspath(path)}): run `dlnn launch SPEC` first, "
                             "or pass --storage / set DLNN_STORAGE")
    try:
        storage = _connect_storage(url, create_schema, jobs, worker, heartbeat_interval, grace_period, stale_callback)
        _set_up_engines(storage, "worker" if worker else "command")
        return storage
    except ImportError as exc:
        raise UsageError(f"--storage {redact(given)!r}: the database driver is not installed ({exc.__cause__ or exc})") from None
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        raise UsageError(f"--storage {redact(given)!r} is not a usable SQLAlchemy URL ({exc})") from None
    except (sa_exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        reason = _reason(exc)
        if "no such table" in reason or ("does not exist" in reason and "relation" in reason):
            raise UsageError(f"{redact(given)} holds no studies yet: run `dlnn launch SPEC` first") from None
        if not is_connection_error(exc):
            raise
        raise UsageError(f"cannot open storage {redact(given)}: {reason}") from None
    except RuntimeError as exc:  # schema version mismatch
        raise UsageError(f"storage {redact(given)}: {exc}") from None


def _connect_storage(url, create_schema, jobs, worker, heartbeat_interval, grace_period, stale_callback) -> ServiceRDBStorage:
    """RDBStorage connects at once (schema and version checks): on a full server that first connect
    waits for a slot as later ones do (`_wait_for_a_slot`), so a worker started into a full server
    waits instead of exiting."""
    deadline = time.monotonic() + FULL_SERVER_PATIENCE_S
    delay = 0.25
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return ServiceRDBStorage(
                    url, engine_kwargs=engine_kwargs(url, jobs, worker), skip_table_creation=not create_schema,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=stale_callback,
                    # Optuna's schema check holds two connections at once, more than a worker's pool:
                    # the worker checks the schema first with a command storage (run_worker's probe).
                    skip_compatibility_check=worker,
                )
        except (sa_exc.OperationalError, optuna.exceptions.StorageInternalError) as exc:
            if not _server_full(_reason(exc)) or time.monotonic() >= deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(2 * delay, 5.0)


def _set_up_engines(storage: ServiceRDBStorage, role: str) -> None:
    """SQLite's pragmas, or the budget lock's engine and the retrying, named connects of a server
    database; `role` (worker or command) names the connections and is kept for a pickled copy."""
    storage.dlnn_role = role
    if storage.engine.dialect.name == "sqlite":
        _tune_sqlite(storage.engine)
    else:
        _open_lock_engine(storage, role)


def _tune_sqlite(engine: sqlalchemy.engine.Engine) -> None:
    """WAL journal (readers never block the writer; persistent in the file) and synchronous=NORMAL
    (no fsync per commit): the embedded default stays usable with a few local worker processes."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections made while creating the schema predate the listener


def _open_lock_engine(storage: ServiceRDBStorage, role: str) -> None:
    """The budget lock's engine: no pool, so its connection exists only while a trial is created
    (the lock and the budget count run on it while Optuna creates the trial on the storage's own
    connection). Kept as a second pool slot it would double what a training worker holds."""
    storage.lock_engine = sqlalchemy.create_engine(storage.engine.url, poolclass=sqlalchemy.pool.NullPool)
    if storage.engine.dialect.name == "postgresql":
        # After RDBStorage's own connects (schema and version checks) the retrying connect applies to all.
        _wait_for_a_slot(storage.engine, role)
        _wait_for_a_slot(storage.lock_engine, f"{role} budget-lock")
        storage.engine.dispose()  # reconnect under the listener, with the name in pg_stat_activity


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Give the connections back (the worker's exit path, also after a signal)."""
    backend = backend_of(storage)
    with contextlib.suppress(Exception):
        backend.remove_session()
    for engine in (getattr(backend, "engine", None), getattr(backend, "lock_engine", None)):
        if engine is not None:
            engine.dispose()
    if hasattr(backend, "close"):
        with contextlib.suppress(Exception):
            backend.close()


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    backend = backend_of(storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_id: int) -> Iterator[sqlalchemy.engine.Connection | None]:
    """Serialize the budget check + trial creation of one study across processes and machines:
    a PostgreSQL transaction-scoped advisory lock (released if the holder dies), a MySQL named
    lock, or a file lock beside an SQLite database. Yields a connection for the budget query
    (None for storages without one). A worker behind `dlnn proxy` gets None: the proxy takes this
    lock itself when it creates the trial (ops/proxy.BudgetedStorage). Other storages get no
    cross-process lock, so a study's budget may be overshot by up to (workers - 1) trials there."""
    with _thread_lock:
        rdb = rdb_of(storage)
        if rdb is None:
            yield None
            return
        dialect = rdb.engine.dialect.name
        lock_engine = getattr(rdb, "lock_engine", None) or rdb.engine
        if dialect == "postgresql":
            key = {"ns": LOCK_NAMESPACE, "id": study_id}
            with lock_engine.connect() as conn, conn.begin():
                if not conn.execute(sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:ns, :id)"), key).scalar():
                    # Taken: while it waits, this worker holds the lock's connection only (its idle pooled one is
                    # closed and reopened after), so a queue of waiting workers never fills the server.
                    if lock_engine is not rdb.engine:
                        _close_idle_connection(rdb.engine)
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:ns, :id)"), key)
                yield conn
        elif dialect == "mysql":
            name = f"dlnn-study-{study_id}"
            with lock_engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": name})
                try:
                    yield conn
                finally:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        elif dialect == "sqlite" and rdb.engine.url.database not in (None, "", ":memory:"):
            import fcntl

            with open(f"{os.path.abspath(rdb.engine.url.database)}.dlnn-lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                with rdb.engine.connect() as conn:
                    yield conn
        else:
            with rdb.engine.connect() as conn:
                yield conn


def _close_idle_connection(engine: sqlalchemy.engine.Engine) -> None:
    """Close one idle connection of the pool, if it has one; the pool opens a new one when next needed."""
    if engine.pool.checkedin() == 0:
        return
    connection = engine.raw_connection()
    connection.invalidate()
    connection.close()


def artifact_store(url: str | Path):
    """Checkpoints, plots and dataset files: a directory that every worker and the dashboard can
    reach, or `s3://bucket/prefix` (urls.py parses both)."""
    from .artifacts import open_store  # here, not at the top: Optuna's artifact stores import boto3

    return open_store(url)


def is_connection_error(exc: BaseException) -> bool:
    """A lost, refused or locked database connection (worth waiting for), as opposed to a bug; a
    full server ("too many clients already") is an OperationalError too, and a pool that found no
    free connection in its timeout (TimeoutError) waits on one that a hung database holds.
    Optuna wraps database errors in StorageInternalError, so the cause chain is searched."""
    return connection_error_of(exc) is not None


def connection_error_of(exc: BaseException) -> BaseException | None:
    """The connection error in `exc`'s cause chain (`exc` itself, or what it was raised from or while
    handling), or None: what a log line should name. When Optuna's tell meets a lost database it
    raises an UnboundLocalError while handling the OperationalError; the OperationalError is the news."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.PendingRollbackError, sa_exc.TimeoutError)):
            return exc
        if isinstance(exc, sa_exc.DBAPIError) and getattr(exc, "connection_invalidated", False):
            return exc
        if type(exc).__module__.startswith("psycopg") and type(exc).__name__ in ("OperationalError", "InterfaceError"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: BaseException) -> str:
    """The database's own words: the first line of the innermost DB-API error."""
    inner = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    orig = getattr(inner, "orig", None) or inner
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
