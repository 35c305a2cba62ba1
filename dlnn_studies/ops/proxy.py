"""Optuna's gRPC storage proxy for large worker fleets, the server: one process holds the PostgreSQL
connections and an in-process trial cache, and serves the study storage to workers over gRPC (the
workers' side, with its heartbeat, is store/proxy_client.py).

The proxy also keeps each dlnn study's trial budget: a worker behind it has no database connection for
the budget lock (storage.study_lock), so the proxy creates every new trial under that lock itself, after
counting the study's trials in the database, and refuses one past the budget or the timeout (the worker
reads the refusal as BudgetReached). The lock is the same PostgreSQL advisory lock direct workers take,
so workers behind one or more proxies and direct workers may share a study. Queued trials (retries,
baselines) are always created, as on the direct path. The budgets come from the caller (`dlnn proxy`
passes study.service.StudyBudgets: ops/ does not read specs).

Serve:   dlnn proxy --storage postgresql+psycopg2://user@db:5432/dlnn --port 13000
Workers: DLNN_STORAGE=grpc://dlnn-proxy:13000 dlnn work STUDY
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import optuna

from ..store.optuna_private import CachedStorageBase
from ..store.proxy_client import BUDGET_REFUSED, require_grpc
from ..store.budget import BudgetReached, budget_counts, check_budget
from ..store.storage import study_lock
from ..store.urls import DEFAULT_PROXY_PORT, ProxyAddress, is_grpc, is_sqlite, normalize_url, redact

BudgetOf = Callable[[optuna.storages.BaseStorage, int], "tuple[int, float | None] | None"]


class BudgetedStorage(CachedStorageBase):
    """Optuna's trial cache in front of the database, whose every new trial (a worker's ask that found
    no queued trial) of a study with a budget is created under the study lock and only within that
    budget and timeout (BudgetReached otherwise). `budget_of(storage, study_id)` gives a study's
    (trials, timeout in s), or None for a study left to Optuna's rules (`dlnn proxy` passes
    study.service.StudyBudgets(), which reads a dlnn study's stored spec)."""

    def __init__(self, backend: optuna.storages.RDBStorage, budget_of: BudgetOf | None = None):
        super().__init__(backend)
        self.budget_of = budget_of

    def create_new_trial(self, study_id: int, template_trial=None) -> int:
        limits = None  # a template is a queued trial (a retry, a baseline): always created, as on the direct path
        if template_trial is None and self.budget_of is not None:
            limits = self.budget_of(self, study_id)
        if limits is None:
            return super().create_new_trial(study_id, template_trial)
        with study_lock(self, study_id) as conn:
            check_budget(*limits, *budget_counts(conn, study_id), new_trial=True)
            return super().create_new_trial(study_id)


def backend_storage(storage_url: str, pool_size: int = 16, budget_of: BudgetOf | None = None) -> optuna.storages.BaseStorage:
    """The proxy's own storage: PostgreSQL with a bounded, pre-pinged pool behind Optuna's trial cache,
    which keeps the studies' budgets that `budget_of` gives (BudgetedStorage)."""
    if is_grpc(storage_url):
        raise ValueError(f"storage: {storage_url!r} is a proxy; the proxy needs the database URL itself")
    storage_url = normalize_url(storage_url)  # a plain postgresql:// gets the installed driver, as every other command's
    engine_kwargs = {}
    if not is_sqlite(storage_url):
        engine_kwargs = {"pool_size": pool_size, "max_overflow": 0, "pool_pre_ping": True, "pool_recycle": 1800}
    return BudgetedStorage(optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs), budget_of)


def make_server(storage: optuna.storages.BaseStorage, host: str, port: int, thread_pool=None):
    """Optuna's gRPC storage server whose CreateNewTrial answers a refusal past a study's budget with
    FAILED_PRECONDITION and the reason (store/proxy_client.budget_refusal reads it), not a traceback."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from ..store.optuna_private import grpc_proxy_service

    service_class, add_service = grpc_proxy_service()

    class Service(service_class):
        def CreateNewTrial(self, request, context):  # noqa: N802 (the gRPC method's name)
            try:
                return super().CreateNewTrial(request, context)
            except BudgetReached as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{BUDGET_REFUSED}{exc}")

    server = grpc.server(thread_pool or ThreadPoolExecutor(max_workers=10))
    add_service(Service(storage), server)
    server.add_insecure_port(f"{host}:{port}")
    return server


def serve(storage_url: str, host: str = "0.0.0.0", port: int = DEFAULT_PROXY_PORT, *, threads: int = 16,
          stop: threading.Event | None = None, grace_s: float = 10.0, budget_of: BudgetOf | None = None) -> None:
    """Serve `storage_url` over gRPC until `stop` is set (by default: until SIGTERM or SIGINT), keeping
    the budgets `budget_of` gives (BudgetedStorage; without it, none)."""
    from concurrent.futures import ThreadPoolExecutor

    require_grpc()
    storage = backend_storage(storage_url, pool_size=threads, budget_of=budget_of)
    server = make_server(storage, host, port, ThreadPoolExecutor(max_workers=threads))
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"dlnn: gRPC storage proxy on {ProxyAddress(host, port).url} -> {redact(storage_url)}",
          file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    server.stop(grace_s).wait()
    print("dlnn: gRPC storage proxy stopped", file=sys.stderr, flush=True)
