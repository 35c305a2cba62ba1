"""Everything a trained model is judged on: q̈ error on held-out and out-of-distribution states
(mean and median, so a few exploding states cannot hide the rest), rollouts against the true
trajectories (state error after 100 and 500 steps, valid prediction time, energy error), and the
learned dissipation's sanity (its sign, and the deceleration it causes against the true one).
One flat dict of floats, so it can be stored and compared; file data adds `ood_rule` (a string:
how its ood split was chosen, or "none") and has no metric that needs the true system (energy,
true dissipation), nor ood metrics without an ood split.

`METRICS` (metrics.py) names every metric a study can optimize, its direction and the pass that
computes it; the study spec reads its objectives, directions and log10 storage from there. The
rollouts are nearly all of the cost (the q̈ and dissipation passes are about 2 % of it), so `evaluate(metrics=...)` rolls out only the splits
whose metrics the caller needs: a study asks for its objectives, `dlnn train` and a study's
references and best trials for everything.

Built for cost: the test and OOD trajectories roll out as one batch (every horizon read from the
one rollout), the weights are frozen so no graph of them is built, and q̈ of the default
("autograd") method comes from the model's `inference()`, built once per pass (its networks'
weights stacked, derivatives pushed through the layers under inference mode), which keeps no graph
and also yields ∂D/∂q̇, so the test states' q̈ and learned dissipation share one derivative pass."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Collection, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .data import Splits, StateSet, Trajectories
from .lagrangian import TermsFn, inference_terms, regularized_solve
from .metrics import (ALIASES, METRICS, ROLLOUT_HORIZONS, ROLLOUT_SPLITS, energy_error, relative_mse, relative_se_per_sample,
                      rollout_error, state_error, valid_prediction_steps)
from .rollout import AccelFn, rk4_step

ROLLOUT_SUBSTEPS = 2  # RK4 steps per sample of the true trajectories
VALID_THRESHOLD = 0.1  # a rollout is "valid" until its state error passes 10 % of the mean true state norm
EVAL_BATCH = 4096
PROGRESS_EVERY = 25  # rollout steps between two progress calls

EvalProgress = Callable[[str, int, int], None]  # (stage, done, total)


def rollout_splits(metrics: Collection[str] | None) -> tuple[str, ...]:
    """The splits to roll out for these metric names (None: every metric, so every split)."""
    if metrics is None:
        return ROLLOUT_SPLITS
    wanted = {METRICS[m].source for m in metrics if m in METRICS}
    return tuple(s for s in ROLLOUT_SPLITS if f"rollout:{s}" in wanted)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model with requires_grad off on every parameter (restored afterwards), in eval mode:
    derivatives with respect to the states then build no graph of the weights."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _terms_fn(model: nn.Module) -> TermsFn | None:
    """The model's own graph-free derivative pass for its current weights (a Lagrangian model on the
    "autograd" method whose layers all have derivative rules), or None: then q̈ is model(q, v) under
    no_grad. With it a pass runs under inference mode, without any autograd bookkeeping."""
    if getattr(model, "method", None) != "autograd" or not hasattr(model, "inference"):
        return None
    return model.inference()


def _accelerator(model: nn.Module, terms_fn: TermsFn | None) -> AccelFn:
    """(q, q̇) -> q̈ [B, n] without a graph; the same values as model(q, v) under no_grad."""
    if terms_fn is None:
        return torch.no_grad()(model)

    def accel(q: Tensor, v: Tensor) -> Tensor:
        terms, d_grad = terms_fn(q, v)
        return regularized_solve(terms.hessian_vv, terms.rhs if d_grad is None else terms.rhs - d_grad)

    return accel


def _with_dissipation(model: nn.Module, terms_fn: TermsFn | None) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(q, q̇) -> (q̈, a_D) for a model with D, a_D = q̈ without D − q̈ with D."""
    if terms_fn is None:
        accel = _accelerator(model, None)
        return lambda q, v: (accel(q, v), dissipative_acceleration(model.lagrangian, model.dissipation, q, v, model.method))

    def both(q: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        terms, d_grad = terms_fn(q, v)
        damped = regularized_solve(terms.hessian_vv, terms.rhs - d_grad)
        return damped, regularized_solve(terms.hessian_vv, terms.rhs) - damped

    return both


def dissipative_acceleration(lagrangian, dissipation, q: Tensor, v: Tensor, method: str = "autograd") -> Tensor:
    """a_D = (∂²L/∂q̇²)⁻¹ ∂D/∂q̇, the deceleration that D causes [B, n]: q̈ without D minus q̈ with D.
    Unlike D itself it is identifiable: scaling L and D by one factor leaves it unchanged."""
    from .lagrangian import euler_lagrange_acceleration

    if method != "autograd":
        with torch.no_grad():
            undamped = euler_lagrange_acceleration(lagrangian, None, q, v, method=method)
            return undamped - euler_lagrange_acceleration(lagrangian, dissipation, q, v, method=method)
    terms, d_grad = inference_terms(lagrangian, dissipation, q, v)
    return regularized_solve(terms.hessian_vv, terms.rhs) - regularized_solve(terms.hessian_vv, terms.rhs - d_grad)


def acceleration_metrics(pred: Tensor, true: Tensor, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_rel_mse": float(relative_mse(pred, true)),
        f"{prefix}_rel_mse_median": float(relative_se_per_sample(pred, true).median()),
    }


def _predict(model: nn.Module, states: StateSet, dtype: torch.dtype, device, dissipation: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """(q̈ predicted, q̈ true, learned a_D or None) over a state set, in batches of EVAL_BATCH."""
    q, v, a = states.to_torch(dtype, device)
    terms_fn = _terms_fn(model)
    with torch.inference_mode(terms_fn is not None):
        if dissipation:
            both = _with_dissipation(model, terms_fn)
            parts = [both(q[i : i + EVAL_BATCH], v[i : i + EVAL_BATCH]) for i in range(0, len(q), EVAL_BATCH)]
        else:
            accel = _accelerator(model, terms_fn)
            parts = [(accel(q[i : i + EVAL_BATCH], v[i : i + EVAL_BATCH]), None) for i in range(0, len(q), EVAL_BATCH)]
    pred = torch.cat([p[0] for p in parts])
    ad = torch.cat([p[1] for p in parts]) if parts and parts[0][1] is not None else None
    return pred, a, ad


def batched_rollout(model: nn.Module, q0: Tensor, v0: Tensor, dt: float, steps: int, substeps: int = ROLLOUT_SUBSTEPS,
                    progress: EvalProgress | None = None) -> tuple[Tensor, Tensor]:
    """`rollout` for evaluation: states [B, steps + 1, n] written in place, q̈ without a graph, and
    progress("rollout", step, steps) every PROGRESS_EVERY steps."""
    terms_fn = _terms_fn(model)
    accel = _accelerator(model, terms_fn)
    qs = q0.new_empty(q0.shape[0], steps + 1, q0.shape[1])
    vs = torch.empty_like(qs)
    qs[:, 0], vs[:, 0] = q0, v0
    q, v, h = q0, v0, dt / substeps
    with torch.inference_mode(terms_fn is not None):
        for step in range(1, steps + 1):
            for _ in range(substeps):
                q, v = rk4_step(accel, q, v, h)
            qs[:, step], vs[:, step] = q, v
            if progress is not None and (step % PROGRESS_EVERY == 0 or step == steps):
                progress("rollout", step, steps)
    return qs, vs


def trajectory_metrics(splits: Splits, traj: Trajectories, q: Tensor, v: Tensor, prefix: str) -> dict[str, float]:
    """Rollout metrics of predicted states q, q̇ [N, T, n] against the true trajectories."""
    system = splits.system
    true_q = torch.as_tensor(traj.q, dtype=q.dtype, device=q.device)
    true_v = torch.as_tensor(traj.qdot, dtype=q.dtype, device=q.device)
    q, v = torch.nan_to_num(q, nan=1e6, posinf=1e6, neginf=-1e6), torch.nan_to_num(v, nan=1e6, posinf=1e6, neginf=-1e6)
    if traj.lengths is not None:  # trajectories of different lengths (file data): score each on its own samples
        return _ragged_metrics(system, traj, q, v, true_q, true_v, prefix)
    errors = state_error(q, v, true_q, true_v, system.angles)
    scale = float(torch.sqrt(true_q.square().sum(-1) + true_v.square().sum(-1)).mean())
    out = {f"{prefix}_rollout_error": rollout_error(errors)}
    for steps in ROLLOUT_HORIZONS:
        if steps < errors.shape[1]:
            out[f"{prefix}_rollout_error_{steps}"] = rollout_error(errors, steps)
    out[f"{prefix}_valid_steps"] = valid_prediction_steps(errors, VALID_THRESHOLD * scale)
    if system.energy is not None:  # file data has no true energy
        out[f"{prefix}_energy_error"] = energy_error(system, q.double().cpu(), v.double().cpu(), true_q.double().cpu(), true_v.double().cpu())
    return out


def _ragged_metrics(system, traj: Trajectories, q: Tensor, v: Tensor, true_q: Tensor, true_v: Tensor, prefix: str) -> dict[str, float]:
    """`trajectory_metrics` over NaN-padded trajectories: every mean and the valid-step count
    stop at each trajectory's own last sample; a horizon is reported when some trajectory reaches it."""
    lengths = torch.as_tensor(traj.lengths, device=q.device)
    steps = torch.arange(q.shape[1], device=q.device)
    valid = steps[None] < lengths[:, None]  # [N, T]
    errors = torch.where(valid, state_error(q, v, torch.nan_to_num(true_q), torch.nan_to_num(true_v), system.angles), 0.0)
    norms = torch.sqrt(torch.nan_to_num(true_q).square().sum(-1) + torch.nan_to_num(true_v).square().sum(-1))
    scale = float(norms[valid].mean())

    def mean_error(horizon: int | None) -> float:
        window = valid & (steps[None] >= 1) & (steps[None] <= (horizon if horizon else q.shape[1]))
        return float(errors[window].mean())

    out = {f"{prefix}_rollout_error": mean_error(None)}
    for horizon in ROLLOUT_HORIZONS:
        if horizon < q.shape[1]:
            out[f"{prefix}_rollout_error_{horizon}"] = mean_error(horizon)
    over = (errors > VALID_THRESHOLD * scale) & valid
    first = torch.where(over.any(1), over.float().argmax(1), lengths)
    out[f"{prefix}_valid_steps"] = float(first.float().mean())
    return out


def rollout_metrics(model: nn.Module, splits: Splits, names: tuple[str, ...], dtype: torch.dtype, device,
                    progress: EvalProgress | None = None) -> dict[str, float]:
    """Roll the model out from the true initial states of every named split at once (one batch per
    sampling interval), to the longest horizon, and score each split on its own slice."""
    groups: dict[float, list[str]] = {}
    for name in names:
        t = splits.rollouts[name].t
        groups.setdefault(float(t[1] - t[0]), []).append(name)
    out: dict[str, float] = {}
    for dt, members in groups.items():
        trajs = [splits.rollouts[name] for name in members]
        q0 = torch.as_tensor(np.concatenate([t.q[:, 0] for t in trajs]), dtype=dtype, device=device)
        v0 = torch.as_tensor(np.concatenate([t.qdot[:, 0] for t in trajs]), dtype=dtype, device=device)
        q, v = batched_rollout(model, q0, v0, dt, max(t.q.shape[1] for t in trajs) - 1, progress=progress)
        start = 0
        for name, traj in zip(members, trajs):
            count, length = traj.q.shape[:2]
            out.update(trajectory_metrics(splits, traj, q[start : start + count, :length], v[start : start + count, :length], name))
            start += count
    return out


def dissipation_metrics(splits: Splits, learned_ad: Tensor | None, learned_d: Tensor | None) -> dict[str, float]:
    """The learned dissipation's sanity on the test states: the fraction with D < 0, its share of
    the acceleration (Σ|a_D|² / Σ|q̈|², learned and true: ≈ 0 on undamped data) and the relative
    error of the learned a_D against the true one (damped systems only)."""
    system = splits.system
    q64, v64 = torch.from_numpy(splits.test.q), torch.from_numpy(splits.test.qdot)
    norm = float(torch.from_numpy(splits.test.qddot).square().sum())
    out = {}
    if system.dissipation is not None:  # file data has no true dissipation: its metrics are absent
        true_ad = dissipative_acceleration(system.lagrangian, system.dissipation, q64, v64)
        out["true_dissipation_share"] = float(true_ad.square().sum()) / norm
    if learned_ad is None or learned_d is None:
        return out
    learned_ad = learned_ad.double().cpu()
    out["dissipation_negative_fraction"] = float((learned_d < 0).float().mean())
    out["dissipation_share"] = float(learned_ad.square().sum()) / norm
    if out.get("true_dissipation_share", 0) > 0:
        out["dissipation_rel_error"] = float((learned_ad - true_ad).square().sum() / true_ad.square().sum())
    return out


def evaluate(model: nn.Module, splits: Splits, dtype: torch.dtype = torch.float32, device="cpu", *,
             metrics: Collection[str] | None = None, progress: EvalProgress | None = None) -> dict[str, float]:
    """The metrics of a model on a dataset; NaN-free by construction (non-finite becomes inf).
    `metrics`: the names the caller needs (None: all); the q̈ and dissipation metrics come always,
    rollouts only for the splits those names need, and every value is the one a full evaluation gives.
    `progress(stage, done, total)` hears of each stage ("states", "rollout", "dissipation")."""
    results: dict[str, float] = {}
    with frozen(model):
        learned_ad = learned_d = None
        for i, name in enumerate(("val", "test", "ood")):
            if getattr(splits, name) is None:  # no ood split (file data with an ood fraction of 0)
                continue
            with_d = name == "test" and getattr(model, "dissipation", None) is not None
            pred, true, ad = _predict(model, getattr(splits, name), dtype, device, dissipation=with_d)
            results.update(acceleration_metrics(pred, true, name))
            if name == "test":
                learned_ad = ad
            if progress is not None:
                progress("states", i + 1, 3)
        names = tuple(n for n in rollout_splits(metrics) if n in splits.rollouts)
        if names:
            results.update(rollout_metrics(model, splits, names, dtype, device, progress))
        if learned_ad is not None:
            q, v, _ = splits.test.to_torch(dtype, device)
            with torch.no_grad():
                learned_d = model.dissipation(q, v)
        results.update(dissipation_metrics(splits, learned_ad, learned_d))
        if progress is not None:
            progress("dissipation", 1, 1)
    results.update({short: results[full] for short, full in ALIASES.items() if full in results})
    out = {k: (v if math.isfinite(v) else math.inf) for k, v in results.items()}
    return {**out, **splits.data_metrics}  # file data: ood_rule (a name, "none" without ood), its count and range excess
