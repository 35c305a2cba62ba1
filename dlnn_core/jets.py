"""Derivatives of MLPs' outputs with respect to their input, pushed forward layer by layer
(first-order tangents and chosen second-order directions) without autograd, for evaluation: a
rollout calls the model thousands of times on a few states, and there the number of tensor
operations, not arithmetic, is the cost. So networks of one shape that read the same input are
stacked once (`stack`) and pushed through together, one batched matmul per layer, with values,
tangents and second-order terms as rows of one tensor. Every value equals autograd's up to rounding."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

# (module, z, second) -> (σ(z), σ'(z), σ''(z) or None when second is False), each shaped like z.
Rule = Callable[[nn.Module, Tensor, bool], tuple[Tensor, Tensor, Tensor | None]]


def _silu(_: nn.Module, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """With s = sigmoid(z) and y = zs: σ' = s (1 + z − y), σ'' = s (1 − s)(2 + z − 2y)."""
    s = torch.sigmoid(z)
    y = z * s
    d1 = torch.addcmul(s, s, z - y)
    return y, d1, (torch.sub(z, y, alpha=2).add_(2).mul_(torch.addcmul(s, s, s, value=-1)) if second else None)


def _softplus(m: nn.Softplus, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Above torch's threshold (βz > 20) softplus is z itself; σ' = sigmoid and σ'' there differ from 1 and 0 by < 3e-9."""
    s = torch.sigmoid(m.beta * z)
    return m(z), s, ((1 - s).mul_(s).mul_(m.beta) if second else None)


def _tanh(_: nn.Module, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    t = torch.tanh(z)
    d = (t * t).neg_().add_(1)
    return t, d, ((t * d).mul_(-2) if second else None)


def _tanhshrink(_: nn.Module, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    t = torch.tanh(z)
    d = t * t
    return z - t, d, ((1 - d).mul_(t).mul_(2) if second else None)


def _gelu(m: nn.GELU, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    if m.approximate != "none":
        raise NotImplementedError("tanh-approximate GELU")
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return m(z), cdf + z * pdf, (pdf * (2 - z * z) if second else None)


def _elu(m: nn.ELU, z: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    e = m.alpha * torch.exp(torch.clamp(z, max=0))
    positive = z > 0
    return m(z), torch.where(positive, torch.ones_like(z), e), (torch.where(positive, torch.zeros_like(z), e) if second else None)


RULES: dict[type[nn.Module], Rule] = {
    nn.SiLU: _silu, nn.Softplus: _softplus, nn.Tanh: _tanh, nn.Tanhshrink: _tanhshrink, nn.GELU: _gelu, nn.ELU: _elu,
}


@dataclass(frozen=True)
class Stack:
    """G MLPs of one shape as one: per Linear a weight [G, in, out] and a bias [G, 1, out], the
    output layer padded with zeros to the widest net's; copies, so they go stale when the nets train."""

    weights: tuple[Tensor, ...]
    biases: tuple[Tensor, ...]
    activations: tuple[nn.Module, ...]  # the activation after each Linear but the last
    outs: tuple[int, ...]  # each net's own output width


def _layers(net: nn.Sequential) -> tuple[list[nn.Linear], list[nn.Module]] | None:
    """(Linears, activations) of a Linear, activation, …, Linear stack whose activations have RULES; else None."""
    linears, activations = list(net[::2]), list(net[1::2])
    if len(linears) != len(activations) + 1 or not all(isinstance(layer, nn.Linear) and layer.bias is not None for layer in linears):
        return None
    return (linears, activations) if all(type(a) in RULES for a in activations) else None


def stack(nets: Sequence[nn.Sequential]) -> Stack | None:
    """The nets stacked for `jet`, or None when a layer has no derivative rule or the nets differ
    in anything but their output width."""
    parsed = [_layers(net) for net in nets]
    if any(p is None for p in parsed):
        return None
    shapes = {tuple((layer.in_features, layer.out_features) for layer in p[0][:-1]) + (p[0][-1].in_features,) for p in parsed}
    if len(shapes) != 1 or len({tuple(repr(a) for a in p[1]) for p in parsed}) != 1:
        return None
    outs = tuple(p[0][-1].out_features for p in parsed)
    weights, biases = [], []
    with torch.no_grad():
        for i in range(len(parsed[0][0])):
            layers = [p[0][i] for p in parsed]
            width = max(layer.out_features for layer in layers)
            weights.append(torch.stack([nn.functional.pad(layer.weight.T, (0, width - layer.out_features)) for layer in layers]))
            biases.append(torch.stack([nn.functional.pad(layer.bias, (0, width - layer.out_features)) for layer in layers])[:, None])
    return Stack(tuple(weights), tuple(biases), tuple(parsed[0][1]), outs)


def jet(nets: Stack, x: Tensor, tangents: Tensor, curved: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y [G, B, out], ∂y along each tangent [G, k, B, out], and ∂²y along every pair (tangent
    k − curved + i, tangent j) [G, curved, k, B, out], or None when curved is 0) for input x [B, d]
    and tangents [k, B, d] shared by the G stacked nets. The input's own second derivatives along
    those pairs must be zero (true when the last `curved` tangents are q̇ directions, which enter
    the input linearly)."""
    k, batch = tangents.shape[:2]
    groups = nets.weights[0].shape[0]
    # values, then tangents, then second-order terms: rows of one [G, rows, width] tensor, updated in place layer by layer
    rows = torch.cat([x, tangents.reshape(k * batch, -1)]).expand(groups, -1, -1)
    last = len(nets.activations)
    for i, (weight, bias) in enumerate(zip(nets.weights, nets.biases)):
        if i == last and groups > 1:  # a few output columns per net: a batched matmul costs more than this product
            out = (rows.unsqueeze(-1) * weight.unsqueeze(1)).sum(2)
        else:
            out = torch.bmm(rows, weight)
        z = out[:, :batch]
        z += bias
        width = out.shape[-1]
        rest = out[:, batch:].view(groups, -1, batch, width)  # [G, k (+ curved·k), B, width]: ∂z, then ∂²z once there are any
        if i == last:
            if not curved:
                return z, rest, None
            second = rest[:, k:] if rest.shape[1] > k else rest.new_zeros(groups, curved * k, batch, width)
            return z, rest[:, :k], second.view(groups, curved, k, batch, width)
        act = nets.activations[i]
        y, d1, d2 = RULES[type(act)](act, z.unsqueeze(1), bool(curved))  # [G, 1, B, width]: broadcast over the tangents
        if curved:  # ∂²σ(z) = σ''(z) ∂z ∂z + σ'(z) ∂²z: the first term from this layer's tangents, before they are scaled
            curvature = (rest[:, k - curved : k].unsqueeze(2) * rest[:, :k].unsqueeze(1)).mul_(d2.unsqueeze(1)).view(groups, -1, batch, width)
        rest.mul_(d1)
        z.copy_(y.squeeze(1))
        rows = out
        if curved and rest.shape[1] > k:
            rest[:, k:].add_(curvature)
        elif curved:  # the first layer with second-order terms: they join the rows
            rows = torch.cat([out, curvature.flatten(1, 2)], dim=1)
    raise AssertionError("unreachable: an MLP ends with a Linear")
