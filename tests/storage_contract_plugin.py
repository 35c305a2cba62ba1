"""A pytest plugin that runs Optuna's own storage tests (tests/storages_tests of the installed
Optuna's sdist) against one storage the service builds, named by $DLNN_CONTRACT_KIND:

  sqlite      open_storage("sqlite:///file"): what commands open (the file a copy of a launched one)
  postgresql  open_storage("postgresql://...") on $DLNN_CONTRACT_PG_URL, emptied before every test
  view        the worker's storage: TrialView over open_storage(sqlite file, worker=True)
  grpc        open_storage("grpc://...") against `dlnn proxy`'s server (ops/proxy.serve) on an
              SQLite file, served from a thread of this process

Optuna's tests ask `optuna.testing.storages.StorageSupplier` for a storage by mode name; this plugin
replaces that class (and empties the mode lists but for the kind) before the tests import it, so
every mode a test names builds the kind under test. `tests/test_storage_contract.py` runs it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import types
from typing import Any

import pytest

KIND = os.environ.get("DLNN_CONTRACT_KIND", "")
KINDS = ("sqlite", "postgresql", "view", "grpc")
ALL = KINDS
NOT_RDB = ("view", "grpc")

_MAX_RETRY = ("max_retry None and 0 vary only Optuna's callback's arithmetic, each after a wait for a stale "
              "trial; max_retry=1 runs our storage's part (the stale trial found, its retry enqueued)")
# Optuna's tests that do not hold for a storage of ours, by test name, with the kinds and the
# parametrization (None: every one) they are deselected for, and why.
DESELECTED: list[tuple[str, tuple[str, ...], dict[str, Any] | None, str]] = [
    ("test_fail_stale_trials", ALL, None,
     "intended: a RUNNING trial that never sent a heartbeat is stale once older than the grace period "
     "(its worker died before its first beat); Optuna keeps it RUNNING forever"),
    ("test_heartbeat_experimental_warnings", ALL, None,
     "intended: open_storage silences Optuna's ExperimentalWarning for heartbeat_interval, which every "
     "worker sets"),
    ("test_fail_stale_trials_with_race_condition", ALL, None,
     "its racing processes open Optuna's own RDBStorage from the URL, not a storage of ours"),
    ("test_retry_heartbeat_stale_trial_callback_repetitive_failure", ALL, None,
     "Optuna's callback's retry bookkeeping over five stale rounds, each a wait of grace_period + 1 s; our "
     "storage's part, the stale trial found and its retry enqueued with its history, is in the max_retry=1 "
     "tests and test_callbacks"),
    ("test_retry_heartbeat_stale_trial_callback", ALL, {"max_retry": None}, _MAX_RETRY),
    ("test_retry_heartbeat_stale_trial_callback", ALL, {"max_retry": 0}, _MAX_RETRY),
    ("test_retry_heartbeat_stale_trial_callback_intermediate", ALL, {"max_retry": None}, _MAX_RETRY),
    ("test_retry_heartbeat_stale_trial_callback_intermediate", ALL, {"max_retry": 0}, _MAX_RETRY),
    ("test_get_trials_included_trial_ids", NOT_RDB, None, "asserts an RDBStorage (it calls RDBStorage._get_trials)"),
    ("test_get_trials_trial_id_greater_than", NOT_RDB, None, "asserts an RDBStorage (it calls RDBStorage._get_trials)"),
    ("test_get_stale_trial_ids", NOT_RDB, None,
     "asserts an RDBStorage (it sets the heartbeat settings on the storage object after it is made)"),
]

try:
    import fakeredis  # noqa: F401
except ImportError:
    # optuna.testing.storages imports fakeredis at module level for its Redis journal mode, which no
    # storage of ours is: an empty module lets it import without installing a Redis fake.
    sys.modules["fakeredis"] = types.ModuleType("fakeredis")

import optuna.testing.storages as optuna_suppliers  # noqa: E402

from dlnn_studies.ops import proxy  # noqa: E402
from dlnn_studies.store import proxy_client  # noqa: E402
from dlnn_studies.store.optuna_private import grpc_make_server, rdb_models  # noqa: E402
from dlnn_studies.store.storage import close_storage, open_storage  # noqa: E402
from dlnn_studies.store.trial_view import TrialView  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _empty_postgres(url: str) -> None:
    """Every Optuna table but the schema version emptied, children first: each test starts on an empty
    storage as with a new database, without paying for one (DELETE, as the tables hold a test's few
    rows, where TRUNCATE's file work costs more)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        tables = [t.name for t in rdb_models.BaseModel.metadata.sorted_tables if t.name != "version_info"]
        with engine.begin() as conn:
            for table in reversed(tables):
                conn.execute(sqlalchemy.text(f'DELETE FROM "{table}"'))
    finally:
        engine.dispose()


_MADE: dict[str, str] = {}  # made once per run: the launched SQLite file, the PostgreSQL schema


def _launched_sqlite() -> str:
    """An SQLite file with the schema, made once per run by open_storage(create_schema=True) as `dlnn
    launch` makes it; each test opens a copy of it, as commands and workers open a launched database
    (a new schema costs Optuna two loads of its migration scripts, an existing one one or none)."""
    if "sqlite" not in _MADE:
        folder = tempfile.mkdtemp(prefix="dlnn-contract-")
        atexit.register(shutil.rmtree, folder, True)
        close_storage(open_storage(f"sqlite:///{folder}/launched.db", create_schema=True))
        _MADE["sqlite"] = f"{folder}/launched.db"
    return _MADE["sqlite"]


def _wait_for_port(port: int, server: threading.Thread, timeout: float = 30.0) -> None:
    """Until the proxy listens: a gRPC client that finds no server waits a second before it tries again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if not server.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the proxy on port {port} did not start") from None
            time.sleep(0.01)


class ServiceStorageSupplier(contextlib.AbstractContextManager):
    """Optuna's StorageSupplier, building the kind under test for every mode name; "grpc_proxy" (a
    proxy in front of a given storage) uses Optuna's server factory, as `dlnn proxy` does, and our client."""

    def __init__(self, storage_specifier: str, **kwargs: Any) -> None:
        self.storage_specifier = storage_specifier
        self.extra_args = kwargs
        self.storage = None
        self._cleanup: list = []

    def __enter__(self):
        try:
            self.storage = self._build()
        except BaseException:
            self._close()
            raise
        return self.storage

    def _heartbeat(self) -> dict[str, Any]:
        args = dict(self.extra_args)
        return {"heartbeat_interval": args.pop("heartbeat_interval", None), "grace_period": args.pop("grace_period", None),
                "stale_callback": args.pop("heartbeat_stale_trial_callback", None)}

    def _sqlite_url(self) -> str:
        """A new copy of the launched database (`_launched_sqlite`)."""
        folder = tempfile.mkdtemp(prefix="dlnn-contract-")
        self._cleanup.append(lambda: shutil.rmtree(folder, ignore_errors=True))
        shutil.copyfile(_launched_sqlite(), f"{folder}/contract.db")
        return f"sqlite:///{folder}/contract.db"

    def _build(self):
        if self.storage_specifier == "grpc_proxy":
            return self._serve(self.extra_args["base_storage"])
        hb = self._heartbeat()
        if KIND == "sqlite":
            return self._opened(open_storage(self._sqlite_url(), **hb))
        if KIND == "postgresql":
            url = os.environ["DLNN_CONTRACT_PG_URL"]
            storage = self._opened(open_storage(url, create_schema="postgresql" not in _MADE, **hb))
            _MADE["postgresql"] = url
            _empty_postgres(storage.engine.url)
            return storage
        if KIND == "view":
            return TrialView(self._opened(open_storage(self._sqlite_url(), worker=True, **hb)))
        if KIND == "grpc":
            return self._proxied(**hb)
        raise pytest.UsageError(f"DLNN_CONTRACT_KIND={KIND!r}: expected one of {', '.join(KINDS)}")

    def _opened(self, storage):
        self._cleanup.append(lambda: close_storage(storage))
        return storage

    def _proxied(self, heartbeat_interval, grace_period, stale_callback):
        """`dlnn proxy`'s server (ops/proxy.serve) on a new SQLite file in a thread, and the worker's client."""
        url, port, stop = self._sqlite_url(), _free_port(), threading.Event()
        server = threading.Thread(target=proxy.serve, args=(url, "127.0.0.1", port), daemon=True,
                                  kwargs={"threads": 4, "stop": stop, "grace_s": 1.0})
        server.start()
        self._cleanup.append(lambda: (stop.set(), server.join(30)))
        _wait_for_port(port, server)
        client = open_storage(f"grpc://127.0.0.1:{port}", heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period, stale_callback=stale_callback)
        self._cleanup.append(client.close)
        return client

    def _serve(self, base_storage):
        from concurrent.futures import ThreadPoolExecutor

        port = _free_port()
        server = grpc_make_server()(base_storage, "127.0.0.1", port, ThreadPoolExecutor(max_workers=4))
        server.start()
        self._cleanup.append(lambda: server.stop(1.0).wait())
        client = proxy_client.connect(f"grpc://127.0.0.1:{port}")
        self._cleanup.append(client.close)
        return client

    def _close(self) -> None:
        while self._cleanup:
            with contextlib.suppress(Exception):
                self._cleanup.pop()()

    def __exit__(self, *exc_info) -> None:
        self._close()


if KIND:
    optuna_suppliers.STORAGE_MODES[:] = [KIND]
    optuna_suppliers.STORAGE_MODES_HEARTBEAT[:] = [KIND]
    optuna_suppliers.StorageSupplier = ServiceStorageSupplier


def _matches(item, name: str, kinds: tuple[str, ...], params: dict[str, Any] | None) -> bool:
    if KIND not in kinds or getattr(item, "originalname", item.name) != name:
        return False
    given = getattr(getattr(item, "callspec", None), "params", {})
    return params is None or all(k in given and given[k] == v for k, v in params.items())


_REASON = pytest.StashKey[str]()
_REPORT: dict[str, Any] = {"kind": KIND, "collected": 0, "deselected": {}, "outcomes": {}, "seconds": None}


def pytest_sessionstart(session) -> None:
    _REPORT["seconds"] = -time.monotonic()


def pytest_collection_modifyitems(session, config, items) -> None:
    """Drop the DESELECTED tests; a listed name that matches no collected test is an error (unless
    -k or -m picks tests), so the list cannot outlive the tests it names."""
    if not KIND:
        raise pytest.UsageError("set DLNN_CONTRACT_KIND to the storage kind under test")
    kept, dropped, used = [], [], set()
    for item in items:
        hit = next((i for i, entry in enumerate(DESELECTED) if _matches(item, *entry[:3])), None)
        if hit is None:
            kept.append(item)
        else:
            dropped.append(item)
            used.add(hit)
            item.stash[_REASON] = DESELECTED[hit][3]
    unused = [DESELECTED[i][0] for i in range(len(DESELECTED)) if i not in used and KIND in DESELECTED[i][1]]
    if unused and not config.option.keyword and not config.option.markexpr:
        raise pytest.UsageError(f"DESELECTED names tests that were not collected for {KIND}: {', '.join(unused)}")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        _REPORT["deselected"] = {item.nodeid: item.stash[_REASON] for item in dropped}
    items[:] = kept
    _REPORT["collected"] = len(kept) + len(dropped)


def pytest_runtest_logreport(report) -> None:
    """Each test's outcome: its call's, or a failed setup's or teardown's."""
    if report.when == "call" or report.outcome != "passed":
        if report.nodeid not in _REPORT["outcomes"] or report.outcome != "passed":
            _REPORT["outcomes"][report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus) -> None:
    """The report the outer test reads ($DLNN_CONTRACT_REPORT): counts, reasons, outcomes, seconds."""
    _REPORT["seconds"] = round(_REPORT["seconds"] + time.monotonic(), 1) if _REPORT["seconds"] else None
    path = os.environ.get("DLNN_CONTRACT_REPORT")
    if path:
        with open(path, "w") as handle:
            json.dump(_REPORT, handle, indent=1)
