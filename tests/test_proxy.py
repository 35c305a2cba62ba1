"""The gRPC storage proxy: `grpc://host:port` URLs, a real proxy process on PostgreSQL, and its heartbeat."""

import importlib.util
import signal
import subprocess
import sys
import time
import tomllib

import optuna
import pytest
from service_support import REPO, create_pg_database, drop_pg_database, free_port, tiny_spec

from dlnn_studies.ops import proxy
from dlnn_studies.spec.schema import parse_spec
from dlnn_studies.store import proxy_client, urls
from dlnn_studies.store.urls import normalize_url
from dlnn_studies.study.launch import launch
from dlnn_studies.study.status import status


def test_parse_proxy_url():
    assert urls.parse_proxy_url("grpc://dlnn-proxy:13001") == urls.ProxyAddress("dlnn-proxy", 13001)
    assert urls.parse_proxy_url("grpc://proxy") == urls.ProxyAddress("proxy", 13000)
    assert urls.parse_proxy_url("grpc://[::1]:9") .url == "grpc://[::1]:9"
    assert urls.is_grpc("GRPC://x:1") and not urls.is_grpc("postgresql://u@h/db")
    for bad, msg in [("grpc://:13000", "no host"), ("grpc://h:99999", "bad port"), ("grpc://h:x", "bad port"),
                     ("grpc://u:pw@h:1", "only grpc://host:port"), ("grpc://h:1/db", "only grpc://host:port"),
                     ("postgresql://h/db", "not a gRPC proxy")]:
        with pytest.raises(ValueError, match=msg):
            urls.parse_proxy_url(bad)
    with pytest.raises(ValueError, match="needs the database URL"):
        proxy.backend_storage("grpc://h:1")


needs_grpc = pytest.mark.skipif(importlib.util.find_spec("grpc") is None, reason="the gRPC proxy needs grpcio")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def served():
    """A fresh database with one study, served by `dlnn proxy`; yields (db url, proxy url, name)."""
    name, plain_url = create_pg_database()
    db_url = normalize_url(plain_url)
    optuna.create_study(study_name="s", storage=db_url)  # the launcher's job, directly on PostgreSQL
    port = free_port()
    # The proxy gets the URL as a user writes it (postgresql://, no driver), as every other command does.
    proc = subprocess.Popen([sys.executable, "-m", "dlnn_studies.cli.main", "proxy", "--storage", plain_url, "--host", "127.0.0.1",
                             "--port", str(port), "--threads", "4"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        yield db_url, f"grpc://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        drop_pg_database(name)


@needs_grpc
def test_workers_optimize_through_the_proxy_and_it_stops_on_sigterm(served):
    db_url, url, proc = served
    storage = proxy_client.connect(url, timeout=30)
    study = optuna.load_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=4)
    storage.close()
    direct = optuna.load_study(study_name="s", storage=db_url)
    assert [t.state for t in direct.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "gRPC storage proxy stopped" in proc.stderr.read()


@needs_grpc
def test_status_reads_a_launched_study_through_the_proxy(served):
    db_url, url, _ = served
    launch(parse_spec(tomllib.loads(tiny_spec(name="via_proxy", trials=3))), db_url, log=lambda m: None)
    s = status(url, "via_proxy")
    assert s["study"] == "via_proxy" and s["budget"] == {"trials": 3, "used": 0, "timeout_s": None}
    assert s["best"] is None and s["running"] == [] and s["failures"] == []


@needs_grpc
def test_report_reads_a_study_through_the_proxy(served, tmp_path):
    from service_support import fake_fit

    from dlnn_studies.study.report import report
    from dlnn_studies.study.worker import run_worker

    db_url, url, _ = served
    launch(parse_spec(tomllib.loads(tiny_spec(name="answered", trials=4))), db_url, log=lambda m: None)
    run_worker(db_url, "answered", fit_fn=fake_fit(), install_signals=False, artifacts=None, log=lambda m: None, timeout=120)
    written = report(url, "answered", tmp_path / "r")  # read and note saved through grpc://
    assert "4 trials: 4 complete" in written.markdown.read_text() and written.note_saved
    from optuna_dashboard import get_note

    note = get_note(optuna.load_study(study_name="answered", storage=db_url))
    assert note.startswith("# Study answered: what it answers")


@needs_grpc
def test_a_dead_workers_trial_is_failed_and_retried_and_a_live_one_is_not(served):
    _, url, _ = served
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
    storage = proxy_client.connect(url, heartbeat_interval=1, grace_period=2, heartbeat_stale_trial_callback=retry)
    study = optuna.load_study(study_name="s", storage=storage)

    # A trial whose worker died: its last heartbeat is older than the grace period.
    dead = study.ask({"x": optuna.distributions.FloatDistribution(-1, 1)})
    storage.set_trial_system_attr(dead._trial_id, proxy_client.HEARTBEAT_KEY, [dead._trial_id, time.time() - 60])

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
        proxy_client.connect(f"grpc://127.0.0.1:{free_port()}", timeout=1)


@needs_grpc
def test_the_proxy_keeps_a_studys_budget_across_its_workers(served):
    """Workers behind the proxy take no database lock of their own: the proxy creates each new trial of a
    dlnn study under the study lock and refuses one past the budget, however many workers race for the
    last slots (here 8 threads, 3 creations each, for a budget of 5); queued trials are still created,
    and a worker's ask reads the refusal as BudgetReached."""
    import threading

    from optuna.trial import TrialState

    from dlnn_studies.study.service import BudgetReached, ServiceStudy

    db_url, url, _ = served
    launch(parse_spec(tomllib.loads(tiny_spec(name="budgeted", trials=5))), db_url, log=lambda m: None)
    storage = proxy_client.connect(url, timeout=30)
    study_id = storage.get_study_id_from_name("budgeted")
    created, refused, other = [], [], []
    start = threading.Barrier(8)

    def worker():
        start.wait()
        for _ in range(3):
            try:
                created.append(storage.create_new_trial(study_id))
            except Exception as exc:  # noqa: BLE001 (sorted below)
                (refused if proxy_client.budget_refusal(exc) else other).append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other == [] and len(created) == 5 and len(refused) == 19
    assert proxy_client.budget_refusal(refused[0]) == "the study's budget of 5 trials is used"
    assert proxy_client.budget_refusal(KeyError("x")) is None
    queued = optuna.trial.create_trial(state=TrialState.WAITING)
    assert storage.create_new_trial(study_id, queued) > max(created)  # a queued trial takes no new slot

    # A worker whose own count still sees room (as one does a moment before its peers' trials land).
    study = ServiceStudy("budgeted", storage, optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(), budget=100,
                         timeout_s=None)
    assert study.ask().number == 5  # the queued trial
    with pytest.raises(BudgetReached, match="budget of 5 trials is used"):
        study.ask()
    storage.close()
    assert len(optuna.load_study(study_name="budgeted", storage=db_url).trials) == 6
