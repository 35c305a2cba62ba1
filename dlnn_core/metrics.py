"""What a trained model is judged on (`METRICS`: every metric a study can optimize, as data) and the
functions that measure q̈ and rollouts. Angles are compared modulo 2π (atan2 of the difference).

The table is read by study specs, which are checked without torch, so the functions that need more
than tensor methods import torch when called; evaluate.py computes the metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .systems import System

if TYPE_CHECKING:
    from torch import Tensor

ROLLOUT_HORIZONS = (100, 500)  # rollout errors are also reported after this many steps
ROLLOUT_SPLITS = ("val", "test", "ood")  # the splits whose trajectories are rolled out (val: for studies that select on a rollout)


@dataclass(frozen=True)
class Metric:
    """A metric a study can optimize: its natural direction, the pass that computes it ("states":
    q̈ on held-out states, "rollout:<split>", "dissipation", "run": fit's own bookkeeping), whether
    it needs the true system's equations (absent for data files), and whether it is an error that
    spans decades (studies store those as log10). `no_skill` is the value a model that learned
    nothing gets (predicting zero q̈ gives a relative MSE of 1): a report draws no learning-rate band
    for an optimizer whose best trial is no better."""

    direction: str
    source: str
    needs_system: bool = False
    log_scale: bool = True
    no_skill: float | None = None


ALIASES = {"rollout_error": "test_rollout_error", "energy_error": "test_energy_error"}  # the short names of the test split's
METRICS: dict[str, Metric] = {
    **{f"{s}_{m}": Metric("minimize", "states", no_skill=1.0) for s in ("val", "test", "ood") for m in ("rel_mse", "rel_mse_median")},
    **{f"{s}_{m}": Metric("minimize", f"rollout:{s}") for s in ROLLOUT_SPLITS for m in ("rollout_error", *(f"rollout_error_{h}" for h in ROLLOUT_HORIZONS))},
    **{f"{s}_energy_error": Metric("minimize", f"rollout:{s}", needs_system=True) for s in ROLLOUT_SPLITS},
    **{f"{s}_valid_steps": Metric("maximize", f"rollout:{s}", log_scale=False) for s in ROLLOUT_SPLITS},
    "rollout_error": Metric("minimize", "rollout:test"),
    "energy_error": Metric("minimize", "rollout:test", needs_system=True),
    "dissipation_rel_error": Metric("minimize", "dissipation", needs_system=True),  # learned vs true deceleration from D
    "wall_time_s": Metric("minimize", "run", log_scale=False),
    "epochs": Metric("minimize", "run", log_scale=False),
}


# ----------------------------------------------------------------------------- measures


def relative_mse(pred: Tensor, true: Tensor) -> Tensor:
    """mean |q̈_pred − q̈|² / mean |q̈|²: 1.0 is as good as predicting zero."""
    return (pred - true).square().mean() / true.square().mean()


def relative_se_per_sample(pred: Tensor, true: Tensor) -> Tensor:
    """Each sample's squared error divided by the set's mean |q̈|² [B]; its median resists a few exploding states."""
    return (pred - true).square().mean(-1) / true.square().mean()


def angle_difference(a: Tensor, b: Tensor, angles: tuple[bool, ...]) -> Tensor:
    """a − b with rotational coordinates wrapped into (−π, π]."""
    import torch

    d = a - b
    mask = torch.tensor(angles, device=d.device)
    return torch.where(mask, torch.atan2(torch.sin(d), torch.cos(d)), d)


def state_error(pred_q: Tensor, pred_v: Tensor, true_q: Tensor, true_v: Tensor, angles: tuple[bool, ...]) -> Tensor:
    """Euclidean error of the state (q wrapped, q̇) per trajectory and step: [B, T]."""
    dq = angle_difference(pred_q, true_q, angles)
    return (dq.square().sum(-1) + (pred_v - true_v).square().sum(-1)).sqrt()


def rollout_error(errors: Tensor, steps: int | None = None) -> float:
    """Mean state error over steps 1..N (N = all when None), averaged over trajectories."""
    window = errors[:, 1 : (steps + 1 if steps else None)]
    return float(window.mean())


def valid_steps_each(errors: Tensor, threshold: float) -> Tensor:
    """Steps before each trajectory's state error [N, T] first exceeds `threshold` (T if never): [N]."""
    import torch

    over = errors > threshold
    return torch.where(over.any(1), over.float().argmax(1), torch.full_like(over[:, 0], errors.shape[1], dtype=torch.long))


def valid_prediction_steps(errors: Tensor, threshold: float) -> float:
    """Mean number of steps before a trajectory's state error first exceeds `threshold`."""
    return float(valid_steps_each(errors, threshold).float().mean())


def energy_error(system: System, pred_q: Tensor, pred_v: Tensor, true_q: Tensor, true_v: Tensor) -> float:
    """Mean |E(predicted state) − E(true state)| along the rollout, in the system's energy units."""
    shape = pred_q.shape
    flat = lambda x: x.reshape(-1, shape[-1])  # noqa: E731
    e_pred = system.energy(flat(pred_q), flat(pred_v))
    e_true = system.energy(flat(true_q), flat(true_v))
    return float((e_pred - e_true).abs().mean())
