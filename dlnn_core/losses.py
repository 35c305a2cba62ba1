"""Training losses on q̈, by the names users write in specs. Each maps (pred, true) [B, n] to a
scalar. `l1_sum` is the LNN paper's sum of absolute errors: it grows with the batch size, so the
batch size and the learning rate interact with it; every other form is a mean.

The forms that need more than tensor methods import torch when called: configs check loss names
against LOSSES without importing torch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from torch import Tensor

LossFn = Callable[["Tensor", "Tensor"], "Tensor"]


def mse(pred: Tensor, true: Tensor) -> Tensor:
    return (pred - true).square().mean()


def l1_sum(pred: Tensor, true: Tensor) -> Tensor:
    """Sum of |error| over the batch and coordinates (Cranmer et al. 2020)."""
    return (pred - true).abs().sum()


def l1_mean(pred: Tensor, true: Tensor) -> Tensor:
    return (pred - true).abs().mean()


def huber(pred: Tensor, true: Tensor) -> Tensor:
    """Quadratic for |error| < 1, linear beyond: a few exploding states do not dominate."""
    from torch.nn import functional as F

    return F.huber_loss(pred, true, delta=1.0)


def log_cosh(pred: Tensor, true: Tensor) -> Tensor:
    """mean log cosh(error): quadratic for small errors, linear for large ones. Computed as
    log1p(2 sinh²(x/2)) for |x| < 10 (no cancellation in float32) and |x| + softplus(−2|x|) − log 2
    beyond (no overflow); each branch sees only its own inputs, so neither makes inf gradients."""
    import torch
    from torch.nn import functional as F

    x = (pred - true).abs()
    is_small = x < 10.0
    small = torch.where(is_small, x, torch.zeros_like(x))
    large = torch.where(is_small, torch.full_like(x, 10.0), x)
    value = torch.where(is_small, torch.log1p(2.0 * torch.sinh(0.5 * small).square()), large + F.softplus(-2.0 * large) - math.log(2.0))
    return value.mean()


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "l1_sum": l1_sum,
    "l1_mean": l1_mean,
    "huber": huber,
    "log_cosh": log_cosh,
}
