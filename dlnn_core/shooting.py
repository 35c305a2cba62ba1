"""Multiple shooting after training (`shooting_iters` > 0): the training trajectories are cut into
segments of `shooting_segment` steps, each segment's initial (q, q̇) becomes a free parameter, and
L-BFGS fits the model's weights and those states together so that every segment's RK4 rollout
passes through its measured angles (the noisy ones, not the smoothed estimate the epochs train on).
No derivative of the data enters this loss, so it is not bound by the error of the estimated q̈
targets that the epochs fit (benchmarks/results/hard_case_probes.md, sections 5 and 6). With
`shooting_check` > 0 the fit keeps the weights that score best on the validation rollouts, read before
it, every `shooting_check` evaluations and after it: the fit reaches the data's noise floor and then
fits the noise (section 7), and its own loss cannot say when; on two seeds it showed no gain (section 8)."""

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
           observed: torch.Tensor | None = None, score: Callable[[], float] | None = None, check_every: int = 0) -> dict[str, Any]:
    """Fit `model` (in place) and the segments' initial states, which start at the trajectories' q, q̇
    [N, T, n], by L-BFGS to the angles `observed` [N, T, n] (default: q); returns the record of the fit.
    A fit that ends with a non-finite loss or weight leaves the model as it was (the record says so).
    `score` (higher is better), when given with `check_every` > 0, is read before the fit, after every
    `check_every` evaluations and at its end; the model is left with the best-scoring weights."""
    # each segment starts at the smoothed state and is fitted to the measured angles
    q0, v0, _ = segments(q, v, length)
    observed = segments(q if observed is None else observed, v, length)[2]
    q0, v0 = nn.Parameter(q0.clone()), nn.Parameter(v0.clone())
    weights = [p for p in model.parameters() if p.requires_grad]
    before = {k: t.detach().clone() for k, t in model.state_dict().items()}
    opt = torch.optim.LBFGS([*weights, q0, v0], lr=1.0, max_iter=iterations, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")
    losses: list[float] = []
    scores: list[list[float]] = []  # [evaluation, score] at each check
    best: dict[str, Any] = {"score": -math.inf, "evaluation": None, "state": before}
    start = time.perf_counter()

    def check() -> None:
        value = float(score())
        model.train()  # scoring leaves the model in eval mode
        scores.append([len(losses), value])
        if value > best["score"]:  # NaN never is
            best.update(score=value, evaluation=len(losses), state={k: t.detach().clone() for k, t in model.state_dict().items()})

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
        if selecting and len(losses) % check_every == 0:
            check()
        return value

    selecting = score is not None and check_every > 0
    if selecting:
        check()
    model.train()
    opt.step(closure)
    last = float(loss().detach())  # the model's derivatives in q and q̇ need autograd, so no no_grad here
    finite = math.isfinite(last) and all(bool(torch.isfinite(p).all()) for p in weights)
    if finite and selecting:
        check()  # the accepted end point, which the line search may have evaluated before its last trial
    if not finite or selecting:
        model.load_state_dict(best["state"])
    return {"phase": "shooting", "segments": int(q0.shape[0]), "segment_steps": length, "evaluations": len(losses),
            "loss_before": losses[0], "loss_after": last if finite else None, "kept": bool(finite), "time_s": time.perf_counter() - start,
            "selected_evaluation": best["evaluation"] if selecting else None, "scores": scores}
