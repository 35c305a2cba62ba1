"""Storage, connection pool, budget lock and artifact store: the service's side of the database.

Any SQLAlchemy URL works (the default is an SQLite file in the working directory; PostgreSQL is
the production storage), and `grpc://host:port` names an Optuna gRPC storage proxy. Connections
are bounded (one kept per process, a few more in bursts), pre-pinged and recycled, so dozens of
workers fit into PostgreSQL's default 100 connections and a restarted database is survived.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from sqlalchemy import exc as sa_exc

from .errors import UsageError

ENV_STORAGE = "DLNN_STORAGE"
ENV_ARTIFACTS = "DLNN_ARTIFACTS"
DEFAULT_STORAGE = "sqlite:///dlnn.db"
DEFAULT_ARTIFACTS = "dlnn_artifacts"
LOCK_NAMESPACE = 0x444C4E4E  # "DLNN": first key of PostgreSQL advisory locks taken by the service

_thread_lock = threading.Lock()  # serializes budget checks between threads of one worker (--jobs)


def storage_url(flag: str | None) -> str:
    """--storage, else $DLNN_STORAGE, else the embedded SQLite file in the working directory."""
    return flag or os.environ.get(ENV_STORAGE) or DEFAULT_STORAGE


def artifacts_dir(flag: str | None) -> Path:
    return Path(flag or os.environ.get(ENV_ARTIFACTS) or DEFAULT_ARTIFACTS)


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and provenance."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def is_grpc(url: str) -> bool:
    return url.startswith("grpc://")


def engine_kwargs(url: str, jobs: int = 1) -> dict[str, Any]:
    """A small pool: one connection kept (Optuna closes its session after every call), bursts for
    the heartbeat thread, the budget lock and --jobs threads; pre-ping and recycle so connections
    dropped by a restarted database or a proxy are replaced instead of failing a trial."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120}, "pool_pre_ping": True}
    return {
        "pool_size": 1,
        "max_overflow": 2 + 2 * max(1, jobs),
        "pool_pre_ping": True,
        "pool_recycle": 300,
        "pool_timeout": 120,
    }


def open_storage(url: str, *, create_schema: bool = False, jobs: int = 1, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, stale_callback=None) -> optuna.storages.BaseStorage:
    """An RDBStorage (or gRPC proxy) for `url`. Only `launch` creates the schema; workers never race it."""
    if is_grpc(url):  # a gRPC storage proxy in front of the database (workers/proxy.py), for large fleets
        from .proxy import connect

        try:
            return connect(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                           heartbeat_stale_trial_callback=stale_callback)
        except (ValueError, RuntimeError, ConnectionError) as exc:
            raise UsageError(str(exc)) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs(url, jobs), skip_table_creation=not create_schema,
                heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_callback,
            )
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
        raise UsageError(f"--storage {redact(url)!r} is not a usable SQLAlchemy URL ({exc})") from None
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) else str(exc)
        if "no such table" in reason or "does not exist" in reason and "relation" in reason:
            raise UsageError(f"{redact(url)} holds no studies yet: run `dlnn launch SPEC` first") from None
        raise UsageError(f"cannot open storage {redact(url)}: {reason}") from None
    except RuntimeError as exc:  # schema version mismatch
        raise UsageError(f"storage {redact(url)}: {exc}") from None


def close_storage(storage: optuna.storages.BaseStorage) -> None:
    """Give the connections back (the worker's exit path, also after a signal)."""
    backend = getattr(storage, "_backend", storage)
    with contextlib.suppress(Exception):
        backend.remove_session()
    engine = getattr(backend, "engine", None)
    if engine is not None:
        engine.dispose()
    if hasattr(backend, "close"):
        with contextlib.suppress(Exception):
            backend.close()


def rdb_of(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage | None:
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_id: int) -> Iterator[None]:
    """Serialize the budget check + trial creation of one study across processes and machines:
    a PostgreSQL transaction-scoped advisory lock (released if the holder dies), a MySQL named
    lock, or a file lock beside an SQLite database. Other storages get no cross-process lock,
    so a study's budget may be overshot by up to (workers - 1) trials there."""
    with _thread_lock:
        rdb = rdb_of(storage)
        if rdb is None:
            yield
            return
        dialect = rdb.engine.dialect.name
        if dialect == "postgresql":
            with rdb.engine.connect() as conn, conn.begin():
                conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:ns, :id)"), {"ns": LOCK_NAMESPACE, "id": study_id})
                yield
        elif dialect == "mysql":
            name = f"dlnn-study-{study_id}"
            with rdb.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": name})
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
        elif dialect == "sqlite" and rdb.engine.url.database not in (None, "", ":memory:"):
            import fcntl

            with open(f"{rdb.engine.url.database}.dlnn-lock", "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                yield
        else:
            yield


def artifact_store(path: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    """Checkpoints and plots: a directory that every worker and the dashboard can reach
    (a shared volume in docker compose, a network file system across hosts)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(path))


def is_connection_error(exc: BaseException) -> bool:
    """A lost or refused database connection (worth waiting for), as opposed to a bug."""
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(getattr(exc, "connection_invalidated", False))
