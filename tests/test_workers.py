"""Real worker processes with the real `fit` on tiny problems, on PostgreSQL and SQLite: three
workers share one budget exactly; export -> `dlnn train` reproduces the stored metrics; a
SIGKILLed worker's trial is retried after the grace period; SIGTERM stops gracefully; the
dashboard serves the study over HTTP; `dlnn run` does everything in one command."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from service_support import (dlnn, fake_fit, free_port, pg_url, spawn, storage_url, tiny_spec, wait_until,  # noqa: F401
                             write_spec)

from dlnn_studies.study import records
from dlnn_studies.study.launch import launch
from dlnn_studies.spec.schema import load_spec
from dlnn_studies.store.urls import normalize_url
from dlnn_studies.study.worker import run_worker


def _prepare(tmp_path: Path, url: str, text: str) -> str:
    """Launch the spec and generate its dataset once, so the worker processes share the cache."""
    from dlnn_core.data import load_data

    spec = load_spec(write_spec(tmp_path, text))
    launch(spec, url, log=lambda m: None)
    load_data(spec.base.data, spec.base.data_seed)
    return spec.name


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=normalize_url(url))


def _wait_all(procs, timeout: float) -> list[int]:
    end = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(max(1.0, end - time.monotonic())))
        except Exception:
            for q in procs:
                q.kill()
            raise
    return codes


@pytest.mark.slow
def test_three_workers_share_the_budget_and_export_retrains(storage_url, tmp_path):
    name = _prepare(tmp_path, storage_url, tiny_spec(trials=7, epochs=3, pruner='name = "median"\nn_startup_trials = 3\nn_min_trials = 2'))
    art = tmp_path / "artifacts"
    procs = [spawn("work", name, "--storage", storage_url, "--threads", "1", "--artifacts", str(art), cwd=tmp_path,
                   log=tmp_path / f"worker{i}.log") for i in range(3)]
    codes = _wait_all(procs, 240)
    logs = "\n".join((tmp_path / f"worker{i}.log").read_text() for i in range(3))
    assert codes == [0, 0, 0], logs
    study = _study(storage_url, name)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(7)), logs  # exactly the budget, no duplicates
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    workers = [records.trial_worker(t) for t in trials]
    assert len({w["id"] for w in workers}) >= 2  # the work was shared
    assert len({w["sampler_seed"] for w in workers}) == len({w["id"] for w in workers})
    assert logs.count("budget of 7 trials is used") == 3

    # status and export agree with the storage
    s = json.loads(dlnn("status", name, "--json", "--storage", storage_url, cwd=tmp_path).stdout)
    assert s["states"]["COMPLETE"] == sum(t.state == TrialState.COMPLETE for t in trials)
    assert s["states"]["PRUNED"] == sum(t.state == TrialState.PRUNED for t in trials)
    assert s["best"]["trial"] == study.best_trial.number
    out = dlnn("export", name, "--top", "2", "--out", str(tmp_path / "exports"), "--storage", storage_url, cwd=tmp_path).stdout
    assert "rank" in out and f"retrain the best: dlnn train" in out
    best_file = next(p for p in (tmp_path / "exports" / name).glob("rank01-*.yaml") if not p.name.endswith(".meta.yaml"))
    assert best_file.name == f"rank01-trial{study.best_trial.number:04d}.yaml"

    # the best trial left its checkpoint and rollout plot in the artifact store
    metas = optuna.artifacts.get_all_artifact_meta(study.best_trial, storage=study._storage)
    assert {m.filename for m in metas} == {"model.pt", "rollout.png"}
    assert all((art / m.artifact_id).stat().st_size > 0 for m in metas)

    # retraining the exported config reproduces the stored metrics
    dlnn("train", str(best_file), "--out", str(tmp_path / "retrain"), "--no-progress", cwd=tmp_path)
    retrained = json.loads((tmp_path / "retrain" / "metrics.json").read_text())["metrics"]
    stored = records.trial_metrics(study.best_trial)
    for key in ("val_rel_mse", "test_rel_mse", "ood_rel_mse", "rollout_error", "energy_error"):
        assert retrained[key] == pytest.approx(stored[key], rel=1e-6), key
    assert retrained["val_rel_mse"] == pytest.approx(10 ** study.best_value, rel=1e-6)  # the study stores log10


def _running_trial_of(url: str, name: str, pid: int, min_epoch: int = 1):
    """The trial worker `pid` is training, read through a storage closed after the read: polled 20 times
    a second, storages left to the garbage collector would hold the server's connections."""
    storage = None
    try:
        storage = optuna.storages.RDBStorage(normalize_url(url))
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if records.trial_worker(t).get("pid") == pid and len(t.intermediate_values) >= min_epoch:
                return t
    except Exception:  # the study may be busy (SQLite) while workers write
        return None
    finally:
        if storage is not None:
            storage.engine.dispose()
    return None


def _frozen_mid_trial(url: str, name: str, proc, what: str, last_epoch: int = 30):
    """Stop `proc` (SIGSTOP) while it trains a trial that has epochs left (at most `last_epoch`
    reported, so it still reports again and sees a stop signal) and return that trial, which cannot
    end while the process is stopped: a trial seen running could otherwise finish before a signal
    lands, or be past its last report, in its final evaluation."""
    while True:
        wait_until(lambda: _running_trial_of(url, name, proc.pid), 120, 0.05, what)
        os.kill(proc.pid, signal.SIGSTOP)
        victim = wait_until(lambda: _running_trial_of(url, name, proc.pid) or "between trials", 30, 0.05, "a read of the stopped worker's trial")
        if victim != "between trials" and len(victim.intermediate_values) <= last_epoch:
            return victim
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.2)


@pytest.mark.slow
def test_sigkilled_worker_trial_is_retried_and_the_budget_finishes(storage_url, tmp_path):
    name = _prepare(tmp_path, storage_url, tiny_spec(trials=4, epochs=40, heartbeat=1, grace=3))
    a = spawn("work", name, "--storage", storage_url, "--threads", "1", "--no-plots", cwd=tmp_path, log=tmp_path / "a.log")
    victim = _frozen_mid_trial(storage_url, name, a, "worker A mid-trial")
    b = spawn("work", name, "--storage", storage_url, "--threads", "1", "--no-plots", cwd=tmp_path, log=tmp_path / "b.log")
    os.kill(a.pid, signal.SIGKILL)
    assert a.wait(10) == -signal.SIGKILL
    assert b.wait(240) == 0, (tmp_path / "b.log").read_text()
    trials = _study(storage_url, name).get_trials()
    by_number = {t.number: t for t in trials}
    killed = by_number[victim.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params  # retried with the same params
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4  # the full budget, no complete trial lost
    assert len(trials) == 5
    assert "worker lost (heartbeat went stale); retried as trial" in dlnn("status", name, "--storage", storage_url, cwd=tmp_path).stdout


@pytest.mark.slow
def test_sigterm_stops_after_the_epoch_and_requeues(pg_url, tmp_path):
    """Signals do not depend on the storage; run on the production one."""
    storage_url = pg_url
    name = _prepare(tmp_path, storage_url, tiny_spec(trials=3, epochs=40, heartbeat=1, grace=3))
    w = spawn("work", name, "--storage", storage_url, "--threads", "1", "--no-plots", cwd=tmp_path, log=tmp_path / "w.log")
    victim = _frozen_mid_trial(storage_url, name, w, "worker mid-trial")
    os.kill(w.pid, signal.SIGTERM)  # handled once the worker resumes, still inside the victim trial
    os.kill(w.pid, signal.SIGCONT)
    assert w.wait(30) == 0
    log = (tmp_path / "w.log").read_text()
    assert "SIGTERM: stopping at the next epoch" in log and "stopped by SIGTERM" in log
    trials = _study(storage_url, name).get_trials()
    stopped = next(t for t in trials if t.number == victim.number)
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"
    assert stopped.user_attrs["reason"].startswith("stopped by SIGTERM at epoch")
    assert len(stopped.intermediate_values) < 40
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].params == stopped.params
    assert not [t for t in trials if t.state == TrialState.RUNNING]

    # A second signal exits at once; the abandoned trial is retried after the grace period. Both
    # signals must reach the worker mid-trial: sent while it is stopped (two different signals, as
    # one signal pending twice is delivered once), they are handled together when it resumes,
    # SIGINT first. Sent 50 ms apart, the first could already have finished the trial's stop.
    w2 = spawn("work", name, "--storage", storage_url, "--threads", "1", "--no-plots", cwd=tmp_path, log=tmp_path / "w2.log")
    wait_until(lambda: _running_trial_of(storage_url, name, w2.pid), 120, 0.05, "second worker mid-trial")
    os.kill(w2.pid, signal.SIGSTOP)
    os.kill(w2.pid, signal.SIGINT)
    os.kill(w2.pid, signal.SIGTERM)
    os.kill(w2.pid, signal.SIGCONT)
    assert w2.wait(10) == 128 + signal.SIGTERM, (tmp_path / "w2.log").read_text()
    assert "second signal (SIGTERM): exiting now" in (tmp_path / "w2.log").read_text()
    dlnn("work", name, "--storage", storage_url, "--threads", "1", "--no-plots", cwd=tmp_path, timeout=240)
    trials = _study(storage_url, name).get_trials()
    summary = [(t.number, t.state.name, t.user_attrs.get("reason"), t.system_attrs.get("retry_history")) for t in trials]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3, summary
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], summary


def _get(url: str, auth: tuple[str, str] | None = None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def test_dashboard_serves_the_study(storage_url, tmp_path):
    spec = load_spec(write_spec(tmp_path, tiny_spec(trials=3)))
    launch(spec, storage_url, log=lambda m: None)
    run_worker(storage_url, "tiny", fit_fn=fake_fit(), install_signals=False, artifacts=tmp_path / "art", log=lambda m: None)
    port = free_port()
    proc = spawn("dashboard", "--port", str(port), "--storage", storage_url, "--artifacts", str(tmp_path / "art"),
                 cwd=tmp_path, log=tmp_path / "dash.log")
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = wait_until(lambda: _try(lambda: _get(f"{base}/api/studies")), 60, 0.3, "the dashboard")
        studies = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
        status, body = _get(f"{base}/api/studies/{studies[0]['study_id']}")
        detail = json.loads(body)
        assert len(detail["trials"]) == 3 and {t["state"] for t in detail["trials"]} == {"Complete"}
        assert _get(f"{base}/dashboard")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def _try(fn):
    try:
        return fn()
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def test_dashboard_needs_credentials_off_loopback(tmp_path):
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=1))), url, log=lambda m: None)
    env = {k: "" for k in ("DLNN_DASHBOARD_USER", "DLNN_DASHBOARD_PASSWORD")}
    refused = dlnn("dashboard", "--host", "0.0.0.0", "--port", str(free_port()), "--storage", url, cwd=tmp_path, check=False, **env)
    assert refused.returncode == 1 and "refusing to serve the dashboard on 0.0.0.0" in refused.stderr
    assert "DLNN_DASHBOARD_PASSWORD" in refused.stderr and "Traceback" not in refused.stderr
    port = free_port()
    proc = spawn("dashboard", "--host", "0.0.0.0", "--port", str(port), "--storage", url, cwd=tmp_path,
                 log=tmp_path / "dash.log", DLNN_DASHBOARD_USER="alice", DLNN_DASHBOARD_PASSWORD="s3cret")
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        wait_until(lambda: _try(lambda: _get(api, ("alice", "s3cret"))), 60, 0.3, "the dashboard")
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(api)
        assert info.value.code == 401
        with pytest.raises(urllib.error.HTTPError):
            _get(api, ("alice", "wrong"))
        assert json.loads(_get(api, ("alice", "s3cret"))[1])["study_summaries"][0]["study_name"] == "tiny"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@pytest.mark.slow
def test_run_does_everything_on_the_embedded_default(tmp_path):
    """The README's main command: launch + local workers + status + export, default storage."""
    from dlnn_core.data import load_data

    path = write_spec(tmp_path, tiny_spec(name="demo", trials=4, epochs=2))
    spec = load_spec(path)
    load_data(spec.base.data, spec.base.data_seed)
    out = dlnn("run", str(path), "--workers", "2", cwd=tmp_path, timeout=240)
    assert (tmp_path / "dlnn.db").exists()
    text = out.stdout
    assert "launched study 'demo'" in text and "budget: 4/4 trials used" in text
    assert "best configs (exported to exports/demo/)" in text and "dlnn dashboard" in text
    assert len([p for p in (tmp_path / "exports" / "demo").glob("rank*-trial*.yaml") if ".meta." not in p.name]) == 3
    again = dlnn("run", str(path), "--workers", "1", cwd=tmp_path, timeout=240)  # idempotent: nothing left to do
    assert "already launched" in again.stdout and "budget: 4/4 trials used" in again.stdout
