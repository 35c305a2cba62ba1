"""The shapes of a dataset, whatever made it (data.py generates one, datafiles.py reads one from
a file): samples with their accelerations, true trajectories for rollouts, and the splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .systems import System

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StateSet:
    """Samples (q, q̇) -> q̈, float64 arrays [N, n]; `observed`: the angles as measured, where q is
    an estimate smoothed from them (noisy generated trajectories), else None (q is what was observed)."""

    q: np.ndarray
    qdot: np.ndarray
    qddot: np.ndarray
    observed: np.ndarray | None = None

    def to_torch(self, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
        """(q, q̇, q̈) as tensors of `dtype` (default float32) on `device`."""
        import torch

        return tuple(torch.as_tensor(a, dtype=dtype or torch.float32, device=device) for a in (self.q, self.qdot, self.qddot))


@dataclass(frozen=True)
class Trajectories:
    """True trajectories (angles unwrapped) for rollout metrics: t [T], q and q̇ [N, T, n].
    With `lengths` [N] (file data), trajectory i ends at sample lengths[i]; the rest is NaN padding."""

    t: np.ndarray
    q: np.ndarray
    qdot: np.ndarray
    lengths: np.ndarray | None = None


@dataclass(frozen=True)
class Splits:
    system: System  # for file data: n, angles and ranges only (no lagrangian, dissipation, energy)
    train: StateSet
    val: StateSet
    test: StateSet
    ood: StateSet | None  # None: no ood split (file data with an ood fraction of 0)
    rollouts: dict[str, Trajectories]  # "val", "test", "ood" (when there is one)
    data_metrics: dict[str, Any] = field(default_factory=dict)  # stated with the metrics (file data: the ood rule)


def wrap_angles(q: np.ndarray, angles: tuple[bool, ...]) -> np.ndarray:
    """Map rotational coordinates into [−π, π); others unchanged."""
    return np.where(np.array(angles), (q + np.pi) % (2 * np.pi) - np.pi, q)
