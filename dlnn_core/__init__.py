"""dlnn_core: dissipative Lagrangian neural networks — physics, models, data and training.
Knows nothing about Optuna; the study service in `dlnn_studies/` drives it through `fit`."""

from .activations import ACTIVATIONS, get_activation
from .config import PRESETS, OptimizerConfig, SchedulerConfig, TrainConfig, load_config, save_config
from .data import DataConfig, Splits, StateSet, Trajectories, load_data
from .declared import system_factory
from .errors import ConfigError
from .evaluate import evaluate
from .lagrangian import METHODS, euler_lagrange_acceleration, hessian_condition_number, regularized_solve
from .losses import LOSSES
from .lr_find import LRFindResult, lr_find
from .models import MODEL_FORMS, MODEL_KINDS, ModelConfig, build_model
from .optim import OPTIMIZERS, SCHEDULERS, OptimInfo, build_optimizer, build_scheduler
from .rollout import rollout
from .systems import SYSTEMS, System, get_system
from .train import FitResult, evaluate_checkpoint, fit, load_checkpoint

__all__ = [
    "ACTIVATIONS", "ConfigError", "DataConfig", "FitResult", "LOSSES", "LRFindResult", "METHODS", "MODEL_FORMS",
    "MODEL_KINDS", "ModelConfig", "OPTIMIZERS", "OptimInfo", "OptimizerConfig", "PRESETS", "SCHEDULERS",
    "SYSTEMS", "SchedulerConfig", "Splits", "StateSet", "System", "TrainConfig", "Trajectories", "build_model",
    "build_optimizer", "build_scheduler", "euler_lagrange_acceleration", "evaluate", "evaluate_checkpoint", "fit",
    "get_activation", "get_system", "hessian_condition_number", "load_checkpoint", "load_config", "load_data",
    "lr_find", "regularized_solve", "rollout", "save_config", "system_factory",
]
