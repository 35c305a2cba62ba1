"""`dlnn work --pack K`: trials that share a structure train as one pack, each recorded as if it had
trained alone (same metrics as `fit`), on SQLite and PostgreSQL; SIGTERM re-queues every trial of a
pack; PackedFit groups calls by structure and hands each thread its own outcome."""

from __future__ import annotations

import os
import signal
import threading

import optuna
import pytest
from optuna.trial import TrialState
from service_support import TINY_SPACE, pg_url, spawn, storage_url, tiny_spec, wait_until, write_spec  # noqa: F401

from dlnn_core.config import TrainConfig
from dlnn_core.train import fit
from dlnn_studies.spec.schema import load_spec
from dlnn_studies.store.urls import normalize_url
from dlnn_studies.study import records
from dlnn_studies.study.launch import launch
from dlnn_studies.study.pack import PackedFit, SharedStructure
from dlnn_studies.study.worker import run_worker

# One structure (hidden fixed by the base), optimizers and learning rates searched: every draw packs.
ONE_STRUCTURE = """
[space.optimizer]
choices = ["adam", "rmsprop", "dadaptadam"]
[space.optimizer.lr]
per_optimizer = true
"""

# One structure and optimizers that do not diverge on the tiny problem at their default lr: a test that
# signals mid-training needs both trials still training then (a drawn D-Adaptation run can blow up first).
STEADY = """
[space.optimizer]
choices = ["adam", "adamw"]
"""


def _launch(tmp_path, url, trials, epochs, space=ONE_STRUCTURE) -> str:
    from dlnn_core.data import load_data

    spec = load_spec(write_spec(tmp_path, tiny_spec(trials=trials, epochs=epochs, space=space)))
    launch(spec, url, log=lambda m: None)
    load_data(spec.base.data, spec.base.data_seed)
    return spec.name


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=normalize_url(url)).get_trials()


@pytest.mark.slow
def test_packed_worker_records_each_trial_as_fit_alone(storage_url, tmp_path):
    """The width is searched too: trials asked together share their first one's (SharedStructure)."""
    import torch

    name = _launch(tmp_path, storage_url, trials=4, epochs=2, space=TINY_SPACE)
    logs: list[str] = []
    assert run_worker(storage_url, name, pack=2, threads=1, install_signals=False, artifacts=tmp_path / "art", log=logs.append,
                      plots=False) == 0
    packed = sum(int(line.split()[1]) for line in logs if line.startswith("training ") and "as one pack" in line)
    joined = sum(int(line.split()[0]) for line in logs if "joined a running pack" in line)
    assert packed + joined == 4, logs  # two packs of two, or one that the second pair joined (their widths drawn alike)
    trials = _trials(storage_url, name)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4, [(t.number, t.state, t.user_attrs.get("reason")) for t in trials]
    torch.set_num_threads(1)
    for t in trials:
        alone = fit(TrainConfig.from_dict(t.system_attrs[records.CONFIG]))
        assert t.user_attrs["val_rel_mse"] == pytest.approx(alone.metrics["val_rel_mse"], rel=1e-4), t.number


@pytest.mark.slow
def test_sigterm_requeues_every_trial_of_the_pack(pg_url, tmp_path):
    name = _launch(tmp_path, pg_url, trials=2, epochs=400, space=STEADY)
    w = spawn("work", name, "--storage", pg_url, "--pack", "2", "--threads", "1", "--no-plots", cwd=tmp_path, log=tmp_path / "w.log",
              DLNN_PACK_GATHER_S="30")  # the two asks meet in one pack however slow this machine is
    def both_mid_training() -> bool:  # one read: both trials running, each past its first epoch
        running = [t for t in _trials(pg_url, name) if t.state == TrialState.RUNNING]
        return len(running) == 2 and all(len(t.intermediate_values) >= 1 for t in running)

    try:
        wait_until(both_mid_training, 180, 0.2, "two packed trials mid-training")
        os.kill(w.pid, signal.SIGTERM)
        assert w.wait(60) == 0, (tmp_path / "w.log").read_text()
    finally:
        if w.poll() is None:
            w.kill()
    log = (tmp_path / "w.log").read_text()
    # One pack of both, or (a second ask later than the gather window) the second joined the first's pack.
    assert "training 2 trials as one pack" in log or "1 trial(s) joined a running pack" in log, log
    trials = _trials(pg_url, name)
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(stopped) == 2 and all(t.user_attrs["status"] == records.INTERRUPTED for t in stopped), log
    assert sorted(str(t.params) for t in queued) == sorted(str(t.params) for t in stopped), [(t.number, t.state, t.params, t.user_attrs.get("reason"), t.system_attrs.get("retry_history")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]


def _config(**flat) -> TrainConfig:
    return TrainConfig().with_flat({"data.system": "damped_oscillator", "model.hidden": 8, "device": "cpu", **flat})


def _threads(target, args_list, **kwargs):
    threads = [threading.Thread(target=target, args=args, kwargs=kwargs) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("refill", [True, False])
def test_packed_fit_groups_by_structure_and_returns_each_outcome(refill):
    """Calls group by structure; without refill a lone structure trains through `fit`, with it as a
    pack of one that others may join. Outcomes a fake `fit_pack` returns reach their threads."""
    packs, alone = [], []

    def fake_pack(configs, reports, out_dirs, metrics=None, **_):
        packs.append(sorted(c.seed for c in configs))
        return [RuntimeError("pruned") if c.seed == 1 else f"packed {c.seed}" for c in configs]

    def fake_fit(config, report=None, out_dir=None, metrics=None):
        alone.append(config.seed)
        return f"alone {config.seed}"

    packed = PackedFit(3, gather_s=5.0, fit_fn=fake_fit, fit_pack_fn=fake_pack, refill=refill)
    configs = [_config(seed=0), _config(seed=1), _config(seed=2, **{"model.hidden": 16})]
    results: dict[int, object] = {}

    def run(config):
        try:
            results[config.seed] = packed(config, metrics=["val_rel_mse"])
        except RuntimeError as exc:
            results[config.seed] = exc

    _threads(run, [(c,) for c in configs])
    assert sorted(packs) == ([[0, 1], [2]] if refill else [[0, 1]]) and alone == ([] if refill else [2])
    assert sorted(packed.packs) == [1, 2]
    assert results[0] == "packed 0" and results[2] == ("packed 2" if refill else "alone 2") and str(results[1]) == "pruned"


def test_a_call_of_a_running_packs_structure_joins_it_where_a_member_left():
    """Refill: a pack of two (size 3 has a slot open from the start, and a member leaves after
    epoch 1); calls of its structure arriving meanwhile join it, one of another structure does not."""
    import time

    from dlnn_core.pack import fit_pack as real_fit_pack

    joined, arrived = [], threading.Semaphore(0)
    started = threading.Event()

    def watching_pack(configs, reports, out_dirs, metrics=None, refill=None, **kwargs):
        def watched(free):
            if not started.is_set():  # the first epoch's end: hold the pack until the three later calls are in
                started.set()
                for _ in range(3):
                    assert arrived.acquire(timeout=60)
                time.sleep(0.1)
            got = refill(free)
            joined.extend(j.config.seed for j in got)
            return got

        return real_fit_pack(configs, reports, out_dirs, metrics=metrics, refill=watched, **kwargs)

    def prune(epoch, value):
        if epoch == 1:
            raise RuntimeError("pruned")

    tiny = {"data.n_train": 64, "data.n_val": 32, "data.n_test": 32, "data.n_rollout": 1, "data.rollout_steps": 5, "epochs": 3,
            "batch_size": 32, "dtype": "float64"}
    packed = PackedFit(3, gather_s=0.5, fit_pack_fn=watching_pack)
    results: dict[int, object] = {}

    def run(seed, report=None, **flat):
        if seed in (2, 3, 4):
            arrived.release()
        try:
            results[seed] = packed(_config(seed=seed, **tiny, **flat), report=report, metrics=["val_rel_mse"])
        except RuntimeError as exc:
            results[seed] = exc

    first = [threading.Thread(target=run, args=(0, prune)), threading.Thread(target=run, args=(1,))]
    for t in first:
        t.start()
    assert started.wait(60)
    _threads(run, [(2,), (3,), (4,)], **{"model.hidden": 8})  # two take the slots; the third trains in a pack of its own
    late = threading.Thread(target=run, args=(5,), kwargs={"model.hidden": 16})
    late.start()
    for t in first + [late]:
        t.join(60)
    assert len(joined) == 2 and set(joined) <= {2, 3, 4} and packed.joined == 2
    assert str(results[0]) == "pruned" and all(results[s].status == "ok" for s in (1, 2, 3, 4, 5))
    alone = fit(_config(seed=2, **tiny, **{"model.hidden": 8}))
    assert results[2].metrics["val_rel_mse"] == pytest.approx(alone.metrics["val_rel_mse"], rel=1e-9)


def test_a_study_that_optimizes_wall_time_never_packs():
    """A packed trial's wall time would be its pack's: such studies train every trial alone."""
    packs = []
    packed = PackedFit(2, gather_s=5.0, fit_fn=lambda config, **_: "alone", fit_pack_fn=lambda *a, **k: packs.append(a))
    threads = [threading.Thread(target=packed, args=(_config(seed=s),), kwargs={"metrics": ["rollout_error", "wall_time_s"]})
               for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert packs == [] and packed.packs == [1, 1]


def test_trials_asked_together_share_their_first_trials_structure():
    """Groups of `size` trials asked together take the first one's width and batch size; their
    optimizer and lr are drawn for each; a later group draws its own structure."""
    study = optuna.create_study(sampler=SharedStructure(optuna.samplers.RandomSampler(seed=0), 3))
    drawn = []
    for _ in range(6):
        trial = study.ask()
        drawn.append((trial.suggest_int("model.hidden", 16, 512, step=16), trial.suggest_categorical("batch_size", [32, 64, 128, 256]),
                      trial.suggest_float("optimizer.lr", 1e-5, 1e-1, log=True), trial.suggest_categorical("optimizer.name", ["adam", "lion"])))
        study.tell(trial, 1.0)
    first, second = drawn[:3], drawn[3:]
    assert len({d[:2] for d in first}) == 1 and len({d[:2] for d in second}) == 1 and first[0][:2] != second[0][:2]
    assert len({d[2] for d in drawn}) == 6


def test_a_lone_call_runs_after_the_gather_window():
    packed = PackedFit(4, gather_s=0.2, fit_fn=lambda config, **_: "alone", fit_pack_fn=None, refill=False)
    assert packed(_config()) == "alone" and packed.packs == [1]
