"""Activation registry. The Lagrangian network needs a non-zero second derivative, so ReLU-like
activations are refused for it: with them ∂²L/∂q̇² is identically zero and q̈ is undefined.

Entries name their `torch.nn` class, which is looked up when a network is built: configs check
activation names against this registry without importing torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

ACTIVATIONS: dict[str, str] = {  # name -> its torch.nn class
    "swish": "SiLU",
    "silu": "SiLU",
    "tanhshrink": "Tanhshrink",
    "softplus": "Softplus",
    "tanh": "Tanh",
    "gelu": "GELU",
    "elu": "ELU",
    "relu": "ReLU",
    "leaky_relu": "LeakyReLU",
}

# Piecewise linear: the second derivative is zero almost everywhere.
ZERO_CURVATURE = frozenset({"relu", "leaky_relu"})


def check_activation(name: str, *, for_lagrangian: bool = True, field: str = "model.activation") -> None:
    """Refuse an unknown name, and a piecewise-linear one where second derivatives are needed."""
    if name not in ACTIVATIONS:
        raise ConfigError(field, name, sorted(ACTIVATIONS))
    if for_lagrangian and name in ZERO_CURVATURE:
        raise ConfigError(
            field, name,
            f"an activation with a non-zero second derivative ({', '.join(sorted(set(ACTIVATIONS) - ZERO_CURVATURE))}): "
            f"{name}'' = 0, so the Lagrangian's Hessian ∂²L/∂q̇² vanishes and q̈ cannot be solved for",
        )


def get_activation(name: str, *, for_lagrangian: bool = True, field: str = "model.activation") -> nn.Module:
    """Build the named activation, after `check_activation`."""
    from torch import nn

    check_activation(name, for_lagrangian=for_lagrangian, field=field)
    return getattr(nn, ACTIVATIONS[name])()
