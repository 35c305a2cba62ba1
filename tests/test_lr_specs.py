"""Specs that do not search the learning rate, that fix it as a value, and that search it per
optimizer: real trials through the worker (the real `fit`, tiny problems, SQLite), each trial
complete with its lr ratio to the optimizer's default (`records.LR_REL`, from `optim.relative_lr`)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from service_support import tiny_spec, write_spec

from dlnn_core.config import OptimizerConfig
from dlnn_core.optim import OPTIMIZERS, relative_lr, resolve_lr
from dlnn_studies.spec.schema import load_spec
from dlnn_studies.study import records
from dlnn_studies.study.launch import launch
from dlnn_studies.study.worker import run_worker

NO_LR = """
[space.optimizer]
choices = ["adam", "rmsprop"]
"""
FIXED_LR = """
[space.optimizer]
choices = ["adam", "rmsprop"]
[space.optimizer.lr]
value = 2e-3
"""
PER_OPTIMIZER = """
[space.optimizer]
choices = ["adam", "rmsprop"]
[space.optimizer.lr]
per_optimizer = true
"""


def test_relative_lr_is_the_configured_lr_over_the_default():
    assert relative_lr("adam", None) == 1.0  # not set: the optimizer's own default
    assert relative_lr("adam", 3e-3) == pytest.approx(3.0)
    assert relative_lr("dadaptadam", 0.3) == pytest.approx(1.0)  # D-Adaptation: a multiplier, still over its default
    assert resolve_lr(OptimizerConfig(name="sgd")) == OPTIMIZERS["sgd"].default_lr
    with pytest.raises(ValueError, match="optimizer.name: .adamm. is not allowed"):
        relative_lr("adamm", 1e-3)


def _run(tmp_path, monkeypatch, space: str) -> list[optuna.trial.FrozenTrial]:
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "cache"))
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    text = tiny_spec(trials=2, epochs=1, sampler='name = "random"', space=space)
    launch(load_spec(write_spec(tmp_path, text)), url, log=lambda m: None)
    logs: list[str] = []
    assert run_worker(url, "tiny", fit_fn=None, seed=0, install_signals=False, artifacts=None, log=logs.append, timeout=180) == 0
    trials = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, (logs, [t.user_attrs.get("reason") for t in trials])
    return trials


@pytest.mark.slow
@pytest.mark.parametrize("space, lr", [(NO_LR, None), (FIXED_LR, 2e-3), (PER_OPTIMIZER, "searched")],
                         ids=["not-searched", "fixed-value", "per-optimizer"])
def test_every_lr_spec_trains_and_records_its_ratio(tmp_path, monkeypatch, space, lr):
    for t in _run(tmp_path, monkeypatch, space):
        opt = records.trial_config(t)["optimizer"]
        assert opt["name"] == t.params["optimizer.name"]
        if lr == "searched":
            low, high = OPTIMIZERS[opt["name"]].lr_range
            assert low <= opt["lr"] <= high
        else:
            assert opt["lr"] == lr
        expected = (opt["lr"] or OPTIMIZERS[opt["name"]].default_lr) / OPTIMIZERS[opt["name"]].default_lr
        assert t.user_attrs[records.LR_REL] == pytest.approx(expected)
