"""Training losses on q̈, by the names users write in specs. Each maps (pred, true) [B, n] to a
scalar. `l1_sum` is the LNN paper's sum of absolute errors: it grows with the batch size, so the
batch size and the learning rate interact with it; every other form is a mean."""

from __future__ import annotations

import math
from typing import Callable

from torch import Tensor
from torch.nn import functional as F

LossFn = Callable[[Tensor, Tensor], Tensor]


def mse(pred: Tensor, true: Tensor) -> Tensor:
    return (pred - true).square().mean()


def l1_sum(pred: Tensor, true: Tensor) -> Tensor:
    """Sum of |error| over the batch and coordinates (Cranmer et al. 2020)."""
    return (pred - true).abs().sum()


def l1_mean(pred: Tensor, true: Tensor) -> Tensor:
    return (pred - true).abs().mean()


def huber(pred: Tensor, true: Tensor) -> Tensor:
    """Quadratic for |error| < 1, linear beyond: a few exploding states do not dominate."""
    return F.huber_loss(pred, true, delta=1.0)


def log_cosh(pred: Tensor, true: Tensor) -> Tensor:
    """mean log cosh(error), computed as |x| + softplus(−2|x|) − log 2 so it never overflows."""
    x = (pred - true).abs()
    return (x + F.softplus(-2.0 * x) - math.log(2.0)).mean()


LOSSES: dict[str, LossFn] = {
    "mse": mse,
    "l1_sum": l1_sum,
    "l1_mean": l1_mean,
    "huber": huber,
    "log_cosh": log_cosh,
}
