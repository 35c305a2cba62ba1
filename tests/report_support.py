"""Studies with known answers written straight into storage, as a worker records trials: the
report's tests build on them."""

from __future__ import annotations

import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from service_support import tiny_spec, write_spec

from dlnn_core.config import TrainConfig
from dlnn_core.optim import OPTIMIZERS
from dlnn_studies.study import records
from dlnn_studies.study.launch import launch
from dlnn_studies.spec.schema import load_spec
from dlnn_studies.store.urls import normalize_url

SPACE = """
[space.optimizer]
choices = ["adam", "sgd"]
[space.optimizer.lr]
per_optimizer = true
[space.loss]
choices = ["mse", "l1_sum"]
[space.batch_size]
choices = [32, 128]
"""


def _study(url, tmp_path, name="known", space=SPACE, extra=""):
    launch(load_spec(write_spec(tmp_path, tiny_spec(name=name, trials=200, space=space, extra=extra), f"{name}.toml")), url,
           log=lambda m: None)
    return optuna.load_study(study_name=name, storage=normalize_url(url))


def _add(study, *, opt="adam", lr=1e-3, loss="mse", batch=32, value=None, state=TrialState.COMPLETE, status="ok",
         reason=None, curve=None, baseline=None, values=None, metrics=None, attrs=None):
    """One finished trial as a worker records it (config and metrics as system attrs, log10 objective);
    `metrics` adds to the stored metrics, `attrs` to the user attrs."""
    config = TrainConfig().with_flat({"optimizer.name": opt, "optimizer.lr": lr, "loss": loss, "batch_size": batch, "epochs": 4})
    low, high = OPTIMIZERS[opt].lr_range
    dists = {"optimizer.name": CategoricalDistribution(["adam", "sgd"]), "optimizer.lr_position": FloatDistribution(0.0, 1.0),
             "loss": CategoricalDistribution(["mse", "l1_sum"]), "batch_size": CategoricalDistribution([32, 128])}
    params = {"optimizer.name": opt, "optimizer.lr_position": min(1.0, max(0.0, math.log(lr / low) / math.log(high / low))),
              "loss": loss, "batch_size": batch}
    metrics = {**({"val_rel_mse": value, "test_rollout_error": 10 * value} if value is not None else {}), **(metrics or {})}
    user = {**(attrs or {}), "status": status, **({"reason": reason} if reason else {}), **({"baseline": baseline} if baseline else {}), **metrics}
    system = {records.CONFIG: config.to_dict(), records.METRICS: metrics,
              "constraints:diverged": 1.0 if status == "diverged" else 0.0}
    kw = {}
    if state == TrialState.COMPLETE:
        kw["values"] = values if values is not None else [math.log10(value)]
    curve = curve or ({e: math.log10(value) + (4 - e) * 0.1 for e in range(1, 5)} if value else {})
    study.add_trial(optuna.create_trial(state=state, params=params, distributions=dists, user_attrs=user,
                                        system_attrs=system, intermediate_values=curve, **kw))


