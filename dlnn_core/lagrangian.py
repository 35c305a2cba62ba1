"""q̈ from a Lagrangian and a Rayleigh dissipation function, by the Euler–Lagrange equation

    (∂²L/∂q̇∂q̇) q̈ = ∂L/∂q − (∂²L/∂q̇∂q) q̇ − ∂D/∂q̇,

where row i of the mixed term is ∂/∂q̇ᵢ of ∂L/∂qⱼ (its transpose is a known bug that one
degree of freedom hides). Every method returns the same three terms; they differ only in how
the second derivatives are taken, and are benchmarked in benchmarks/acceleration.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torch.func import grad, hessian, jvp, vmap

from .errors import ConfigError, choose
from .model_config import DEFAULT_METHOD, METHODS  # noqa: F401 (METHODS: the names DERIVATIVES implements)

ScalarFn = Callable[[Tensor, Tensor], Tensor]  # (q [B, n], q̇ [B, n]) -> [B]


@dataclass(frozen=True)
class Terms:
    """The pieces of the Euler–Lagrange equation for a batch: H q̈ = rhs."""

    hessian_vv: Tensor  # [B, n, n]  ∂²L/∂q̇∂q̇
    rhs: Tensor  # [B, n]  ∂L/∂q − (∂²L/∂q̇∂q) q̇ − ∂D/∂q̇


# (q, q̇) -> (H and ∂L/∂q − (∂²L/∂q̇∂q) q̇, ∂D/∂q̇ or None): the terms with ∂D/∂q̇ kept apart (`inference_terms`)
TermsFn = Callable[[Tensor, Tensor], tuple[Terms, Tensor | None]]


def _batch_grad(fn: ScalarFn) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(∂f/∂q, ∂f/∂q̇) for every sample at once; valid because f's samples are independent."""
    return grad(lambda q, v: fn(q, v).sum(), argnums=(0, 1))


def _derivatives_jvp(lagrangian: ScalarFn, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Forward-over-reverse, whole batch: Jacobian-vector products of ∇L, vmapped over n + 1
    tangents, give the columns of ∂²L/∂q̇² (tangents (0, eₖ)) and the mixed vector (tangent (q̇, 0))."""
    n = q.shape[1]
    grad_l = _batch_grad(lagrangian)
    zeros = torch.zeros_like(q)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)[:, None, :].expand(n, *q.shape)
    tangents_q = torch.cat([v[None], zeros.expand(n, *q.shape)])  # [n + 1, B, n]
    tangents_v = torch.cat([zeros[None], eye])
    (dl_dq, _), (_, d_dl_dv) = vmap(lambda tq, tv: jvp(grad_l, (q, v), (tq, tv)))(tangents_q, tangents_v)
    return dl_dq[0], d_dl_dv[1:].permute(1, 2, 0), d_dl_dv[0]


def _derivatives_autograd(lagrangian: ScalarFn, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Reverse-over-reverse, whole batch: one backward pass per row i of ∇_q̇ L gives both
    ∂²L/∂q̇ᵢ∂q̇ and ∂²L/∂q̇ᵢ∂q."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        q_ = q if q.requires_grad else q.detach().requires_grad_()
        v_ = v if v.requires_grad else v.detach().requires_grad_()
        dl_dq, dl_dv = torch.autograd.grad(lagrangian(q_, v_).sum(), (q_, v_), create_graph=True, materialize_grads=True)
        rows = [
            torch.autograd.grad(dl_dv[:, i].sum(), (q_, v_), create_graph=create_graph, retain_graph=True, materialize_grads=True)
            for i in range(q.shape[1])
        ]
    h_vq = torch.stack([r[0] for r in rows], dim=1)  # [B, i, j] = ∂/∂qⱼ ∂L/∂q̇ᵢ
    h_vv = torch.stack([r[1] for r in rows], dim=1)
    mixed = (h_vq @ v.unsqueeze(-1)).squeeze(-1)
    if not create_graph:
        dl_dq = dl_dq.detach()
    return dl_dq, h_vv, mixed


def _derivatives_hessian(lagrangian: ScalarFn, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The full (2n × 2n) Hessian per sample under vmap, as DLNN practitioners write it."""
    n = q.shape[1]

    def scalar(x: Tensor) -> Tensor:
        return lagrangian(x[None, :n], x[None, n:])[0]

    x = torch.cat([q, v], dim=1)
    g = vmap(grad(scalar))(x)
    h = vmap(hessian(scalar))(x)
    mixed = (h[:, n:, :n] @ v.unsqueeze(-1)).squeeze(-1)  # h[:, n+i, j] = ∂²L/∂q̇ᵢ∂qⱼ
    return g[:, :n], h[:, n:, n:], mixed


def _derivatives_loop(lagrangian: ScalarFn, q: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Naive baseline: reverse-over-reverse autograd one sample at a time."""
    parts = [_derivatives_autograd(lagrangian, q[b : b + 1], v[b : b + 1]) for b in range(q.shape[0])]
    return tuple(torch.cat(p, dim=0) for p in zip(*parts))  # type: ignore[return-value]


DERIVATIVES: dict[str, Callable[[ScalarFn, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]] = {  # one per METHODS
    "jvp": _derivatives_jvp,
    "autograd": _derivatives_autograd,
    "hessian": _derivatives_hessian,
    "loop": _derivatives_loop,
}


def euler_lagrange_terms(
    lagrangian: ScalarFn, dissipation: ScalarFn | None, q: Tensor, qdot: Tensor, *, method: str = DEFAULT_METHOD
) -> Terms:
    """∂²L/∂q̇² and the right-hand side of the dissipative Euler–Lagrange equation."""
    if q.ndim != 2 or q.shape != qdot.shape:
        raise ConfigError("q, qdot", (tuple(q.shape), tuple(qdot.shape)), "two tensors of the same shape [B, n]")
    dl_dq, h_vv, mixed = choose(DERIVATIVES, method, "method")(lagrangian, q, qdot)
    rhs = dl_dq - mixed
    if dissipation is not None:
        rhs = rhs - grad(lambda v: dissipation(q, v).sum())(qdot)
    return Terms(h_vv, rhs)


def inference_terms(lagrangian: ScalarFn, dissipation: ScalarFn | None, q: Tensor, qdot: Tensor) -> tuple[Terms, Tensor | None]:
    """The "autograd" method's terms for evaluation, with ∂D/∂q̇ apart: (H, ∂L/∂q − (∂²L/∂q̇∂q) q̇) and
    ∂D/∂q̇ (None without D). Not differentiable: ∂D/∂q̇ rides along the last second-order backward
    pass (one autograd call fewer than a separate gradient) and no graph outlives the call."""
    n = q.shape[1]
    with torch.enable_grad():
        q_, v_ = q.detach().requires_grad_(), qdot.detach().requires_grad_()
        dl_dq, dl_dv = torch.autograd.grad(lagrangian(q_, v_).sum(), (q_, v_), create_graph=True, materialize_grads=True)
        rows = []
        for i in range(n):
            outputs, inputs = [dl_dv[:, i].sum()], [q_, v_]
            if dissipation is not None and i == n - 1:  # D sees q detached and its own q̇ leaf, so the sums stay apart
                v_d = qdot.detach().requires_grad_()
                outputs.append(dissipation(q.detach(), v_d).sum())
                inputs.append(v_d)
            rows.append(torch.autograd.grad(outputs, inputs, retain_graph=i < n - 1, materialize_grads=True))
    h_vq = torch.stack([r[0] for r in rows], dim=1)  # [B, i, j] = ∂/∂qⱼ ∂L/∂q̇ᵢ
    h_vv = torch.stack([r[1] for r in rows], dim=1)
    rhs = dl_dq.detach() - (h_vq @ qdot.unsqueeze(-1)).squeeze(-1)
    return Terms(h_vv, rhs), (rows[-1][2] if dissipation is not None else None)


def regularized_solve(h: Tensor, rhs: Tensor, rcond: float | None = None) -> Tensor:
    """Solve H x = rhs as Tikhonov-damped least squares, (HᵀH + λI) x = Hᵀ rhs with
    λ = rcond² · ‖H‖²_F / n (+ a tiny floor). For a well-conditioned H this is H⁻¹ rhs to
    within rcond²·cond(H)²; for a singular or indefinite H it stays finite, bounded by
    |rhs| / (2√λ), and differentiable. rcond defaults to √eps of the dtype."""
    n = h.shape[-1]
    info = torch.finfo(h.dtype)
    if rcond is None:
        rcond = info.eps**0.5
    if n == 1:  # one degree of freedom: the same formula elementwise, not a matmul and an LU factorization per sample
        h1 = h[..., 0]
        normal = h1 * h1
        return (h1 * rhs) / (normal + (rcond**2 * normal + info.tiny**0.5))
    ht = h.transpose(-1, -2)
    normal = ht @ h
    scale = normal.diagonal(dim1=-2, dim2=-1).sum(-1) / n  # ‖H‖²_F / n
    lam = rcond**2 * scale + info.tiny**0.5
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    # solve_ex: the LU solve without reading its status back, which would stall a CUDA stream on every call (λ > 0 keeps it regular)
    return torch.linalg.solve_ex(normal + lam[:, None, None] * eye, (ht @ rhs.unsqueeze(-1))).result.squeeze(-1)


def euler_lagrange_acceleration(
    lagrangian: ScalarFn,
    dissipation: ScalarFn | None,
    q: Tensor,
    qdot: Tensor,
    *,
    method: str = DEFAULT_METHOD,
    rcond: float | None = None,
) -> Tensor:
    """q̈ [B, n] for states q, q̇ [B, n]; `lagrangian`, `dissipation` are any differentiable
    (q, q̇) -> [B] callables (networks or closed forms); dissipation=None gives a plain LNN.
    Differentiable with respect to the callables' parameters and the states."""
    terms = euler_lagrange_terms(lagrangian, dissipation, q, qdot, method=method)
    return regularized_solve(terms.hessian_vv, terms.rhs, rcond)


def hessian_condition_number(lagrangian: ScalarFn, q: Tensor, qdot: Tensor, *, method: str = DEFAULT_METHOD) -> Tensor:
    """cond₂(∂²L/∂q̇²) = σ_max/σ_min per sample [B] (inf when singular): large values mark states
    where q̈ is ill-determined and the regularization of the solve takes over."""
    with torch.no_grad():
        s = torch.linalg.svdvals(euler_lagrange_terms(lagrangian, None, q, qdot, method=method).hessian_vv)
        return torch.where(s[:, -1] > 0, s[:, 0] / s[:, -1], torch.full_like(s[:, 0], float("inf")))
