"""Derivatives of an MLP's output with respect to its input, pushed forward layer by layer
(first-order tangents and chosen second-order directions) without autograd: for evaluation,
where a rollout calls the model thousands of times on a few states and autograd's per-call
bookkeeping, not arithmetic, is the cost. Every value equals autograd's up to rounding."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

# σ(z) -> (σ, σ', σ''), each [.., H]; the value is the module's own output, so it matches exactly.
Derivs = Callable[[nn.Module, Tensor], tuple[Tensor, Tensor, Tensor]]


def _silu(_: nn.Module, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = torch.sigmoid(z)
    return nn.functional.silu(z), s * (1 + z * (1 - s)), s * (1 - s) * (2 + z * (1 - 2 * s))


def _softplus(m: nn.Softplus, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Above torch's threshold (βz > 20) softplus is z itself; σ' = sigmoid and σ'' there differ from 1 and 0 by < 3e-9."""
    s = torch.sigmoid(m.beta * z)
    return m(z), s, m.beta * s * (1 - s)


def _tanh(_: nn.Module, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(z)
    d = 1 - t * t
    return t, d, -2 * t * d


def _tanhshrink(_: nn.Module, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    t = torch.tanh(z)
    return z - t, t * t, 2 * t * (1 - t * t)


def _gelu(m: nn.GELU, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if m.approximate != "none":
        raise NotImplementedError("tanh-approximate GELU")
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return m(z), cdf + z * pdf, pdf * (2 - z * z)


def _elu(m: nn.ELU, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    e = m.alpha * torch.exp(torch.clamp(z, max=0))
    positive = z > 0
    return m(z), torch.where(positive, torch.ones_like(z), e), torch.where(positive, torch.zeros_like(z), e)


ACTIVATION_DERIVATIVES: dict[type[nn.Module], Derivs] = {
    nn.SiLU: _silu, nn.Softplus: _softplus, nn.Tanh: _tanh, nn.Tanhshrink: _tanhshrink, nn.GELU: _gelu, nn.ELU: _elu,
}


def supported(net: nn.Sequential) -> bool:
    """Whether `mlp_jet` can push derivatives through every layer of `net`."""
    return all(isinstance(layer, nn.Linear) or type(layer) in ACTIVATION_DERIVATIVES for layer in net)


_PAIR_INDEX: dict[tuple, tuple[Tensor, Tensor]] = {}


def _pair_index(pairs: tuple[tuple[int, int], ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """The pairs' first and second tangents as index tensors on `device`, built once: indexing a
    CUDA tensor with a Python list copies the list over and waits for it on every call."""
    key = (pairs, device)
    if key not in _PAIR_INDEX:
        _PAIR_INDEX[key] = tuple(torch.tensor([p[i] for p in pairs], dtype=torch.long, device=device) for i in (0, 1))
    return _PAIR_INDEX[key]


def mlp_jet(net: nn.Sequential, x: Tensor, tangents: Tensor, pairs: tuple[tuple[int, int], ...] = ()) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y [B, out], ∂y along each tangent [k, B, out], ∂²y along each pair of tangents [m, B, out])
    for input x [B, d] and tangents [k, B, d]; the input's own second derivatives must be zero
    (true for q̇ and for the angle features along pairs that involve a q̇ direction)."""
    k, batch = tangents.shape[0], x.shape[0]
    first, second = _pair_index(pairs, x.device) if pairs else (None, None)
    t, s = tangents, None  # s: second-order terms [m, B, H], None while they are zero
    for layer in net:
        if isinstance(layer, nn.Linear):
            blocks = [x, t.reshape(k * batch, -1)] + ([s.reshape(len(pairs) * batch, -1)] if s is not None else [])
            out = torch.cat(blocks) @ layer.weight.T
            x = out[:batch] + layer.bias if layer.bias is not None else out[:batch]
            t = out[batch : (k + 1) * batch].view(k, batch, -1)
            s = out[(k + 1) * batch :].view(len(pairs), batch, -1) if s is not None else None
        else:
            x, d1, d2 = ACTIVATION_DERIVATIVES[type(layer)](layer, x)
            if pairs:
                curvature = d2 * t[first] * t[second]
                s = curvature if s is None else curvature + d1 * s
            t = d1 * t
    return x, t, s
