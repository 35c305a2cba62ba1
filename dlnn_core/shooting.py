"""Multiple shooting after training (`shooting_iters` > 0): the training trajectories are cut into
segments of `shooting_segment` steps, each segment's initial (q, q̇) becomes a free parameter, and
L-BFGS fits the model's weights and those states together so that every segment's RK4 rollout
passes through its measured angles (the noisy ones, not the smoothed estimate the epochs train on).
No derivative of the data enters this loss, so it is not bound by the error of the estimated q̈
targets that the epochs fit (benchmarks/results/hard_case_probes.md, sections 5 and 6)."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import nn

from .metrics import angle_difference
from .rollout import rollout


def segments(q: torch.Tensor, v: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trajectories q, q̇ [N, T, n] -> (first q [S, n], first q̇ [S, n], observed q [S, length + 1, n]) of
    the consecutive, non-overlapping segments that fit in each trajectory."""
    n_traj, steps, n = q.shape
    starts = torch.arange(0, steps - length, length, device=q.device)
    idx = starts[:, None] + torch.arange(length + 1, device=q.device)[None]
    return q[:, starts].reshape(-1, n), v[:, starts].reshape(-1, n), q[:, idx].reshape(-1, length + 1, n)


def polish(model: nn.Module, q: torch.Tensor, v: torch.Tensor, dt: float, length: int, iterations: int,
           angles: tuple[bool, ...], progress: Callable[[dict[str, Any]], None] | None = None,
           observed: torch.Tensor | None = None) -> dict[str, Any]:
    """Fit `model` (in place) and the segments' initial states, which start at the trajectories' q, q̇
    [N, T, n], by L-BFGS to the angles `observed` [N, T, n] (default: q); returns the record of the fit.
    A fit that ends with a non-finite loss or weight leaves the model as it was (the record says so)."""
    # each segment starts at the smoothed state and is fitted to the measured angles
    q0, v0, _ = segments(q, v, length)
    observed = segments(q if observed is None else observed, v, length)[2]
    q0, v0 = nn.Parameter(q0.clone()), nn.Parameter(v0.clone())
    weights = [p for p in model.parameters() if p.requires_grad]
    before = {k: t.detach().clone() for k, t in model.state_dict().items()}
    opt = torch.optim.LBFGS([*weights, q0, v0], lr=1.0, max_iter=iterations, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    losses: list[float] = []
    start = time.perf_counter()

    def loss() -> torch.Tensor:
        pred, _ = rollout(model, q0, v0, dt, length)
        return angle_difference(pred, observed, angles).square().mean()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        losses.append(float(value.detach()))  # one host read per evaluation: L-BFGS reads it anyway
        if progress is not None:
            progress({"phase": "shooting", "done": min(len(losses), iterations), "total": iterations})
        return value

    model.train()
    opt.step(closure)
    last = float(loss().detach())  # the model's derivatives in q and q̇ need autograd, so no no_grad here
    finite = math.isfinite(last) and all(bool(torch.isfinite(p).all()) for p in weights)
    if not finite:
        model.load_state_dict(before)
    return {"phase": "shooting", "segments": int(q0.shape[0]), "segment_steps": length, "evaluations": len(losses),
            "loss_before": losses[0], "loss_after": last if finite else None, "kept": bool(finite), "time_s": time.perf_counter() - start}
