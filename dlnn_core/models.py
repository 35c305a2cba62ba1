"""Models that map a state (q, q̇) to q̈: DLNN (L and D networks), LNN (L only) and a plain MLP
baseline. Two forms of L and D: `free` (an MLP outputs the scalar, as the published DLNN does)
and `structured` (L = ½q̇ᵀM(q)q̇ − V(q), D = ½q̇ᵀC(q)q̇ with M = LLᵀ + εI and C = L_cL_cᵀ from
Cholesky-factor networks, as in Deep Lagrangian Networks), which trains far better."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import jets
from .activations import get_activation
from .errors import choose
from .lagrangian import DERIVATIVES, Terms, TermsFn, euler_lagrange_acceleration
from .model_config import DEFAULT_METHOD, ModelConfig
from .systems import System


def _init_lnn(linears: list[nn.Linear]) -> None:
    """Cranmer et al. 2020 (LNN), tuned so outputs and their gradients start near unit scale:
    zero biases, normal weights with std = c/√width, c = 2.2 (first), 0.58·i (i-th hidden), width (last)."""
    for i, layer in enumerate(linears):
        width = max(layer.weight.shape)
        scale = 2.2 if i == 0 else (width if i == len(linears) - 1 else 0.58 * i)
        nn.init.normal_(layer.weight, std=scale / math.sqrt(width))
        nn.init.zeros_(layer.bias)


def _init_orthogonal(linears: list[nn.Linear]) -> None:
    """Orthogonal weights and zero biases, as the published DLNN code does."""
    for layer in linears:
        nn.init.orthogonal_(layer.weight)
        nn.init.zeros_(layer.bias)


INITS = {"default": lambda linears: None, "lnn": _init_lnn, "orthogonal": _init_orthogonal}  # model_config.INIT_CHOICES but "auto"


def mlp(in_dim: int, hidden: int, depth: int, out_dim: int, activation: str, for_lagrangian: bool = True, init: str = "default") -> nn.Sequential:
    """depth hidden layers of width `hidden`, then a linear output, initialized by INITS[init]."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), get_activation(activation, for_lagrangian=for_lagrangian)]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    INITS[init]([layer for layer in layers if isinstance(layer, nn.Linear)])
    return nn.Sequential(*layers)


class StateFeatures(nn.Module):
    """(q, q̇) -> network input: angles become (sin, cos) so L is periodic in them. Which
    coordinates are angles is fixed at build time, so no call reads a mask back from the device."""

    def __init__(self, angles: tuple[bool, ...], use_angle_features: bool):
        super().__init__()
        flags = [bool(a) and use_angle_features for a in angles]
        self.register_buffer("angle_index", torch.tensor([i for i, a in enumerate(flags) if a], dtype=torch.long), persistent=False)
        self.register_buffer("other_index", torch.tensor([i for i, a in enumerate(flags) if not a], dtype=torch.long), persistent=False)
        self.any_angle, self.all_angles = any(flags), all(flags)
        self.q_dim = len(angles) + sum(flags)

    def q_features(self, q: Tensor) -> Tensor:
        if not self.any_angle:
            return q
        if self.all_angles:
            return torch.cat([torch.sin(q), torch.cos(q)], dim=1)
        a = q[:, self.angle_index]
        return torch.cat([q[:, self.other_index], torch.sin(a), torch.cos(a)], dim=1)

    def q_jet(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """(q_features(q), ∂ q_features / ∂qⱼ for every j [n, B, q_dim]), sharing one sin and one cos."""
        n, batch = q.shape[1], q.shape[0]
        eye = torch.eye(n, dtype=q.dtype, device=q.device)[:, None, :]  # [j, 1, n]
        if not self.any_angle:
            return q, eye.expand(n, batch, n)
        a = q if self.all_angles else q[:, self.angle_index]
        sin, cos = torch.sin(a), torch.cos(a)
        e_a = eye if self.all_angles else eye[:, :, self.angle_index]
        if self.all_angles:
            return torch.cat([sin, cos], dim=1), torch.cat([e_a * cos, e_a * sin.neg()], dim=2)
        other = eye[:, :, self.other_index].expand(n, batch, -1)
        return torch.cat([q[:, self.other_index], sin, cos], dim=1), torch.cat([other, e_a * cos, e_a * sin.neg()], dim=2)


class FreeLagrangian(nn.Module):
    """The published form: MLP(features) -> L and (shared trunk or a second MLP) -> D."""

    def __init__(self, cfg: ModelConfig, features: StateFeatures, n: int, with_dissipation: bool):
        super().__init__()
        self.features, self.nonneg, self.n = features, cfg.nonneg_dissipation, n
        in_dim = features.q_dim + n
        self.shared = cfg.shared_trunk and with_dissipation
        outs = 2 if self.shared else 1
        self.l_net = mlp(in_dim, cfg.hidden, cfg.depth, outs, cfg.activation, init=cfg.init_scheme)
        self.d_net = mlp(in_dim, cfg.hidden, cfg.depth, 1, cfg.activation, init=cfg.init_scheme) if with_dissipation and not self.shared else None
        self.with_dissipation = with_dissipation

    def _x(self, q: Tensor, v: Tensor) -> Tensor:
        return torch.cat([self.features.q_features(q), v], dim=1)

    def lagrangian(self, q: Tensor, v: Tensor) -> Tensor:
        return self.l_net(self._x(q, v))[:, 0]

    def dissipation(self, q: Tensor, v: Tensor) -> Tensor:
        raw = self.l_net(self._x(q, v))[:, 1] if self.shared else self.d_net(self._x(q, v))[:, 0]
        return nn.functional.softplus(raw) if self.nonneg else raw

    def inference(self) -> TermsFn | None:
        """`lagrangian.inference_terms` for the current weights, by `jets`: tangents along each qⱼ and
        q̇ᵢ and second derivatives along the pairs (q̇ᵢ, qⱼ) and (q̇ᵢ, q̇ₖ) pushed through the networks
        at once. None when a layer has no derivative rule."""
        l_net = jets.stack([self.l_net])
        d_net = jets.stack([self.d_net]) if self.d_net is not None else None
        if l_net is None or (self.d_net is not None and d_net is None):
            return None
        n, q_dim = self.n, self.features.q_dim

        def terms(q: Tensor, v: Tensor) -> tuple[Terms, Tensor | None]:
            batch = q.shape[0]
            features, q_tangents = self.features.q_jet(q)
            tangents = q.new_zeros(2 * n, batch, q_dim + n)  # along q₁..qₙ, then q̇₁..q̇ₙ
            tangents[:n, :, :q_dim] = q_tangents
            tangents[n:, :, q_dim:].diagonal(dim1=0, dim2=2).fill_(1)
            x = torch.cat([features, v], dim=1)
            y, ty, sy = jets.jet(l_net, x, tangents, curved=n)  # sy[0, i, j, b, 0] = ∂²L/∂q̇ᵢ∂(q, q̇)ⱼ
            second = sy[0, ..., 0].permute(2, 0, 1)  # [B, i, j]
            h_vq, h_vv = second[..., :n], second[..., n:]
            rhs = ty[0, :n, :, 0].T - (h_vq * v.unsqueeze(1)).sum(-1)
            if not self.with_dissipation:
                return Terms(h_vv, rhs), None
            if self.shared:
                raw, t_raw = y[0, :, 1], ty[0, n:, :, 1]
            else:
                raw, t_raw, _ = jets.jet(d_net, x, tangents[n:])
                raw, t_raw = raw[0, :, 0], t_raw[0, :, :, 0]
            return Terms(h_vv, rhs), (softplus_tangent(raw, t_raw) if self.nonneg else t_raw).T

        return terms


def _lower_triangular(entries: Tensor, n: int, diag_shift: float) -> Tensor:
    """[B, n(n+1)/2] -> lower-triangular [B, n, n] with a positive diagonal (softplus); entries
    fill the rows of the lower triangle in order (torch.tril_indices)."""
    if n == 1:
        return nn.functional.softplus(entries + diag_shift).unsqueeze(-1)
    rows, cols, _ = _TRIL[n, entries.device]
    low = entries.new_zeros(entries.shape[0], n, n)
    low = low.index_put((torch.arange(entries.shape[0], device=entries.device)[:, None], rows[None], cols[None]), entries)
    diag = nn.functional.softplus(low.diagonal(dim1=-2, dim2=-1) + diag_shift)
    return low.tril(-1) + torch.diag_embed(diag)


class _TrilIndices(dict):
    """(n, device) -> torch.tril_indices(n, n) there and the positions of the diagonal among them,
    built once instead of on every call (and as normal tensors, even when first asked for under
    inference mode, so that training can save them for backward)."""

    def __missing__(self, key: tuple[int, torch.device]) -> tuple[Tensor, Tensor, Tensor]:
        with torch.inference_mode(False):
            rows, cols = torch.tril_indices(key[0], key[0], device=key[1])
            self[key] = (rows, cols, (rows == cols).nonzero().squeeze(1))
        return self[key]


_TRIL = _TrilIndices()


def softplus_tangent(x: Tensor, tangent: Tensor) -> Tensor:
    """softplus'(x) · tangent, with torch's own derivative (the identity above its threshold of 20), in one operation."""
    return torch.ops.aten.softplus_backward(tangent, x, 1.0, 20.0)


def _lower_triangular_tangent(entries: Tensor, tangents: Tensor, n: int, diag_shift: float) -> Tensor:
    """Tangents [k, B, n(n+1)/2] of `_lower_triangular`'s entries -> its tangents [k, B, n, n]."""
    k, batch = tangents.shape[:2]
    if n == 1:
        return softplus_tangent(entries + diag_shift, tangents).unsqueeze(-1)
    rows, cols, diagonal = _TRIL[n, entries.device]
    low = tangents.new_zeros(k * batch, n, n)
    low = low.index_put((torch.arange(k * batch, device=entries.device)[:, None], rows[None], cols[None]), tangents.reshape(k * batch, -1))
    low = low.view(k, batch, n, n)
    return low.tril(-1) + torch.diag_embed(softplus_tangent(entries.index_select(-1, diagonal) + diag_shift, low.diagonal(dim1=-2, dim2=-1)))


class StructuredLagrangian(nn.Module):
    """L = ½q̇ᵀM(q)q̇ − V(q), D = ½q̇ᵀC(q)q̇, M = LLᵀ + εI ≻ 0 and C = L_cL_cᵀ ⪰ 0 by construction."""

    def __init__(self, cfg: ModelConfig, features: StateFeatures, n: int, with_dissipation: bool):
        super().__init__()
        self.features, self.n, self.eps = features, n, cfg.mass_eps
        self.tri = n * (n + 1) // 2
        sizes = [self.tri, 1] + ([self.tri] if with_dissipation else [])
        in_dim = features.q_dim
        if cfg.shared_trunk:
            self.nets = nn.ModuleList([mlp(in_dim, cfg.hidden, cfg.depth, sum(sizes), cfg.activation, init=cfg.init_scheme)])
        else:
            self.nets = nn.ModuleList([mlp(in_dim, cfg.hidden, cfg.depth, s, cfg.activation, init=cfg.init_scheme) for s in sizes])
        self.sizes = sizes
        self.with_dissipation = with_dissipation
        # Start near M ≈ I (softplus(x + shift) ≈ 1 at x ≈ 0), so the first solves are benign.
        self.diag_shift = math.log(math.e - 1.0)

    def _outputs(self, q: Tensor, which: tuple[int, ...]) -> list[Tensor]:
        """The network outputs `which` (0: mass factor, 1: V, 2: damping factor); separate nets run only when asked for."""
        x = self.features.q_features(q)
        if len(self.nets) == 1:
            parts = torch.split(self.nets[0](x), self.sizes, dim=1)
            return [parts[i] for i in which]
        return [self.nets[i](x) for i in which]

    @staticmethod
    def _quadratic(factor: Tensor, v: Tensor) -> Tensor:
        """½ q̇ᵀ (F Fᵀ) q̇ = ½ |Fᵀ q̇|²."""
        return 0.5 * ((factor.transpose(-1, -2) @ v.unsqueeze(-1)).squeeze(-1) ** 2).sum(-1)

    def lagrangian(self, q: Tensor, v: Tensor) -> Tensor:
        mass, potential = self._outputs(q, (0, 1))
        factor = _lower_triangular(mass, self.n, self.diag_shift)
        return self._quadratic(factor, v) + 0.5 * self.eps * (v**2).sum(-1) - potential[:, 0]

    def dissipation(self, q: Tensor, v: Tensor) -> Tensor:
        factor = _lower_triangular(self._outputs(q, (2,))[0], self.n, 0.0)
        return self._quadratic(factor, v)

    def inference(self) -> TermsFn | None:
        """`lagrangian.inference_terms` in closed form for the current weights: ∂²L/∂q̇² = M, ∂L/∂qⱼ =
        ½q̇ᵀ∂ⱼM q̇ − ∂ⱼV, (∂²L/∂q̇∂q) q̇ = Σⱼ ∂ⱼM q̇ q̇ⱼ and ∂D/∂q̇ = C q̇, the ∂ⱼ pushed through the
        networks, stacked into one, by `jets`. None when a layer has no derivative rule."""
        nets = jets.stack(list(self.nets))
        if nets is None:
            return None
        n, eps, shift = self.n, self.eps, self.diag_shift
        eye = torch.eye(n, dtype=nets.weights[0].dtype, device=nets.weights[0].device)
        if len(self.nets) == 1:
            pick = lambda y: torch.split(y[0], self.sizes, dim=-1)  # noqa: E731
        else:
            pick = lambda y: [y[g, ..., : self.sizes[g]] for g in range(len(self.sizes))]  # noqa: E731

        def terms(q: Tensor, v: Tensor) -> tuple[Terms, Tensor | None]:
            y, ty, _ = jets.jet(nets, *self.features.q_jet(q))
            outs, touts = pick(y), pick(ty)
            if n == 1:  # every matrix is 1 × 1: elementwise, a dozen operations instead of four dozen
                return _terms_1d(outs, touts, v, eps, shift)
            factor = _lower_triangular(outs[0], n, shift)  # F, M = FFᵀ + εI
            d_factor = _lower_triangular_tangent(outs[0], touts[0], n, shift)  # [j, B, n, n] = ∂F/∂qⱼ
            v_col = v.unsqueeze(-1)
            u = factor.mT @ v_col  # Fᵀq̇ [B, n, 1]
            dl_dq = ((d_factor.mT @ v_col) * u).sum((-2, -1)).T - touts[1][:, :, 0].T  # ½q̇ᵀ∂ⱼM q̇ = (Fᵀq̇)·(∂ⱼFᵀq̇)
            f_dot = torch.einsum("jbik,bj->bik", d_factor, v)  # Ḟ = Σⱼ ∂ⱼF q̇ⱼ
            mixed = (f_dot @ u + factor @ (f_dot.mT @ v_col)).squeeze(-1)  # Ṁ q̇ with Ṁ = ḞFᵀ + FḞᵀ
            mass = torch.baddbmm(eye, factor, factor.mT, beta=eps)
            d_grad = None
            if self.with_dissipation:
                c = _lower_triangular(outs[2], n, 0.0)
                d_grad = (c @ (c.mT @ v_col)).squeeze(-1)
            return Terms(mass, dl_dq - mixed), d_grad

        return terms


def _terms_1d(outs: list[Tensor], touts: list[Tensor], v: Tensor, eps: float, shift: float) -> tuple[Terms, Tensor | None]:
    """`StructuredLagrangian`'s terms for one degree of freedom: M = f² + ε with f = softplus(a + shift),
    ∂L/∂q − (∂²L/∂q̇∂q) q̇ = ½q̇²∂M − ∂V − q̇²∂M = −f ∂f q̇² − ∂V, and ∂D/∂q̇ = c² q̇."""
    pre = outs[0] + shift
    f = nn.functional.softplus(pre)
    d_f = softplus_tangent(pre, touts[0][0])
    rhs = (f * v).mul_(d_f).mul_(v).neg_().sub_(touts[1][0])
    mass = (f * f).add_(eps).unsqueeze(-1)
    if len(outs) < 3:
        return Terms(mass, rhs), None
    c = nn.functional.softplus(outs[2])
    return Terms(mass, rhs), (c * c).mul_(v)


class LagrangianModel(nn.Module):
    """DLNN or LNN: q̈ from the Euler–Lagrange equation of a learned L (and D)."""

    def __init__(self, cfg: ModelConfig, system: System, method: str = DEFAULT_METHOD):
        super().__init__()
        choose(DERIVATIVES, method, "method")
        features = StateFeatures(system.angles, cfg.angle_features)
        form = FreeLagrangian if cfg.form == "free" else StructuredLagrangian
        self.body = form(cfg, features, system.n, with_dissipation=cfg.kind == "dlnn")
        self.method = method

    def lagrangian(self, q: Tensor, v: Tensor) -> Tensor:
        return self.body.lagrangian(q, v)

    @property
    def dissipation(self):
        """D(q, q̇) callable, or None for an LNN."""
        return self.body.dissipation if self.body.with_dissipation else None

    def forward(self, q: Tensor, v: Tensor) -> Tensor:
        return euler_lagrange_acceleration(self.lagrangian, self.dissipation, q, v, method=self.method)

    def inference(self) -> TermsFn | None:
        """(∂²L/∂q̇², ∂L/∂q − (∂²L/∂q̇∂q) q̇) and ∂D/∂q̇ (None for an LNN) as a function of the states,
        without autograd, for evaluation: the form's own derivatives pushed through its layers, built
        once for the current weights (rebuild it after they change). None when a layer has no
        derivative rule (`jets.RULES`)."""
        return self.body.inference()


class MLPModel(nn.Module):
    """Baseline without physics: MLP(features(q), q̇) -> q̈."""

    lagrangian = None
    dissipation = None

    def __init__(self, cfg: ModelConfig, system: System, method: str = DEFAULT_METHOD):
        super().__init__()
        self.features = StateFeatures(system.angles, cfg.angle_features)
        self.net = mlp(self.features.q_dim + system.n, cfg.hidden, cfg.depth, system.n, cfg.activation, for_lagrangian=False, init=cfg.init_scheme)

    def forward(self, q: Tensor, v: Tensor) -> Tensor:
        return self.net(torch.cat([self.features.q_features(q), v], dim=1))


def build_model(cfg: ModelConfig, system: System, method: str = DEFAULT_METHOD) -> nn.Module:
    """The module for `cfg` on `system`; module(q, q̇) -> q̈ [B, n]."""
    return (MLPModel if cfg.kind == "mlp" else LagrangianModel)(cfg, system, method)
