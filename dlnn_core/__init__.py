"""dlnn_core: dissipative Lagrangian neural networks — physics, models, data and training.
Knows nothing about Optuna; the study service in `workers/` drives it through `fit`."""

from .activations import ACTIVATIONS, get_activation
from .data import DataConfig, Splits, StateSet, Trajectories, load_data
from .errors import ConfigError
from .lagrangian import METHODS, euler_lagrange_acceleration, hessian_condition_number, regularized_solve
from .models import MODEL_FORMS, MODEL_KINDS, ModelConfig, build_model
from .rollout import rollout
from .systems import SYSTEMS, System, get_system

__all__ = [
    "ACTIVATIONS", "ConfigError", "DataConfig", "METHODS", "MODEL_FORMS", "MODEL_KINDS", "ModelConfig",
    "SYSTEMS", "Splits", "StateSet", "System", "Trajectories", "build_model", "euler_lagrange_acceleration",
    "get_activation", "get_system", "hessian_condition_number", "load_data", "regularized_solve", "rollout",
]
