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

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial, TrialState

from .optuna_private import BaseHeartbeat, StaleTrialsHook, trial_id

from .urls import DEFAULT_PROXY_PORT, parse_proxy_url

HEARTBEAT_KEY = "dlnn:heartbeat"  # system attr: [trial_id, unix time]; the id makes a retried copy's stale value inert


BUDGET_REFUSED = "dlnn: budget: "  # how the proxy's refusal of a trial past a study's budget starts (ops/proxy.py)


def budget_refusal(exc: BaseException) -> str | None:
    """The proxy's reason for refusing a new trial (the study's budget or timeout is used up), from the
    gRPC error a worker's create_new_trial raised; None for any other error."""
    details = getattr(exc, "details", None)
    if not type(exc).__module__.startswith("grpc") or not callable(details):
        return None
    text = details() or ""
    return text[len(BUDGET_REFUSED):] if text.startswith(BUDGET_REFUSED) else None


def require_grpc() -> None:
    if importlib.util.find_spec("grpc") is None:
        raise RuntimeError("the gRPC storage proxy needs the grpcio package: pip install grpcio")


class HeartbeatGrpcStorageProxy(StaleTrialsHook, GrpcStorageProxy, BaseHeartbeat):
    """Optuna's GrpcStorageProxy plus the heartbeat `study.optimize` uses to fail and retry dead workers' trials."""

    def __init__(self, *, host: str = "localhost", port: int = DEFAULT_PROXY_PORT, heartbeat_interval: int | None = None,
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

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials whose last heartbeat (a system attr) is older than the grace period."""
        assert self.grace_period is not None
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_KEY)
            if isinstance(beat, list) and len(beat) == 2 and beat[0] == trial_id(trial) and now - beat[1] > self.grace_period:
                stale.append(trial_id(trial))
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
