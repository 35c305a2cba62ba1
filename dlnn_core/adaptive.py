"""D-Adaptation Adam and Prodigy without host reads inside a step, for packs and GPUs.

The published optimizers (dadaptation.DAdaptAdam, prodigyopt.Prodigy) sum two scalars per parameter
tensor with `.item()` and keep the step size d as a Python float, so every step waits for the device
twice per tensor. Here d and its running sums are 0-dim float64 tensors on the parameters' device
(float64, as Python floats are in the packages) and every branch on them is a `torch.where`: the
same updates, step for step, to float tolerance (tests/test_pack.py compares them on one trial).
Each instance has its own d, so each trial of a pack adapts its own step size. Reading d
(`optim.adapted_d`) is a sync the caller chooses to make, once per epoch.

Differences from the packages, both only where every gradient seen so far is exactly zero (where
the packages return before updating): the step counters still advance, and with
`use_bias_correction` the correction moves on with them."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _py_max(a: Tensor, b: Tensor) -> Tensor:
    """Python's max(a, b): b only where b > a (so a NaN b leaves a, as in the packages)."""
    return torch.where(b > a, b, a)


def _py_min(a: Tensor, b: Tensor) -> Tensor:
    """Python's min(a, b): b only where b < a."""
    return torch.where(b < a, b, a)


class _SyncFree(torch.optim.Optimizer):
    """Shared set-up: the group-wide scalars as 0-dim float64 tensors on the first parameter's device."""

    _SCALARS: tuple[str, ...] = ()

    def _scalars(self) -> dict[str, Tensor]:
        group = self.param_groups[0]
        device = group["params"][0].device
        for name in self._SCALARS:
            if not torch.is_tensor(group[name]):
                value = torch.tensor(float(group[name]), dtype=torch.float64, device=device)
                for g in self.param_groups:
                    g[name] = value
        return {name: group[name] for name in self._SCALARS}

    def _lr(self) -> float:
        lr = max(group["lr"] for group in self.param_groups)
        for group in self.param_groups:
            if group["lr"] not in (lr, 0.0):
                raise RuntimeError("different lr values in different parameter groups are only supported for values of 0")
        return lr


class DAdaptAdam(_SyncFree):
    """dadaptation.DAdaptAdam (3.2) with the same arguments (fsdp aside) and the same update."""

    _SCALARS = ("d", "numerator_weighted")

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, log_every=0, decouple=False,
                 use_bias_correction=False, d0=1e-6, growth_rate=float("inf")):
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0}")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, d=d0, k=0, layer_scale=1.0, numerator_weighted=0.0,
                        growth_rate=growth_rate, use_bias_correction=use_bias_correction, decouple=decouple)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scalars = self._scalars()
        group0 = self.param_groups[0]
        d, numerator_old = scalars["d"], scalars["numerator_weighted"]
        beta1, beta2 = group0["betas"]
        k, lr = group0["k"], self._lr()
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if group0["use_bias_correction"] else 1
        dlr = d * (lr * bias_correction)
        sqrt_beta2 = beta2**0.5
        numerator_acum = torch.zeros_like(d)
        sk_l1 = torch.zeros_like(d)
        for group in self.param_groups:
            decay, eps, r = group["weight_decay"], group["eps"], group["layer_scale"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if decay != 0 and not group["decouple"]:
                    grad.add_(p, alpha=decay)
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["s"] = torch.zeros_like(p)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq, s = state["exp_avg"], state["exp_avg_sq"], state["s"]
                if group["lr"] > 0.0:
                    denom = exp_avg_sq.sqrt().add_(eps)
                    numerator_acum += r * dlr * torch.dot(grad.flatten(), s.div(denom).flatten())
                    exp_avg.mul_(beta1).add_(grad * (r * (1 - beta1) * dlr).to(grad.dtype))
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    s.mul_(sqrt_beta2).add_(grad * ((1 - sqrt_beta2) * dlr).to(grad.dtype))
                    sk_l1 += r * s.abs().sum()
        moved = sk_l1 != 0  # the package returns before the update when sk_l1 == 0
        numerator_weighted = sqrt_beta2 * numerator_old + (1 - sqrt_beta2) * numerator_acum
        if lr > 0.0:
            d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1)
            d = torch.where(moved, _py_max(d, _py_min(d_hat, d * group0["growth_rate"])), d)
        numerator_weighted = torch.where(moved, numerator_weighted, numerator_old)
        dlr_moved = torch.where(moved, dlr, torch.zeros_like(dlr))
        for group in self.param_groups:
            group["numerator_weighted"], group["d"] = numerator_weighted, d
            decay, eps = group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                denom = state["exp_avg_sq"].sqrt().add_(eps)
                if decay != 0 and group["decouple"]:
                    p.add_(p * (-decay * dlr_moved).to(p.dtype))
                update = state["exp_avg"] if group["lr"] > 0.0 else torch.zeros_like(p)
                p.addcdiv_(update * moved.to(p.dtype), denom, value=-1)
            group["k"] = k + 1
        return loss


class Prodigy(_SyncFree):
    """prodigyopt.Prodigy (1.1.2) with the same arguments (fsdp aside) and the same update."""

    _SCALARS = ("d", "d_max", "d_numerator")

    def __init__(self, params, lr=1.0, betas=(0.9, 0.999), beta3=None, eps=1e-8, weight_decay=0, decouple=True,
                 use_bias_correction=False, safeguard_warmup=False, d0=1e-6, d_coef=1.0, growth_rate=float("inf"), slice_p=1):
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0}")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Invalid beta parameters: {betas}")
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, d=d0, d0=d0, d_max=d0, d_numerator=0.0,
                        d_coef=d_coef, k=0, growth_rate=growth_rate, use_bias_correction=use_bias_correction, decouple=decouple,
                        safeguard_warmup=safeguard_warmup, slice_p=slice_p)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scalars = self._scalars()
        group0 = self.param_groups[0]
        d, d_max, numerator_old = scalars["d"], scalars["d_max"], scalars["d_numerator"]
        beta1, beta2 = group0["betas"]
        beta3 = group0["beta3"] if group0["beta3"] is not None else math.sqrt(beta2)
        k, lr, d0 = group0["k"], self._lr(), group0["d0"]
        bias_correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) if group0["use_bias_correction"] else 1
        dlr = d * (lr * bias_correction)
        d_numerator = numerator_old * beta3
        delta_numerator = torch.zeros_like(d)
        d_denom = torch.zeros_like(d)
        for group in self.param_groups:
            decay, slice_p = group["weight_decay"], group["slice_p"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if decay != 0 and not group["decouple"]:
                    grad.add_(p, alpha=decay)
                state = self.state[p]
                if "step" not in state:
                    state["step"] = 0
                    state["s"] = torch.zeros_like(p.flatten()[::slice_p])
                    state["p0"] = p.flatten()[::slice_p].clone()  # the package keeps a scalar 0 for an all-zero p: the same values
                    if beta1 > 0:
                        state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                s = state["s"]
                if group["lr"] > 0.0:
                    sliced_grad = grad.flatten()[::slice_p]
                    delta_numerator += (d / d0) * dlr * torch.dot(sliced_grad, state["p0"] - p.flatten()[::slice_p])
                    if beta1 > 0:
                        state["exp_avg"].mul_(beta1).add_(grad * (d * (1 - beta1)).to(grad.dtype))
                    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad * (d * d * (1 - beta2)).to(grad.dtype))
                    s.mul_(beta3).add_(sliced_grad * ((d / d0) * (d if group["safeguard_warmup"] else dlr)).to(grad.dtype))
                    d_denom += s.abs().sum()
        moved = d_denom != 0  # the package returns before the update when d_denom == 0
        d_hat = d
        if lr > 0.0:
            numerator_new = d_numerator + delta_numerator
            d_hat = group0["d_coef"] * numerator_new / d_denom
            d_new = torch.where(d == d0, _py_max(d, d_hat), d)
            d_max_new = _py_max(d_max, d_hat)
            d_new = _py_min(d_max_new, d_new * group0["growth_rate"])
            d, d_max = torch.where(moved, d_new, d), torch.where(moved, d_max_new, d_max)
            numerator = torch.where(moved, numerator_new, numerator_old)
        else:
            numerator = numerator_old
        dlr_moved = torch.where(moved, dlr, torch.zeros_like(dlr))
        for group in self.param_groups:
            group.update(d_numerator=numerator, d_denom=d_denom, d=d, d_max=d_max, d_hat=d_hat)
            decay, eps = group["weight_decay"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                denom = state["exp_avg_sq"].sqrt().add_((d * eps).to(p.dtype))
                if decay != 0 and group["decouple"]:
                    p.add_(p * (-decay * dlr_moved).to(p.dtype))
                if beta1 > 0:
                    p.addcdiv_(state["exp_avg"] * (-dlr_moved).to(p.dtype), denom)
                else:
                    p.addcdiv_(p.grad * (-dlr_moved * d).to(p.dtype), denom)
            group["k"] = k + 1
        return loss
