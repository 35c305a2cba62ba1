"""The evaluation as it was before issue 16, kept verbatim as the reference: one rollout per split,
q̈ through model(q, q̇) under no_grad, three derivative passes for the dissipation metrics. The new
dlnn_core.evaluate must give the same values (tests/test_evaluate.py); benchmarks/evaluation.py
times the two side by side."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlnn_core.data import Splits, StateSet, Trajectories
from dlnn_core.lagrangian import DEFAULT_METHOD, euler_lagrange_acceleration
from dlnn_core.metrics import energy_error, relative_mse, relative_se_per_sample, rollout_error, state_error, valid_prediction_steps
from dlnn_core.rollout import rollout

ROLLOUT_HORIZONS = (100, 500)
VALID_THRESHOLD = 0.1  # a rollout is "valid" until its state error passes 10 % of the mean true state norm


def predict(model: nn.Module, states: StateSet, dtype: torch.dtype, device: torch.device | str, batch: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(q̈ predicted, q̈ true) over a state set, in batches, without building a graph."""
    q, v, a = states.to_torch(dtype, device)
    with torch.no_grad():
        pred = torch.cat([model(q[i : i + batch], v[i : i + batch]) for i in range(0, len(q), batch)])
    return pred, a


def acceleration_metrics(model: nn.Module, states: StateSet, prefix: str, dtype: torch.dtype, device) -> dict[str, float]:
    pred, true = predict(model, states, dtype, device)
    return {
        f"{prefix}_rel_mse": float(relative_mse(pred, true)),
        f"{prefix}_rel_mse_median": float(relative_se_per_sample(pred, true).median()),
    }


def rollout_metrics(model: nn.Module, splits: Splits, traj: Trajectories, prefix: str, dtype: torch.dtype, device, substeps: int = 2) -> dict[str, float]:
    """Roll the model out from the true initial states and compare with the true trajectories."""
    system = splits.system
    true_q = torch.as_tensor(traj.q, dtype=dtype, device=device)
    true_v = torch.as_tensor(traj.qdot, dtype=dtype, device=device)
    dt = float(traj.t[1] - traj.t[0])
    with torch.no_grad():
        q, v = rollout(model, true_q[:, 0], true_v[:, 0], dt, true_q.shape[1] - 1, substeps)
    q, v = torch.nan_to_num(q, nan=1e6, posinf=1e6, neginf=-1e6), torch.nan_to_num(v, nan=1e6, posinf=1e6, neginf=-1e6)
    errors = state_error(q, v, true_q, true_v, system.angles)
    scale = float(torch.sqrt(true_q.square().sum(-1) + true_v.square().sum(-1)).mean())
    out = {f"{prefix}_rollout_error": rollout_error(errors)}
    for steps in ROLLOUT_HORIZONS:
        if steps < errors.shape[1]:
            out[f"{prefix}_rollout_error_{steps}"] = rollout_error(errors, steps)
    out[f"{prefix}_valid_steps"] = valid_prediction_steps(errors, VALID_THRESHOLD * scale)
    out[f"{prefix}_energy_error"] = energy_error(system, q.double().cpu(), v.double().cpu(), true_q.double().cpu(), true_v.double().cpu())
    return out


def dissipative_acceleration(lagrangian, dissipation, q: torch.Tensor, v: torch.Tensor, method: str = DEFAULT_METHOD) -> torch.Tensor:
    """a_D = (∂²L/∂q̇²)⁻¹ ∂D/∂q̇, the deceleration that D causes [B, n]: q̈ without D minus q̈ with D.
    Unlike D itself it is identifiable: scaling L and D by one factor leaves it unchanged."""
    undamped = euler_lagrange_acceleration(lagrangian, None, q, v, method=method)
    return undamped - euler_lagrange_acceleration(lagrangian, dissipation, q, v, method=method)


def dissipation_metrics(model: nn.Module, splits: Splits, dtype: torch.dtype, device) -> dict[str, float]:
    """The learned dissipation's sanity on the test states: the fraction with D < 0, its share of
    the acceleration (Σ|a_D|² / Σ|q̈|², learned and true: ≈ 0 on undamped data) and the relative
    error of the learned a_D against the true one (damped systems only)."""
    system = splits.system
    q64, v64 = torch.from_numpy(splits.test.q), torch.from_numpy(splits.test.qdot)
    norm = float(torch.from_numpy(splits.test.qddot).square().sum())
    with torch.no_grad():
        true_ad = dissipative_acceleration(system.lagrangian, system.dissipation, q64, v64)
    out = {"true_dissipation_share": float(true_ad.square().sum()) / norm}
    dissipation = getattr(model, "dissipation", None)
    if dissipation is None:
        return out
    q, v, _ = splits.test.to_torch(dtype, device)
    with torch.no_grad():
        d = dissipation(q, v)
        learned_ad = dissipative_acceleration(model.lagrangian, dissipation, q, v, model.method).double().cpu()
    out["dissipation_negative_fraction"] = float((d < 0).float().mean())
    out["dissipation_share"] = float(learned_ad.square().sum()) / norm
    if out["true_dissipation_share"] > 0:
        out["dissipation_rel_error"] = float((learned_ad - true_ad).square().sum() / true_ad.square().sum())
    return out


def evaluate(model: nn.Module, splits: Splits, dtype: torch.dtype = torch.float32, device="cpu", rollouts: bool = True) -> dict[str, float]:
    """All metrics of a model on a dataset; NaN-free by construction (non-finite becomes inf)."""
    model.eval()
    metrics: dict[str, float] = {}
    for name in ("val", "test", "ood"):
        metrics.update(acceleration_metrics(model, getattr(splits, name), name, dtype, device))
    if rollouts:  # the validation rollouts were added later (a study may select on them), scored the same way
        metrics.update(rollout_metrics(model, splits, splits.rollouts["val"], "val", dtype, device))
        metrics.update(rollout_metrics(model, splits, splits.rollouts["test"], "test", dtype, device))
        metrics.update(rollout_metrics(model, splits, splits.rollouts["ood"], "ood", dtype, device))
    metrics.update(dissipation_metrics(model, splits, dtype, device))
    return {k: (v if math.isfinite(v) else math.inf) for k, v in metrics.items()}
