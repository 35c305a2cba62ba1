"""The client side of Optuna's gRPC storage proxy: workers use `grpc://host:port` instead of a database URL.

The proxy itself (ops/proxy.py) holds the PostgreSQL connections and an in-process trial
cache; hundreds of workers talk to it over gRPC instead of each keeping its own pool and re-reading the
study (see README "Run on GPU servers"). Optuna's own client has no heartbeat, so `HeartbeatGrpcStorageProxy`
adds one, stored as a trial system attribute: a killed worker's trial is still failed and retried as on
PostgreSQL. The heartbeat time comes from the worker's clock, so keep the hosts' clocks in sync (NTP) well
within the grace period.

Workers: DLNN_STORAGE=grpc://dlnn-proxy:13000 dlnn work STUDY
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from .optuna_private import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

SCHEME = "grpc"
DEFAULT_PORT = 13000
HEARTBEAT_KEY = "dlnn:heartbeat"  # system attr: [trial_id, unix time]; the id makes a retried copy's stale value inert


@dataclass(frozen=True)
class ProxyAddress:
    """Where a gRPC storage proxy listens."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{host}:{self.port}"


def is_proxy_url(url: str | None) -> bool:
    """True for `grpc://…`: the storage is a gRPC proxy, not a database."""
    return (url or "").strip().lower().startswith(SCHEME + "://")


def parse_proxy_url(url: str) -> ProxyAddress:
    """Parse `grpc://host[:port]` (port default 13000); ValueError naming what is wrong."""
    text = (url or "").strip()
    if not is_proxy_url(text):
        raise ValueError(f"storage: {url!r} is not a gRPC proxy address; expected grpc://host:port")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"storage: {url!r} has a bad port; expected grpc://host:port with port 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"storage: {url!r} has no host; expected grpc://host:port")
    if parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"storage: {url!r} is not allowed; expected only grpc://host:port (the proxy holds the credentials)")
    if port == 0:
        raise ValueError(f"storage: {url!r} has a bad port; expected grpc://host:port with port 1-65535")
    return ProxyAddress(parts.hostname, port or DEFAULT_PORT)


def require_grpc() -> None:
    if importlib.util.find_spec("grpc") is None:
        raise RuntimeError("the gRPC storage proxy needs the grpcio package: pip install grpcio")


class HeartbeatGrpcStorageProxy(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's GrpcStorageProxy plus the heartbeat `study.optimize` uses to fail and retry dead workers' trials."""

    def __init__(self, *, host: str = "localhost", port: int = DEFAULT_PORT, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
        if heartbeat_interval is not None and heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval: {heartbeat_interval!r} is not allowed; expected a positive integer")
        if grace_period is not None and grace_period <= 0:
            raise ValueError(f"grace_period: {grace_period!r} is not allowed; expected a positive integer")
        super().__init__(host=host, port=port)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period if grace_period is not None else (2 * heartbeat_interval if heartbeat_interval else None)
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, [trial_id, time.time()])
        except (UpdateFinishedTrialError, KeyError):  # finished (or failed as stale) meanwhile: nothing to keep alive
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.grace_period is not None
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_KEY)
            if isinstance(beat, list) and len(beat) == 2 and beat[0] == trial._trial_id and now - beat[1] > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback


def connect(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None,
            heartbeat_stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
            timeout: float | None = 60.0) -> HeartbeatGrpcStorageProxy:
    """The storage a worker uses for `grpc://host:port`, once the proxy answers (ConnectionError after `timeout`)."""
    address = parse_proxy_url(url)
    require_grpc()
    storage = HeartbeatGrpcStorageProxy(host=address.host, port=address.port, heartbeat_interval=heartbeat_interval,
                                        grace_period=grace_period,
                                        heartbeat_stale_trial_callback=heartbeat_stale_trial_callback)
    try:
        storage.wait_server_ready(timeout=timeout)
    except ConnectionError:
        storage.close()
        raise ConnectionError(f"no gRPC storage proxy answers at {address.url} (waited {timeout} s)") from None
    return storage
