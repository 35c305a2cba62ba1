"""The study service on the real PostgreSQL (a fresh database per test) and on the SQLite default:
launch, the shared budget, diverged/failed trials, status, export, refine, launch --from.
Workers run in this process with a fast stand-in for `fit` here; test_workers.py runs real
worker processes with the real `fit`."""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from service_support import fake_fit, pg_url, storage_url, tiny_spec, write_spec  # noqa: F401 (fixtures)

from dlnn_studies.cli import main as cli
from dlnn_studies.study import records
from dlnn_studies.errors import UsageError
from dlnn_studies.study.export import export
from dlnn_studies.study.refine import refine
from dlnn_core.optim import OPTIMIZERS
from dlnn_studies.study.launch import launch
from dlnn_studies.study.status import status
from dlnn_studies.spec.space import lr_from_position
from dlnn_studies.spec.schema import load_spec
from dlnn_studies.store.urls import normalize_url
from dlnn_studies.study.worker import run_worker


def _work(url, name, tmp_path, fit, **kw):
    logs: list[str] = []
    kw.setdefault("timeout", 180)  # a hung worker fails the test instead of the suite
    code = run_worker(url, name, fit_fn=fit, install_signals=False, artifacts=tmp_path / "artifacts", log=logs.append, **kw)
    assert code == 0
    return logs


def _launch(url, tmp_path, text, **kw):
    return launch(load_spec(write_spec(tmp_path, text)), url, log=lambda m: None, **kw)


def study_of(url, name):
    return optuna.load_study(study_name=name, storage=normalize_url(url))


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=normalize_url(url)).get_trials(deepcopy=False)


def test_launch_is_idempotent_and_refuses_a_changed_spec(storage_url, tmp_path, capsys):
    extra = '[[baseline]]\nname = "adam"\nparams = { "optimizer.name" = "adam", "optimizer.lr" = 1e-3 }\n'
    path = write_spec(tmp_path, tiny_spec(trials=4, extra=extra))
    assert cli.main(["launch", str(path), "--storage", storage_url]) == 0
    out = capsys.readouterr().out
    assert "launched study 'tiny'" in out and "dlnn work tiny" in out and "dlnn dashboard" in out
    assert cli.main(["launch", str(path), "--storage", storage_url]) == 0
    assert "already launched with this spec; nothing changed" in capsys.readouterr().out
    trials = _trials(storage_url, "tiny")
    assert [t.state for t in trials] == [TrialState.WAITING]  # the baseline, enqueued once
    fixed = trials[0].system_attrs["fixed_params"]
    assert fixed.keys() == {"optimizer.name", "optimizer.lr_position"} and fixed["optimizer.name"] == "adam"
    assert lr_from_position(fixed["optimizer.lr_position"], *OPTIMIZERS["adam"].lr_range) == pytest.approx(1e-3, rel=1e-12)

    path.write_text(tiny_spec(trials=5, extra=extra))
    assert cli.main(["launch", str(path), "--storage", storage_url]) == 1
    err = capsys.readouterr().err
    assert "already exists with a different spec (changed: budget.trials)" in err and "--from tiny" in err
    assert cli.main(["launch", str(path), "--storage", storage_url, "--update"]) == 0
    spec = load_spec(path)
    assert status(storage_url, "tiny")["budget"]["trials"] == 5 == spec.trials
    assert len(_trials(storage_url, "tiny")) == 1


def test_budget_is_exact_and_trials_record_everything(storage_url, tmp_path):
    _launch(storage_url, tmp_path, tiny_spec(trials=7, pruner='name = "median"\nn_startup_trials = 2\nn_min_trials = 1'))
    fit = fake_fit()
    logs = _work(storage_url, "tiny", tmp_path, fit, n_trials=3)  # this worker's own limit
    assert len(_trials(storage_url, "tiny")) == 3 and "own limit" in logs[-1]
    _work(storage_url, "tiny", tmp_path, fit, jobs=2)  # two threads share the study budget
    trials = _trials(storage_url, "tiny")
    assert sorted(t.number for t in trials) == list(range(7))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done
    t = done[0]
    assert set(t.user_attrs) >= {"val_rel_mse", "wall_time_s", "device", "worker", "lr_rel"} and "reason" not in t.user_attrs
    assert not any(isinstance(v, dict) for v in t.user_attrs.values())  # one short, sortable cell each in the dashboard
    assert records.trial_config(t)["optimizer"]["name"] == t.params["optimizer.name"]
    assert records.trial_metrics(t)["wall_time_s"] > 0 and t.user_attrs["wall_time_s"] > 0
    assert records.trial_worker(t)["host"] and records.trial_worker(t)["versions"]["torch"]
    assert t.value == pytest.approx(math.log10(t.user_attrs["val_rel_mse"]))  # error objectives are stored as log10
    assert study_of(storage_url, "tiny").metric_names == ["log10(val_rel_mse)"]
    assert t.constraints == {}  # feasible: no constraint written
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    for t in pruned:
        assert t.user_attrs["reason"].startswith("pruned at epoch")
    # A later worker finds the budget used and leaves at once.
    logs = _work(storage_url, "tiny", tmp_path, fit)
    assert "budget of 7 trials is used" in logs[-1] and len(_trials(storage_url, "tiny")) == 7


def test_a_slow_ask_is_logged_with_its_wait_for_the_study_lock(storage_url, tmp_path, monkeypatch):
    """An ask that waits for the study lock (here held by another thread, as another worker's ask
    would) says so in the worker's log; asks that take no time say nothing."""
    from dlnn_studies.store.optuna_private import study_id
    from dlnn_studies.store.storage import close_storage, open_storage, study_lock
    from dlnn_studies.study import service

    _launch(storage_url, tmp_path, tiny_spec(trials=2))
    assert not [m for m in _work(storage_url, "tiny", tmp_path, fake_fit(), n_trials=1) if "asking for a trial" in m]
    monkeypatch.setattr(service, "SLOW_ASK_S", 0.3)
    storage = open_storage(storage_url)
    held, release = threading.Event(), threading.Event()

    def hold():
        with study_lock(storage, study_id(optuna.load_study(study_name="tiny", storage=storage))):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    logs: list[str] = []

    def log(message: str) -> None:  # the lock is let go 1 s after the worker starts its loop, however slow its start was
        logs.append(message)
        if message.startswith("working on study"):
            threading.Timer(1.0, release.set).start()

    try:
        assert held.wait(10)
        assert run_worker(storage_url, "tiny", fit_fn=fake_fit(), install_signals=False, artifacts=tmp_path / "artifacts", log=log,
                          n_trials=1, timeout=180) == 0
    finally:
        release.set()
        holder.join(10)
        close_storage(storage)
    slow = [m for m in logs if "asking for a trial took" in m]
    assert len(slow) == 1, logs
    took, waited = (float(x) for x in re.findall(r"([0-9.]+) s", slow[0])[:2])
    assert took >= 0.5 and 0.4 <= waited <= took, slow[0]  # 1 s less the worker's own steps before its first ask


def test_diverged_oom_and_broken_trials(storage_url, tmp_path):
    space = """
[space.optimizer]
choices = ["adam", "sgd", "rmsprop"]
[space.optimizer.lr]
per_optimizer = true
"""
    _launch(storage_url, tmp_path, tiny_spec(trials=12, epochs=3, space=space, sampler='name = "random"'))
    fit = fake_fit(fail_on={2}, diverge_if=lambda c: c.optimizer.name == "sgd", oom_if=lambda c: c.optimizer.name == "rmsprop")
    logs = _work(storage_url, "tiny", tmp_path, fit, seed=3)
    trials = _trials(storage_url, "tiny")
    assert len(trials) == 12  # the failing trial did not stop the worker
    by_opt = {}
    for t in trials:
        by_opt.setdefault(t.params["optimizer.name"], []).append(t)
    assert set(by_opt) == {"adam", "sgd", "rmsprop"}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"] == "RuntimeError: boom on call 2"
    for t in by_opt["sgd"]:
        if t.state != TrialState.FAIL:
            assert t.state == TrialState.PRUNED and t.constraints["diverged"] == 1.0
            assert t.system_attrs["constraints"] == [1.0]  # the form optuna-dashboard draws as infeasible
            assert t.user_attrs["status"] == "diverged" and t.user_attrs["reason"] == "diverged at epoch 2: training loss is nan"
            assert list(t.intermediate_values) == [1]  # it keeps its learning curve up to the divergence
    for t in by_opt["rmsprop"]:
        if t.state != TrialState.FAIL:
            assert t.state == TrialState.PRUNED and t.constraints["diverged"] == 1.0
            assert t.user_attrs["reason"].startswith("out of memory at epoch 1: CUDA out of memory")
    s = status(storage_url, "tiny")
    reasons = [f["reason"] for f in s["failures"]]
    assert any(r.startswith("diverged at epoch 2") for r in reasons) and "RuntimeError: boom on call 2" in reasons
    assert s["best"]["config"]["optimizer"]["name"] == "adam"  # infeasible trials are never the best
    assert any("failed" in line or "fail" in line for line in logs)


def test_tpe_learns_to_avoid_diverging_regions(storage_url, tmp_path):
    """Diverged trials are infeasible (PRUNED + constraint), so after its startup trials TPE
    suggests the diverging optimizer far less often than chance (12 of 24)."""
    space = '[space.optimizer]\nchoices = ["adam", "sgd"]\n[space.optimizer.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n'
    _launch(storage_url, tmp_path, tiny_spec(trials=30, epochs=2, space=space, sampler='name = "tpe"\nn_startup_trials = 6'))
    _work(storage_url, "tiny", tmp_path, fake_fit(diverge_if=lambda c: c.optimizer.name == "sgd"), seed=0)
    later = [t.params["optimizer.name"] for t in _trials(storage_url, "tiny")[6:]]
    assert later.count("sgd") <= 8, later


def test_status_and_export_agree_with_the_storage(storage_url, tmp_path, capsys):
    _launch(storage_url, tmp_path, tiny_spec(trials=5))
    _work(storage_url, "tiny", tmp_path, fake_fit())
    study = optuna.load_study(study_name="tiny", storage=normalize_url(storage_url))
    assert cli.main(["status", "tiny", "--json", "--storage", storage_url]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["states"]["COMPLETE"] == 5 and s["budget"] == {"trials": 5, "used": 5, "timeout_s": None}
    assert s["best"]["trial"] == study.best_trial.number
    assert s["best"]["values"]["val_rel_mse"] == pytest.approx(10 ** study.best_value) == study.best_trial.user_attrs["val_rel_mse"]
    assert cli.main(["status", "tiny", "--storage", storage_url]) == 0
    text = capsys.readouterr().out
    assert f"best: trial {study.best_trial.number}" in text and "budget: 5/5 trials used" in text

    result = export(storage_url, "tiny", top=3, out=tmp_path / "exports", fmt="json")
    ranked = sorted(study.trials, key=lambda t: t.value)
    assert [e.trial for e in result.items] == [t.number for t in ranked[:3]]
    first = result.items[0]
    config = json.loads(first.config_path.read_text())
    assert config == {**records.trial_config(study.best_trial), "device": "auto"}
    meta = json.loads(first.meta_path.read_text())
    assert meta["study"] == "tiny" and meta["trial"] == study.best_trial.number
    assert meta["objective"]["val_rel_mse"]["value"] == pytest.approx(10 ** study.best_value)
    assert "storage" not in json.dumps(meta["provenance"]) and meta["provenance"]["spec_digest"]
    assert (result.folder / "summary.md").read_text().count("| ") > 3 and (result.folder / "summary.csv").exists()
    yaml_result = export(storage_url, "tiny", top=1, out=tmp_path / "y", fmt="yaml")
    from dlnn_core.config import load_config

    assert load_config(yaml_result.items[0].config_path).to_dict() == config  # `dlnn train` reads it
    per = export(storage_url, "tiny", top=1, out=tmp_path / "per", per="optimizer.name")
    names = [yaml.safe_load(e.config_path.read_text())["optimizer"]["name"] for e in per.items]
    assert len(names) == len(set(names)) >= 1


def test_the_pruner_never_cuts_a_trial_at_its_final_epoch(tmp_path):
    """A median pruner that judges from the first epoch on (a trial's best value so far against its peers'
    median at that epoch): trials 1 and 2 fall behind trial 0 only at their last epoch, where the pruner
    would cut them, and complete with all 3 epochs reported; trial 3 is behind at epoch 1 and is pruned there."""
    from dlnn_core.train import FitResult

    curves = {1: [10.0, 10.0, 1.0], 2: [10.0, 10.0, 2.0], 3: [10.0, 10.0, 3.0], 4: [20.0, 20.0, 20.0]}  # by call
    calls = []

    def fit(config, report=None, out_dir=None, metrics=None):
        calls.append(None)
        curve = curves[len(calls)]
        for epoch, value in enumerate(curve, start=1):
            report(epoch, value)
        result = {m: curve[-1] for m in ("val_rel_mse", "val_rel_mse_median", "test_rel_mse", "ood_rel_mse", "rollout_error",
                                          "energy_error", "test_rollout_error", "test_energy_error")}
        return FitResult("ok", None, None, 3, 3, {**result, "wall_time_s": 0.01, "epochs": 3.0}, [], None, 0.01, "cpu (fake)",
                         config.to_dict())

    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    pruner = 'name = "median"\nn_startup_trials = 1\nn_warmup_steps = 0\nn_min_trials = 1'
    _launch(url, tmp_path, tiny_spec(trials=4, epochs=3, pruner=pruner, sampler='name = "random"'))
    _work(url, "tiny", tmp_path, fit)
    trials = _trials(url, "tiny")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert [sorted(t.intermediate_values) for t in trials] == [[1, 2, 3]] * 3 + [[1]]
    assert [10 ** t.value for t in trials[:3]] == pytest.approx([1.0, 2.0, 3.0])
    assert trials[3].user_attrs["reason"].startswith("pruned at epoch 1")


def test_the_exported_retrain_line_runs_from_where_export_ran(tmp_path, monkeypatch):
    """Each config's header names `dlnn train PATH` with PATH as export wrote it: from the directory
    `dlnn export` ran in (here the repository root stand-in), PATH is that config file, and `dlnn train`'s
    own loader reads it; the terminal's retrain line is the same command."""
    import shlex

    from dlnn_studies.cli.train import load_train_config

    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    _launch(url, tmp_path, tiny_spec(trials=2))
    _work(url, "tiny", tmp_path, fake_fit())
    monkeypatch.chdir(tmp_path)
    result = export(url, "tiny", top=2, out="exports")
    for item in result.items:
        line = next(x for x in item.config_path.read_text().splitlines() if x.startswith("# retrain"))
        command = shlex.split(line.split(": ", 1)[1])
        assert command[:2] == ["dlnn", "train"] and command[2:] == [f"exports/tiny/{item.config_path.name}"], line
        assert Path(command[2]).resolve() == (tmp_path / "exports" / "tiny" / item.config_path.name).resolve()
        assert load_train_config(command[2]).to_dict() == yaml.safe_load(item.config_path.read_text())
        assert result.retrain(item) == shlex.join(command)


def test_refine_grids_around_the_best_and_is_seeded(storage_url, tmp_path):
    space = "[space.optimizer.lr]\nlow = 1e-5\nhigh = 1e-1\nlog = true\n[space.model.hidden]\nlow = 16\nhigh = 64\nstep = 16\n"
    _launch(storage_url, tmp_path, tiny_spec(trials=10, space=space, sampler='name = "random"'))
    _work(storage_url, "tiny", tmp_path, fake_fit(), seed=1)
    old_best = optuna.load_study(study_name="tiny", storage=normalize_url(storage_url)).best_trial
    spec, launched = refine(storage_url, "tiny", around=3, points=2, log=lambda m: None)
    assert spec.name == "tiny-refine" and spec.sampler == "grid" and launched.created
    grid = {p.key: p.grid_values() for p in spec.space}
    assert set(grid) == {"optimizer.lr", "model.hidden"}
    assert old_best.params["optimizer.lr"] in grid["optimizer.lr"]
    seeds = _trials(storage_url, "tiny-refine")
    assert len(seeds) == 3 and all(t.state == TrialState.COMPLETE and t.user_attrs["seeded_from"].startswith("tiny#") for t in seeds)
    _work(storage_url, "tiny-refine", tmp_path, fake_fit(), seed=2)
    new = [t for t in _trials(storage_url, "tiny-refine") if "seeded_from" not in t.user_attrs]
    size = len(grid["optimizer.lr"]) * len(grid["model.hidden"])
    assert len(new) == size == spec.trials - 3
    assert {(t.params["optimizer.lr"], t.params["model.hidden"]) for t in new} == {
        (lr, h) for lr in grid["optimizer.lr"] for h in grid["model.hidden"]}
    refined = optuna.load_study(study_name="tiny-refine", storage=normalize_url(storage_url))
    assert refined.best_value <= old_best.value


def test_refine_is_seeded_only_with_trials_that_share_the_best_choices(storage_url, tmp_path):
    space = ('[space.optimizer]\nchoices = ["adam", "rmsprop"]\n[space.optimizer.lr]\nper_optimizer = true\n'
             "[space.model.hidden]\nlow = 16\nhigh = 64\nstep = 16\n")
    _launch(storage_url, tmp_path, tiny_spec(trials=12, space=space, sampler='name = "random"'))
    _work(storage_url, "tiny", tmp_path, fake_fit(), seed=4)
    old = study_of(storage_url, "tiny")
    top = sorted((t for t in old.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)[:6]
    assert len({t.params["optimizer.name"] for t in top}) == 2  # the top trials mix optimizers
    spec, _ = refine(storage_url, "tiny", around=6, points=2, log=lambda m: None)
    best_opt = top[0].params["optimizer.name"]
    assert spec.base.optimizer.name == best_opt and "optimizer.name" not in [p.key for p in spec.space]
    seeds = _trials(storage_url, "tiny-refine")
    assert seeds and {records.trial_flat(t)["optimizer.name"] for t in seeds} == {best_opt}
    assert len(seeds) == sum(t.params["optimizer.name"] == best_opt for t in top)
    assert spec.pruner == "none"  # near-equal grid points are not pruned


def test_launch_from_an_old_study_enqueues_its_best_configs(storage_url, tmp_path):
    _launch(storage_url, tmp_path, tiny_spec(trials=6))
    _work(storage_url, "tiny", tmp_path, fake_fit())
    old = optuna.load_study(study_name="tiny", storage=normalize_url(storage_url))
    with pytest.raises(UsageError, match="needs its own name"):
        _launch(storage_url, tmp_path, tiny_spec(trials=6, epochs=3), from_study="tiny")
    _launch(storage_url, tmp_path, tiny_spec(name="tiny-v2", trials=6, epochs=3), from_study="tiny", top=2)
    waiting = _trials(storage_url, "tiny-v2")
    best = sorted(old.trials, key=lambda t: t.value)[:2]
    assert [t.state for t in waiting] == [TrialState.WAITING] * 2
    for t, b in zip(waiting, best):
        fixed = t.system_attrs["fixed_params"]
        assert fixed.keys() == b.params.keys() and fixed["optimizer.name"] == b.params["optimizer.name"]
        assert fixed["optimizer.lr_position"] == pytest.approx(b.params["optimizer.lr_position"], rel=1e-12)
    assert [t.user_attrs["seeded_from"] for t in waiting] == [f"tiny#{t.number}" for t in best]


def test_launch_from_enqueues_each_config_once(storage_url, tmp_path):
    """The old study's baseline and its rerun share one config: the new study runs it once."""
    extra = '[[baseline]]\nname = "adam"\nparams = { "optimizer.name" = "adam", "optimizer.lr" = 1e-3, "model.hidden" = 16 }\n'
    _launch(storage_url, tmp_path, tiny_spec(trials=4, extra=extra, sampler='name = "random"'))
    old = study_of(storage_url, "tiny")
    old.enqueue_trial(old.trials[0].system_attrs["fixed_params"], user_attrs={"baseline": "again"})
    _work(storage_url, "tiny", tmp_path, fake_fit())
    configs = [records.trial_flat(t)["optimizer.lr"] for t in _trials(storage_url, "tiny")[:2]]
    assert configs[0] == pytest.approx(configs[1])
    _launch(storage_url, tmp_path, tiny_spec(name="tiny-v2", trials=6), from_study="tiny", top=4)
    enqueued = [t.system_attrs["fixed_params"] for t in _trials(storage_url, "tiny-v2")]
    assert len(enqueued) == len({json.dumps(p, sort_keys=True) for p in enqueued}) == 3


def test_unknown_study_and_storage_errors(storage_url, tmp_path, capsys):
    _launch(storage_url, tmp_path, tiny_spec(trials=2))
    assert cli.main(["work", "nope", "--storage", storage_url]) == 1
    err = capsys.readouterr().err
    assert "no study named 'nope'; studies here: tiny" in err and "Traceback" not in err
    assert cli.main(["status", "--storage", "postgresql://postgres@127.0.0.1:1/none"]) == 1
    assert "cannot open storage postgresql://postgres@127.0.0.1:1/none" in capsys.readouterr().err
    assert cli.main(["export", "tiny", "--storage", storage_url]) == 1
    assert "no completed feasible trial" in capsys.readouterr().err


def test_worker_survives_dropped_connections(pg_url, tmp_path):
    """PostgreSQL closes every connection of the database mid-study (as in a restart): the
    pre-pinged pool reconnects and the worker still finishes the budget."""
    import psycopg2

    _launch(pg_url, tmp_path, tiny_spec(trials=8, epochs=4, grace=30))  # no trial of this one worker may look stale, however loaded the machine
    db = pg_url.rsplit("/", 1)[1]
    stop = threading.Event()

    def terminator():
        probe = psycopg2.connect(pg_url)  # mid-study: the kills start once the worker has created its first trial
        probe.autocommit = True
        while not stop.wait(0.05):
            with probe.cursor() as cur:
                cur.execute("SELECT count(*) FROM trials")
                if cur.fetchone()[0] > 0:
                    break
        probe.close()
        admin = psycopg2.connect(pg_url.rsplit("/", 1)[0] + "/postgres")
        admin.autocommit = True
        kills = 0
        while not stop.wait(0.3):
            with admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
                kills += sum(1 for (ok,) in cur.fetchall() if ok)
        admin.close()
        terminator.kills = kills

    thread = threading.Thread(target=terminator)
    thread.start()
    try:
        _work(pg_url, "tiny", tmp_path, fake_fit(epochs_delay=0.1))
    finally:
        stop.set()
        thread.join()
    assert terminator.kills >= 2
    trials = _trials(pg_url, "tiny")
    counted = [t for t in trials if "retry_history" not in t.system_attrs]
    assert len(counted) == 8 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    not_complete = [(t.number, t.state.name, t.user_attrs.get("reason"), t.system_attrs.get("failed_trial")) for t in trials
                    if t.state != TrialState.COMPLETE]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 8, not_complete  # cut trials were re-queued, none lost


def test_timeout_budget_is_shared(storage_url, tmp_path):
    _launch(storage_url, tmp_path, tiny_spec(trials=1000, epochs=2, extra="").replace("trials = 1000", "trials = 1000\ntimeout_s = 1.5"))
    start = time.monotonic()
    logs = _work(storage_url, "tiny", tmp_path, fake_fit(epochs_delay=0.05))
    assert "timeout (1.5 s from its first trial) has passed" in logs[-1]
    assert time.monotonic() - start < 30
    assert 3 <= len(_trials(storage_url, "tiny")) < 100


def test_trial_view_returns_what_optuna_returns(storage_url, tmp_path):
    """The cached view returns what Optuna's own storage returns, and a trial created elsewhere
    once it refreshes."""
    from dlnn_studies.store.storage import open_storage
    from dlnn_studies.store.trial_view import TrialView

    _launch(storage_url, tmp_path, tiny_spec(trials=40, sampler='name = "random"'))
    _work(storage_url, "tiny", tmp_path, fake_fit(), n_trials=30)
    rdb = open_storage(storage_url)
    plain = optuna.load_study(study_name="tiny", storage=rdb)
    view = TrialView(rdb, max_staleness_s=60.0)
    viewed = optuna.load_study(study_name="tiny", storage=view)
    for states in (None, (TrialState.COMPLETE,), (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)):
        assert [t.number for t in viewed.get_trials(deepcopy=False, states=states)] == \
               [t.number for t in plain.get_trials(deepcopy=False, states=states)]
    plain.ask()  # a new trial elsewhere: seen after refresh, not before
    assert len(viewed.get_trials(deepcopy=False)) == 30
    view.refresh(viewed._study_id)
    assert len(viewed.get_trials(deepcopy=False)) == 31


def test_full_evaluation_goes_to_references_and_trials_among_the_best(tmp_path, monkeypatch):
    """With the real fit: a val_rel_mse study rolls out nothing for most trials; the baseline and
    every trial among the FULL_EVALUATION_TOP best when it completed get every metric and a rollout
    plot, and so the study's final best does. Seeded sampler and training, so the run is the same every time."""
    from dlnn_studies.study import objective

    monkeypatch.setattr(objective, "FULL_EVALUATION_TOP", 1)
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "cache"))
    text = tiny_spec(trials=7, sampler='name = "random"') + '[[baseline]]\nname = "adam"\nparams = {"optimizer.name" = "adam", "optimizer.lr" = 1e-3}\n'
    launch(load_spec(write_spec(tmp_path, text)), url, log=lambda m: None)
    assert run_worker(url, "tiny", fit_fn=None, seed=3, install_signals=False, artifacts=tmp_path / "artifacts", log=lambda m: None) == 0
    study = optuna.load_study(study_name="tiny", storage=url)
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    assert len(done) == 7
    best_so_far, full, partial = math.inf, [], []
    for t in done:
        metrics = records.trial_metrics(t)
        value = metrics["val_rel_mse"]
        expected = "baseline" in t.user_attrs or value < best_so_far
        best_so_far = min(best_so_far, value)
        (full if expected else partial).append(t.number)
        assert (t.user_attrs.get(records.EVALUATION) == "full") == expected, (t.number, t.user_attrs)
        assert ("test_rollout_error" in metrics and "ood_energy_error" in metrics) == expected, t.number
        assert {"val_rel_mse", "test_rel_mse", "ood_rel_mse_median", "dissipation_share", "wall_time_s"} <= metrics.keys()
        files = {m.filename for m in optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)}
        assert files == ({"model.pt", "rollout.png"} if expected else {"model.pt"}), (t.number, files)  # the plot goes with the full set
    assert full and partial, (full, partial)
    assert "test_rollout_error" in records.trial_metrics(min(done, key=lambda t: t.value))


def test_full_evaluation_does_not_roll_the_objectives_split_out_again(tmp_path, monkeypatch):
    """A rollout objective: fit rolls out the test split for it, and the full evaluation of a trial
    among the best rolls out only the val and ood splits (it is asked for no metric of a pass fit
    already ran); the trial still carries every split's rollout metrics, the test ones fit's own."""
    from dlnn_core.evaluate import rollout_splits
    from dlnn_core.train import evaluate_checkpoint

    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "cache"))
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=2, sampler='name = "random"') + '[objective]\nmetric = "rollout_error"\n')),
           url, log=lambda m: None)
    asked = []

    def evaluate(checkpoint, device, metrics):
        asked.append(rollout_splits(metrics))
        return evaluate_checkpoint(checkpoint, device, metrics=metrics)

    assert run_worker(url, "tiny", fit_fn=None, evaluate_fn=evaluate, seed=1, install_signals=False, artifacts=None,
                      log=lambda m: None) == 0
    done = [t for t in optuna.load_study(study_name="tiny", storage=url).trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and asked == [("val", "ood"), ("val", "ood")]  # both among the 5 best: both fully evaluated, not test
    for t in done:
        metrics = records.trial_metrics(t)
        assert t.user_attrs[records.EVALUATION] == "full"
        assert {"val_valid_steps", "val_rollout_error", "ood_rollout_error", "ood_energy_error", "ood_valid_steps", "test_energy_error",
                "test_valid_steps"} <= metrics.keys()
        assert t.value == records.to_stored("rollout_error", metrics["rollout_error"])  # the objective is the kept test value


def test_trial_view_sees_its_own_writes_and_no_deleted_study(tmp_path):
    """The view's staleness bound is for other processes' writes: a trial this process ends is in its
    next read, and a study created under a deleted study's id (SQLite reuses it) starts empty."""
    from dlnn_studies.store.storage import open_storage
    from dlnn_studies.store.trial_view import TrialView

    rdb = open_storage(f"sqlite:///{tmp_path / 'view.db'}", create_schema=True)
    view = TrialView(rdb, max_staleness_s=60.0)
    study_id = view.create_new_study([optuna.study.StudyDirection.MINIMIZE], "first")
    trial_id = view.create_new_trial(study_id)
    assert [t.state for t in view.get_all_trials(study_id)] == [TrialState.RUNNING]
    view.set_trial_state_values(trial_id, TrialState.COMPLETE, [1.0])
    assert [t.number for t in view.get_all_trials(study_id, states=(TrialState.COMPLETE,))] == [0]
    view.delete_study(study_id)
    again = view.create_new_study([optuna.study.StudyDirection.MINIMIZE], "second")
    assert view.get_all_trials(again) == [] and view.get_all_trials(again, states=(TrialState.COMPLETE,)) == []


def test_a_failing_full_evaluation_leaves_the_trial_complete(tmp_path, monkeypatch):
    """The objectives are known when the full evaluation runs: if it fails, the trial completes
    with fit's metrics and says why it has no more."""
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "cache"))
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=2, sampler='name = "random"'))), url, log=lambda m: None)

    def broken(checkpoint, device, metrics):
        raise RuntimeError("no rollouts today")

    assert run_worker(url, "tiny", fit_fn=None, evaluate_fn=broken, seed=1, install_signals=False, artifacts=None,
                      log=lambda m: None) == 0
    done = [t for t in optuna.load_study(study_name="tiny", storage=url).trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    assert all(t.user_attrs[records.EVALUATION].startswith("objectives only: the full evaluation failed (RuntimeError: no rollouts today)")
               for t in done)
    assert all("val_rel_mse" in records.trial_metrics(t) and "test_rollout_error" not in records.trial_metrics(t) for t in done)
