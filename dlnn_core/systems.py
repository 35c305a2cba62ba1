"""Damped mechanical systems: closed-form Lagrangian L, Rayleigh dissipation D, energy, and
equations of motion written out by hand (no autodiff), so the Euler–Lagrange code can be
checked against them. All functions take q, q̇ of shape [B, n] and work in any float dtype.

They use tensor methods (and `_columns`, which imports torch when called), so building a system,
as every DataConfig check does, imports no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from .errors import ConfigError, choose

if TYPE_CHECKING:
    from torch import Tensor

StateFn = Callable[["Tensor", "Tensor"], "Tensor"]


@dataclass(frozen=True)
class System:
    """One damped system with its parameters bound; `angles[i]` marks rotational coordinates."""

    name: str
    n: int
    angles: tuple[bool, ...]
    params: Mapping[str, float]
    lagrangian: StateFn  # (q, q̇) -> [B]
    dissipation: StateFn  # (q, q̇) -> [B], Rayleigh D ≥ 0
    energy: StateFn  # (q, q̇) -> [B], T + V
    eom: StateFn  # (q, q̇) -> q̈ [B, n], hand-written
    q_range: tuple[tuple[float, float], ...]  # training box for q, per coordinate
    qdot_range: tuple[tuple[float, float], ...]  # training box for q̇, per coordinate
    solution: Callable[..., tuple[np.ndarray, np.ndarray]] | None = field(default=None, compare=False)

    def power_loss(self, q: Tensor, qdot: Tensor) -> Tensor:
        """−dE/dt = q̇·∂D/∂q̇ (= 2D for Rayleigh dissipation), the rate at which energy is lost."""
        return 2.0 * self.dissipation(q, qdot)


def _columns(*columns: Tensor) -> Tensor:
    """[B] columns side by side: [B, k]."""
    import torch

    return torch.stack(columns, dim=-1)


def _check_params(name: str, defaults: dict[str, float], given: Mapping[str, float]) -> dict[str, float]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"data.params.{unknown[0]}", given[unknown[0]], f"a parameter of {name}: {sorted(defaults)}")
    params = {**defaults, **{k: float(v) for k, v in given.items()}}
    for key, value in params.items():
        if not math.isfinite(value):
            raise ConfigError(f"data.params.{key}", value, "a finite number")
        if key == "rho" and value < 0:
            raise ConfigError("data.params.rho", value, "damping ρ ≥ 0 (negative damping pumps energy in)")
        if key != "rho" and key != "g" and value <= 0:
            raise ConfigError(f"data.params.{key}", value, "a positive number")
    return params


def damped_oscillator(**given: float) -> System:
    """m q̈ = −k q − ρ q̇ (n = 1), with its analytic solution."""
    p = _check_params("damped_oscillator", {"m": 1.0, "k": 1.0, "rho": 0.1}, given)
    m, k, rho = p["m"], p["k"], p["rho"]

    def solution(q0: np.ndarray, v0: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact q(t), q̇(t) for initial states q0, v0 [N] at times t [T] -> [N, T] each."""
        gamma, w0 = rho / (2 * m), math.sqrt(k / m)
        q0, v0, t = q0[:, None], v0[:, None], t[None, :]
        if math.isclose(gamma, w0):
            c = v0 + gamma * q0
            decay = np.exp(-gamma * t)
            return (q0 + c * t) * decay, (c - gamma * (q0 + c * t)) * decay
        s = np.sqrt(complex(gamma**2 - w0**2))
        r1, r2 = -gamma + s, -gamma - s
        c1 = (v0 - r2 * q0) / (r1 - r2)
        c2 = q0 - c1
        e1, e2 = np.exp(r1 * t), np.exp(r2 * t)
        return (c1 * e1 + c2 * e2).real, (c1 * r1 * e1 + c2 * r2 * e2).real

    return System(
        name="damped_oscillator", n=1, angles=(False,), params=p,
        lagrangian=lambda q, v: 0.5 * m * v[:, 0] ** 2 - 0.5 * k * q[:, 0] ** 2,
        dissipation=lambda q, v: 0.5 * rho * v[:, 0] ** 2,
        energy=lambda q, v: 0.5 * m * v[:, 0] ** 2 + 0.5 * k * q[:, 0] ** 2,
        eom=lambda q, v: (-k * q - rho * v) / m,
        q_range=((-2.0, 2.0),), qdot_range=((-2.0, 2.0),), solution=solution,
    )


def damped_pendulum(**given: float) -> System:
    """m l² q̈ = −m g l sin q − ρ q̇ (n = 1, q an angle from the downward vertical)."""
    p = _check_params("damped_pendulum", {"m": 1.0, "l": 1.0, "g": 9.81, "rho": 0.1}, given)
    m, l, g, rho = p["m"], p["l"], p["g"], p["rho"]
    return System(
        name="damped_pendulum", n=1, angles=(True,), params=p,
        lagrangian=lambda q, v: 0.5 * m * l**2 * v[:, 0] ** 2 + m * g * l * q[:, 0].cos(),
        dissipation=lambda q, v: 0.5 * rho * v[:, 0] ** 2,
        energy=lambda q, v: 0.5 * m * l**2 * v[:, 0] ** 2 - m * g * l * q[:, 0].cos(),
        eom=lambda q, v: (-m * g * l * q.sin() - rho * v) / (m * l**2),
        q_range=((-math.pi, math.pi),), qdot_range=((-6.0, 6.0),),
    )


def double_pendulum_eom(q: Tensor, v: Tensor, m1, m2, l1, l2, g, rho) -> Tensor:
    """The damped double pendulum's q̈ = M(q)⁻¹ f(q, q̇); the constants may be floats or tensors
    (benchmarks/physics_ceiling.py fits them)."""
    t1, t2, w1, w2 = q[:, 0], q[:, 1], v[:, 0], v[:, 1]
    c, s = (t1 - t2).cos(), (t1 - t2).sin()
    a11, a12, a22 = (m1 + m2) * l1**2, m2 * l1 * l2 * c, m2 * l2**2
    f1 = -m2 * l1 * l2 * w2**2 * s - (m1 + m2) * g * l1 * t1.sin() - rho * (2 * w1 - w2)
    f2 = m2 * l1 * l2 * w1**2 * s - m2 * g * l2 * t2.sin() - rho * (w2 - w1)
    det = a11 * a22 - a12 * a12
    return _columns((a22 * f1 - a12 * f2) / det, (a11 * f2 - a12 * f1) / det)


def damped_double_pendulum(**given: float) -> System:
    """Two point masses on rigid rods, absolute angles θ1, θ2, joint friction
    D = ½ρ(θ̇1² + (θ̇2 − θ̇1)²); hand-written q̈ = M(q)⁻¹ f(q, q̇)."""
    p = _check_params("damped_double_pendulum", {"m1": 1.0, "m2": 1.0, "l1": 1.0, "l2": 1.0, "g": 9.81, "rho": 0.1}, given)
    m1, m2, l1, l2, g, rho = (p[k] for k in ("m1", "m2", "l1", "l2", "g", "rho"))

    def kinetic(q: Tensor, v: Tensor) -> Tensor:
        w1, w2 = v[:, 0], v[:, 1]
        return 0.5 * (m1 + m2) * l1**2 * w1**2 + 0.5 * m2 * l2**2 * w2**2 + m2 * l1 * l2 * w1 * w2 * (q[:, 0] - q[:, 1]).cos()

    def potential(q: Tensor) -> Tensor:
        return -(m1 + m2) * g * l1 * q[:, 0].cos() - m2 * g * l2 * q[:, 1].cos()

    return System(
        name="damped_double_pendulum", n=2, angles=(True, True), params=p,
        lagrangian=lambda q, v: kinetic(q, v) - potential(q),
        dissipation=lambda q, v: 0.5 * rho * (v[:, 0] ** 2 + (v[:, 1] - v[:, 0]) ** 2),
        energy=lambda q, v: kinetic(q, v) + potential(q),
        eom=lambda q, v: double_pendulum_eom(q, v, m1, m2, l1, l2, g, rho),
        q_range=((-math.pi, math.pi),) * 2, qdot_range=((-4.0, 4.0),) * 2,
    )


def damped_spring_pendulum(**given: float) -> System:
    """A mass on a spring that swings: q = (r, θ), linear drag D = ½ρ|v|² = ½ρ(ṙ² + r²θ̇²).
    The kinetic term r²θ̇² couples q and q̇, so a transposed mixed term shows up at once."""
    p = _check_params("damped_spring_pendulum", {"m": 1.0, "k": 20.0, "l0": 1.0, "g": 9.81, "rho": 0.1}, given)
    m, k, l0, g, rho = (p[key] for key in ("m", "k", "l0", "g", "rho"))

    def kinetic(q: Tensor, v: Tensor) -> Tensor:
        return 0.5 * m * (v[:, 0] ** 2 + q[:, 0] ** 2 * v[:, 1] ** 2)

    def potential(q: Tensor) -> Tensor:
        return 0.5 * k * (q[:, 0] - l0) ** 2 - m * g * q[:, 0] * q[:, 1].cos()

    def eom(q: Tensor, v: Tensor) -> Tensor:
        r, th, rd, thd = q[:, 0], q[:, 1], v[:, 0], v[:, 1]
        rdd = r * thd**2 - (k / m) * (r - l0) + g * th.cos() - (rho / m) * rd
        thdd = -2 * rd * thd / r - (g / r) * th.sin() - (rho / m) * thd
        return _columns(rdd, thdd)

    r_eq = l0 + m * g / k
    return System(
        name="damped_spring_pendulum", n=2, angles=(False, True), params=p,
        lagrangian=lambda q, v: kinetic(q, v) - potential(q),
        dissipation=lambda q, v: 0.5 * rho * (v[:, 0] ** 2 + q[:, 0] ** 2 * v[:, 1] ** 2),
        energy=lambda q, v: kinetic(q, v) + potential(q),
        eom=eom,
        q_range=((0.6 * r_eq, 1.4 * r_eq), (-math.pi / 2, math.pi / 2)), qdot_range=((-1.5, 1.5), (-2.0, 2.0)),
    )


SYSTEMS: dict[str, Callable[..., System]] = {
    "damped_oscillator": damped_oscillator,
    "damped_pendulum": damped_pendulum,
    "damped_double_pendulum": damped_double_pendulum,
    "damped_spring_pendulum": damped_spring_pendulum,
}


DECLARED = "declared"  # the data.system value of a system declared in the spec (declared.py)


def get_system(name: str, **params: float) -> System:
    """Build a registered system; unknown names fail with the list of known ones."""
    return choose(SYSTEMS, name, "data.system")(**params)
