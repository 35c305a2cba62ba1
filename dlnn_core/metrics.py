"""Metrics on q̈ and on rollouts. Angles are compared modulo 2π (atan2 of the difference)."""

from __future__ import annotations

import torch
from torch import Tensor

from .systems import System


def relative_mse(pred: Tensor, true: Tensor) -> Tensor:
    """mean |q̈_pred − q̈|² / mean |q̈|²: 1.0 is as good as predicting zero."""
    return (pred - true).square().mean() / true.square().mean()


def relative_se_per_sample(pred: Tensor, true: Tensor) -> Tensor:
    """Each sample's squared error divided by the set's mean |q̈|² [B]; its median resists a few exploding states."""
    return (pred - true).square().mean(-1) / true.square().mean()


def angle_difference(a: Tensor, b: Tensor, angles: tuple[bool, ...]) -> Tensor:
    """a − b with rotational coordinates wrapped into (−π, π]."""
    d = a - b
    mask = torch.tensor(angles, device=d.device)
    return torch.where(mask, torch.atan2(torch.sin(d), torch.cos(d)), d)


def state_error(pred_q: Tensor, pred_v: Tensor, true_q: Tensor, true_v: Tensor, angles: tuple[bool, ...]) -> Tensor:
    """Euclidean error of the state (q wrapped, q̇) per trajectory and step: [B, T]."""
    dq = angle_difference(pred_q, true_q, angles)
    return torch.sqrt(dq.square().sum(-1) + (pred_v - true_v).square().sum(-1))


def rollout_error(errors: Tensor, steps: int | None = None) -> float:
    """Mean state error over steps 1..N (N = all when None), averaged over trajectories."""
    window = errors[:, 1 : (steps + 1 if steps else None)]
    return float(window.mean())


def valid_prediction_steps(errors: Tensor, threshold: float) -> float:
    """Mean number of steps before a trajectory's state error first exceeds `threshold`."""
    over = errors > threshold
    first = torch.where(over.any(1), over.float().argmax(1), torch.full_like(over[:, 0], errors.shape[1], dtype=torch.long))
    return float(first.float().mean())


def energy_error(system: System, pred_q: Tensor, pred_v: Tensor, true_q: Tensor, true_v: Tensor) -> float:
    """Mean |E(predicted state) − E(true state)| along the rollout, in the system's energy units."""
    shape = pred_q.shape
    flat = lambda x: x.reshape(-1, shape[-1])  # noqa: E731
    e_pred = system.energy(flat(pred_q), flat(pred_v))
    e_true = system.energy(flat(true_q), flat(true_v))
    return float((e_pred - e_true).abs().mean())
