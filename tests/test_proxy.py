"""The gRPC storage proxy: `grpc://host:port` URLs, a real proxy process on PostgreSQL, and its heartbeat."""

import importlib.util
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import psycopg2
import pytest

from workers import proxy

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[1]


def test_parse_proxy_url():
    assert proxy.parse_proxy_url("grpc://dlnn-proxy:13001") == proxy.ProxyAddress("dlnn-proxy", 13001)
    assert proxy.parse_proxy_url("grpc://proxy") == proxy.ProxyAddress("proxy", 13000)
    assert proxy.parse_proxy_url("grpc://[::1]:9") .url == "grpc://[::1]:9"
    assert proxy.is_proxy_url("GRPC://x:1") and not proxy.is_proxy_url("postgresql://u@h/db")
    for bad, msg in [("grpc://:13000", "no host"), ("grpc://h:99999", "bad port"), ("grpc://h:x", "bad port"),
                     ("grpc://u:pw@h:1", "only grpc://host:port"), ("grpc://h:1/db", "only grpc://host:port"),
                     ("postgresql://h/db", "not a gRPC proxy")]:
        with pytest.raises(ValueError, match=msg):
            proxy.parse_proxy_url(bad)
    with pytest.raises(ValueError, match="needs the database URL"):
        proxy.backend_storage("grpc://h:1")


needs_grpc = pytest.mark.skipif(importlib.util.find_spec("grpc") is None, reason="the gRPC proxy needs grpcio")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served():
    """A fresh database with one study, served by `python -m workers.proxy`; yields (db url, proxy url, name)."""
    name = f"dlnn_proxy_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    db_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    optuna.create_study(study_name="s", storage=db_url)  # the launcher's job, directly on PostgreSQL
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workers.proxy", "--storage", db_url, "--host", "127.0.0.1",
                             "--port", str(port), "--threads", "4"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        yield db_url, f"grpc://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@needs_grpc
def test_workers_optimize_through_the_proxy_and_it_stops_on_sigterm(served):
    db_url, url, proc = served
    storage = proxy.connect(url, timeout=30)
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=4)
    storage.close()
    direct = optuna.load_study(study_name="s", storage=db_url)
    assert [t.state for t in direct.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "gRPC storage proxy stopped" in proc.stderr.read()


@needs_grpc
def test_a_dead_workers_trial_is_failed_and_retried_and_a_live_one_is_not(served):
    _, url, _ = served
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
    storage = proxy.connect(url, heartbeat_interval=1, grace_period=2, heartbeat_stale_trial_callback=retry)
    study = optuna.load_study(study_name="s", storage=storage)

    # A trial whose worker died: its last heartbeat is older than the grace period.
    dead = study.ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
    storage.set_trial_system_attr(dead._trial_id, proxy.HEARTBEAT_KEY, [dead._trial_id, time.time() - 60])

    # A live trial in `optimize`, running longer than the grace period, keeps beating.
    seen = []

    def objective(trial):
        time.sleep(3)
        seen.append(storage._get_stale_trial_ids(study._study_id))
        return trial.suggest_float("x", -1, 1)

    study.optimize(objective, n_trials=1)  # fails the dead trial first, then runs the retry (same params)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == optuna.trial.TrialState.FAIL
    retried = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == study.trials[dead.number].params
    assert seen == [[]]  # the live retry is never stale, though it inherited the dead trial's old beat
    storage.close()


@needs_grpc
def test_connect_fails_clearly_without_a_proxy():
    with pytest.raises(ConnectionError, match="no gRPC storage proxy answers"):
        proxy.connect(f"grpc://127.0.0.1:{_free_port()}", timeout=1)
