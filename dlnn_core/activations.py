"""Activation registry. The Lagrangian network needs a non-zero second derivative, so ReLU-like
activations are refused for it: with them ∂²L/∂q̇² is identically zero and q̈ is undefined."""

from __future__ import annotations

from torch import nn

from .errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanhshrink": nn.Tanhshrink,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
}

# Piecewise linear: the second derivative is zero almost everywhere.
ZERO_CURVATURE = frozenset({"relu", "leaky_relu"})


def get_activation(name: str, *, for_lagrangian: bool = True, field: str = "model.activation") -> nn.Module:
    """Build the named activation; refuse piecewise-linear ones where second derivatives are needed."""
    if name not in ACTIVATIONS:
        raise ConfigError(field, name, sorted(ACTIVATIONS))
    if for_lagrangian and name in ZERO_CURVATURE:
        raise ConfigError(
            field, name,
            f"an activation with a non-zero second derivative ({', '.join(sorted(set(ACTIVATIONS) - ZERO_CURVATURE))}): "
            f"{name}'' = 0, so the Lagrangian's Hessian ∂²L/∂q̇² vanishes and q̈ cannot be solved for",
        )
    return ACTIVATIONS[name]()
