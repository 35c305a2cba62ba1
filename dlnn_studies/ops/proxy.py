"""Optuna's gRPC storage proxy for large worker fleets, the server: one process holds the PostgreSQL
connections and an in-process trial cache, and serves the study storage to workers over gRPC (the
workers' side, with its heartbeat, is store/proxy_client.py).

Serve:   dlnn proxy --storage postgresql+psycopg2://user@db:5432/dlnn --port 13000
Workers: DLNN_STORAGE=grpc://dlnn-proxy:13000 dlnn work STUDY
"""

from __future__ import annotations

import signal
import sys
import threading

import optuna

from ..store.proxy_client import require_grpc
from ..store.urls import DEFAULT_PROXY_PORT, ProxyAddress, is_grpc, is_sqlite, normalize_url, redact


def backend_storage(storage_url: str, pool_size: int = 16) -> optuna.storages.BaseStorage:
    """The proxy's own storage: PostgreSQL with a bounded, pre-pinged pool behind Optuna's trial cache."""
    if is_grpc(storage_url):
        raise ValueError(f"storage: {storage_url!r} is a proxy; the proxy needs the database URL itself")
    storage_url = normalize_url(storage_url)  # a plain postgresql:// gets the installed driver, as every other command's
    engine_kwargs = {}
    if not is_sqlite(storage_url):
        engine_kwargs = {"pool_size": pool_size, "max_overflow": 0, "pool_pre_ping": True, "pool_recycle": 1800}
    return optuna.storages.get_storage(optuna.storages.RDBStorage(storage_url, engine_kwargs=engine_kwargs))


def serve(storage_url: str, host: str = "0.0.0.0", port: int = DEFAULT_PROXY_PORT, *, threads: int = 16,
          stop: threading.Event | None = None, grace_s: float = 10.0) -> None:
    """Serve `storage_url` over gRPC until `stop` is set (by default: until SIGTERM or SIGINT)."""
    from concurrent.futures import ThreadPoolExecutor

    from ..store.optuna_private import grpc_make_server

    make_server = grpc_make_server()

    require_grpc()
    storage = backend_storage(storage_url, pool_size=threads)
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
