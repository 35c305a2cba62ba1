"""dlnn_core: dissipative Lagrangian neural networks — physics, models, data and training.
Knows nothing about Optuna; the study service in `dlnn_studies/` drives it through `fit`.

The public names below are loaded on first use, each from its module: `from dlnn_core import
TrainConfig` imports the configs (no torch), `from dlnn_core import fit` the training loop. The
functions named like their modules are imported from those (`from dlnn_core.rollout import rollout`,
also `evaluate` and `lr_find`): once such a module is loaded, the package's attribute is the module."""

from __future__ import annotations

import importlib

# public name -> the module that defines it
_EXPORTS = {
    "ACTIVATIONS": "activations", "get_activation": "activations",
    "PRESETS": "config", "OptimizerConfig": "config", "SchedulerConfig": "config", "TrainConfig": "config",
    "load_config": "config", "save_config": "config",
    "DataConfig": "data", "Splits": "data", "StateSet": "data", "Trajectories": "data", "load_data": "data",
    "system_factory": "entry_points",
    "ConfigError": "errors",
    "euler_lagrange_acceleration": "lagrangian", "hessian_condition_number": "lagrangian", "regularized_solve": "lagrangian",
    "LOSSES": "losses",
    "LRFindResult": "lr_find",
    "METHODS": "model_config", "MODEL_FORMS": "model_config", "MODEL_KINDS": "model_config", "ModelConfig": "model_config",
    "build_model": "models",
    "OPTIMIZERS": "optim", "SCHEDULERS": "optim", "OptimInfo": "optim", "build_optimizer": "optim", "build_scheduler": "optim",
    "fit_pack": "pack", "pack_key": "pack",
    "SYSTEMS": "systems", "System": "systems", "get_system": "systems",
    "FitResult": "train", "evaluate_checkpoint": "train", "fit": "train", "load_checkpoint": "train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dlnn_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
