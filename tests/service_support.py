"""Shared pieces of the study-service tests: a fresh PostgreSQL database per test (and the SQLite
default), tiny specs, a fast stand-in for `fit`, and helpers to run `dlnn` as separate processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("DLNN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

TINY_DATA = """
[base]
epochs = {epochs}
batch_size = 128
[base.data]
system = "damped_oscillator"
n_train = 256
n_val = 128
n_test = 128
n_rollout = 2
rollout_steps = 20
[base.model]
form = "structured"
hidden = 16
activation = "swish"
"""

TINY_SPACE = """
[space.optimizer]
choices = ["adam", "rmsprop"]
[space.optimizer.lr]
per_optimizer = true
[space.model.hidden]
low = 16
high = 32
step = 16
"""


def tiny_spec(name: str = "tiny", trials: int = 6, epochs: int = 2, sampler: str = 'name = "tpe"\nn_startup_trials = 3',
              pruner: str = 'name = "none"', heartbeat: int = 1, grace: int = 3, extra: str = "", space: str = TINY_SPACE) -> str:
    return (f'[study]\nname = "{name}"\n[budget]\ntrials = {trials}\n'
            f"[worker]\nheartbeat_interval = {heartbeat}\ngrace_period = {grace}\n"
            f"[sampler]\n{sampler}\n[pruner]\n{pruner}\n" + TINY_DATA.format(epochs=epochs) + space + extra)


def write_spec(tmp_path: Path, text: str, filename: str = "spec.toml") -> Path:
    path = tmp_path / filename
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ databases


def _admin():
    import psycopg2

    try:
        conn = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is required for the service tests (set DLNN_TEST_PG): {exc}")
    conn.autocommit = True
    return conn


def create_pg_database() -> tuple[str, str]:
    """A new empty database; returns (its name, its SQLAlchemy URL)."""
    name = f"dlnn_test_{uuid.uuid4().hex[:10]}"
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base, _, _ = PG_ADMIN.rpartition("/")
    return name, f"{base}/{name}"


def drop_pg_database(name: str) -> None:
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def pg_tables(url: str) -> list[str]:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return sorted(r[0] for r in cur.fetchall())
    finally:
        conn.close()


@pytest.fixture
def pg_url():
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    """Every service test runs on the embedded SQLite default and on the real PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'dlnn.db'}"
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


# ------------------------------------------------------------------------------ processes


def env(**extra: str) -> dict[str, str]:
    """The environment for `dlnn` subprocesses: this checkout first on the path, one torch thread."""
    out = dict(os.environ)
    out["PYTHONPATH"] = str(REPO) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out.update(extra)
    return out


def dlnn(*args: str, cwd: Path, timeout: float = 300, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dlnn_studies.cli.main", *args], cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"dlnn {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def spawn(*args: str, cwd: Path, log: Path | None = None, **extra_env: str) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "dlnn_studies.cli.main", *args], cwd=cwd, env=env(**extra_env),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ fake fit


def fake_fit(epochs_delay: float = 0.0, fail_on: set[int] | None = None, diverge_if=None, oom_if=None):
    """A stand-in for dlnn_core.train.fit with the same contract and a known objective:
    val error = (log10 lr + 3)^2 / 10 + 1 / hidden, decreasing over epochs."""
    import math

    from dlnn_core.train import FitResult

    calls = {"n": 0}

    def fit(config, report=None, out_dir=None, metrics=None):
        calls["n"] += 1
        if fail_on and calls["n"] in fail_on:
            raise RuntimeError(f"boom on call {calls['n']}")
        if oom_if and oom_if(config):
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        lr = config.optimizer.lr or 1e-3
        final = (math.log10(lr) + 3) ** 2 / 10 + 1 / config.model.hidden
        history = []
        for epoch in range(1, config.epochs + 1):
            time.sleep(epochs_delay)
            value = final * (1 + 1.0 / epoch)
            history.append({"epoch": epoch, "val_rel_mse": value})
            if diverge_if and diverge_if(config) and epoch == 2:
                return FitResult("diverged", epoch, "training loss is nan", 1, epoch, {"epochs": float(epoch), "wall_time_s": 0.01},
                                 history, None, 0.01, "cpu (fake)", config.to_dict())
            if report:
                report(epoch, value)
        metrics = {"val_rel_mse": final, "val_rel_mse_median": final / 2, "test_rel_mse": final, "ood_rel_mse": 2 * final,
                   "rollout_error": final, "energy_error": final, "test_rollout_error": final, "test_energy_error": final,
                   "wall_time_s": 0.01, "epochs": float(config.epochs)}
        return FitResult("ok", None, None, config.epochs, config.epochs, metrics, history, None, 0.01, "cpu (fake)", config.to_dict())

    fit.calls = calls
    return fit
