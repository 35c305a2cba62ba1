"""Fixed-step integration of any dynamics (q, q̇) -> q̈: a trained model or a system's equations
of motion. Differentiable, so it also serves multi-step rollout losses. RK4 everywhere the service
measures a rollout; the rollout loss may take a cheaper step (STEPS): midpoint (2 evaluations of
q̈ per step) or semi-implicit Euler (1), against RK4's 4, or integrate the model's q̈ at the observed
states by the trapezoid rule ("trapezoid": one batched evaluation, no rollout)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

AccelFn = Callable[[Tensor, Tensor], Tensor]


def rk4_step(accel: AccelFn, q: Tensor, v: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """One classical Runge–Kutta step of the first-order system (q̇ = v, v̇ = accel(q, v))."""
    a1 = accel(q, v)
    q2, v2 = q + 0.5 * dt * v, v + 0.5 * dt * a1
    a2 = accel(q2, v2)
    q3, v3 = q + 0.5 * dt * v2, v + 0.5 * dt * a2
    a3 = accel(q3, v3)
    q4, v4 = q + dt * v3, v + dt * a3
    a4 = accel(q4, v4)
    return q + dt / 6 * (v + 2 * v2 + 2 * v3 + v4), v + dt / 6 * (a1 + 2 * a2 + 2 * a3 + a4)


def midpoint_step(accel: AccelFn, q: Tensor, v: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """One explicit midpoint (second-order Runge–Kutta) step."""
    a1 = accel(q, v)
    qm, vm = q + 0.5 * dt * v, v + 0.5 * dt * a1
    return q + dt * vm, v + dt * accel(qm, vm)


def euler_step(accel: AccelFn, q: Tensor, v: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    """One semi-implicit (symplectic) Euler step: the velocity first, then the position with it."""
    v = v + dt * accel(q, v)
    return q + dt * v, v


Step = Callable[[AccelFn, Tensor, Tensor, float], tuple[Tensor, Tensor]]
STEPS: dict[str, Step] = {"rk4": rk4_step, "midpoint": midpoint_step, "euler": euler_step}  # config.INTEGRATORS but "trapezoid"


def rollout(accel: AccelFn, q0: Tensor, qdot0: Tensor, dt: float, steps: int, substeps: int = 1,
            step: Step = rk4_step) -> tuple[Tensor, Tensor]:
    """States at t = 0, dt, …, steps·dt from [B, n] initial states -> q, q̇ of shape [B, steps + 1, n].
    Each output step takes `substeps` steps of dt / substeps of the integrator `step`."""
    qs, vs = [q0], [qdot0]
    q, v, h = q0, qdot0, dt / substeps
    for _ in range(steps):
        for _ in range(substeps):
            q, v = step(accel, q, v, h)
        qs.append(q)
        vs.append(v)
    return torch.stack(qs, dim=1), torch.stack(vs, dim=1)


def rollout_loss(accel: AccelFn, q0: Tensor, v0: Tensor, future_q: Tensor, future_v: Tensor, dt: float, angles: tuple[bool, ...],
                 integrator: str = "rk4") -> Tensor:
    """Multi-step loss: integrate k steps (of `integrator`, a STEPS name) from observed states [B, n]
    and compare with the observed next k states [B, k, n] (angles modulo 2π); differentiable through
    every step. "trapezoid" integrates instead the model's q̈ at the observed states themselves
    (`trapezoid_loss`)."""
    from .metrics import angle_difference

    if integrator == "trapezoid":
        return trapezoid_loss(accel, q0, v0, future_q, future_v, dt)
    q, v = rollout(accel, q0, v0, dt, future_q.shape[1], step=STEPS[integrator])
    dq = angle_difference(q[:, 1:], future_q, angles)
    return dq.square().mean() + (v[:, 1:] - future_v).square().mean()


def trapezoid_loss(accel: AccelFn, q0: Tensor, v0: Tensor, future_q: Tensor, future_v: Tensor, dt: float) -> Tensor:
    """Integral matching: q̈ of every observed state of the windows in one batch, integrated by the
    trapezoid rule from q̇₀, against the observed q̇ of the next k states. No state is integrated, so
    the cost is one evaluation of the model (on B·(k + 1) states); noisy q̇ is differenced, not q̈."""
    b, k, n = future_q.shape
    q = torch.cat([q0[:, None], future_q], dim=1)
    v = torch.cat([v0[:, None], future_v], dim=1)
    a = accel(q.reshape(-1, n), v.reshape(-1, n)).reshape(b, k + 1, n)
    v_pred = v0[:, None] + torch.cumsum(0.5 * dt * (a[:, 1:] + a[:, :-1]), dim=1)
    return (v_pred - future_v).square().mean()
