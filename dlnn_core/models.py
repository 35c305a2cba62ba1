"""Models that map a state (q, q̇) to q̈: DLNN (L and D networks), LNN (L only) and a plain MLP
baseline. Two forms of L and D: `free` (an MLP outputs the scalar, as the published DLNN does)
and `structured` (L = ½q̇ᵀM(q)q̇ − V(q), D = ½q̇ᵀC(q)q̇ with M = LLᵀ + εI and C = L_cL_cᵀ from
Cholesky-factor networks, as in Deep Lagrangian Networks), which trains far better."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .activations import get_activation
from .errors import ConfigError, choose
from .lagrangian import DEFAULT_METHOD, METHODS, euler_lagrange_acceleration
from .systems import System

MODEL_KINDS = ("dlnn", "lnn", "mlp")
MODEL_FORMS = ("free", "structured")


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


INITS = {"default": lambda linears: None, "lnn": _init_lnn, "orthogonal": _init_orthogonal}
INIT_CHOICES = ("auto", *INITS)  # auto: orthogonal for the free form, PyTorch's default otherwise


@dataclass(frozen=True)
class ModelConfig:
    """What network to build; every field is searchable from a study spec."""

    kind: str = "dlnn"  # dlnn: L and D; lnn: L only (conserves energy); mlp: state -> q̈ directly
    form: str = "free"  # free: MLP outputs L (and D); structured: Cholesky mass/damping matrices
    hidden: int = 128
    depth: int = 2  # hidden layers
    activation: str = "softplus"
    shared_trunk: bool = False  # one MLP with outputs for L and D (the published DLNN) vs two MLPs
    nonneg_dissipation: bool = True  # free form: D = softplus(net) ≥ 0 instead of a raw output
    angle_features: bool = True  # feed sin/cos of rotational coordinates instead of the angle
    mass_eps: float = 1e-3  # structured form: M = LLᵀ + εI keeps ∂²L/∂q̇² invertible
    init: str = "auto"  # auto, default (PyTorch), lnn (Cranmer et al. unit-scale), orthogonal (published DLNN)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigError("model.kind", self.kind, MODEL_KINDS)
        if self.form not in MODEL_FORMS:
            raise ConfigError("model.form", self.form, MODEL_FORMS)
        for name in ("hidden", "depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name}", value, "a positive integer")
        if self.init not in INIT_CHOICES:
            raise ConfigError("model.init", self.init, INIT_CHOICES)
        if not (isinstance(self.mass_eps, (int, float)) and self.mass_eps > 0):
            raise ConfigError("model.mass_eps", self.mass_eps, "a positive number")
        get_activation(self.activation, for_lagrangian=self.kind != "mlp")

    @property
    def init_scheme(self) -> str:
        """The INITS entry to use. "auto" picks orthogonal for a free-form L and PyTorch's default
        otherwise. Measured (damped pendulum, Adam 1e-3, swish 128, 30 epochs): the free form reaches
        val_rel_mse 1.6e-4 from orthogonal but stalls near 1 from PyTorch's (1.08) or the LNN paper's
        init (1.49); the structured form does better from PyTorch's (1.9e-6 against 1.9e-5). That was
        one seed: over 3 seeds and 60 epochs benchmarks/science.py sees the free form at 0.54 ± 0.54."""
        if self.init != "auto":
            return self.init
        return "orthogonal" if self.kind != "mlp" and self.form == "free" else "default"

    def to_dict(self) -> dict:
        return asdict(self)


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
    """(q, q̇) -> network input: angles become (sin, cos) so L is periodic in them."""

    def __init__(self, angles: tuple[bool, ...], use_angle_features: bool):
        super().__init__()
        mask = torch.tensor(angles if use_angle_features else [False] * len(angles))
        self.register_buffer("angle_mask", mask, persistent=False)
        self.q_dim = len(angles) + int(mask.sum())

    def q_features(self, q: Tensor) -> Tensor:
        if not bool(self.angle_mask.any()):
            return q
        a = q[:, self.angle_mask]
        return torch.cat([q[:, ~self.angle_mask], torch.sin(a), torch.cos(a)], dim=1)


class FreeLagrangian(nn.Module):
    """The published form: MLP(features) -> L and (shared trunk or a second MLP) -> D."""

    def __init__(self, cfg: ModelConfig, features: StateFeatures, n: int, with_dissipation: bool):
        super().__init__()
        self.features, self.nonneg = features, cfg.nonneg_dissipation
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


def _lower_triangular(entries: Tensor, n: int, diag_shift: float) -> Tensor:
    """[B, n(n+1)/2] -> lower-triangular [B, n, n] with a positive diagonal (softplus)."""
    rows, cols = torch.tril_indices(n, n, device=entries.device)
    low = entries.new_zeros(entries.shape[0], n, n)
    low = low.index_put((torch.arange(entries.shape[0], device=entries.device)[:, None], rows[None], cols[None]), entries)
    diag = nn.functional.softplus(low.diagonal(dim1=-2, dim2=-1) + diag_shift)
    return low.tril(-1) + torch.diag_embed(diag)


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

    def _outputs(self, q: Tensor) -> list[Tensor]:
        x = self.features.q_features(q)
        if len(self.nets) == 1:
            return list(torch.split(self.nets[0](x), self.sizes, dim=1))
        return [net(x) for net in self.nets]

    @staticmethod
    def _quadratic(factor: Tensor, v: Tensor) -> Tensor:
        """½ q̇ᵀ (F Fᵀ) q̇ = ½ |Fᵀ q̇|²."""
        return 0.5 * ((factor.transpose(-1, -2) @ v.unsqueeze(-1)).squeeze(-1) ** 2).sum(-1)

    def lagrangian(self, q: Tensor, v: Tensor) -> Tensor:
        out = self._outputs(q)
        factor = _lower_triangular(out[0], self.n, self.diag_shift)
        return self._quadratic(factor, v) + 0.5 * self.eps * (v**2).sum(-1) - out[1][:, 0]

    def dissipation(self, q: Tensor, v: Tensor) -> Tensor:
        factor = _lower_triangular(self._outputs(q)[2], self.n, 0.0)
        return self._quadratic(factor, v)


class LagrangianModel(nn.Module):
    """DLNN or LNN: q̈ from the Euler–Lagrange equation of a learned L (and D)."""

    def __init__(self, cfg: ModelConfig, system: System, method: str = DEFAULT_METHOD):
        super().__init__()
        choose(METHODS, method, "method")
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
