"""Optimizer and learning-rate scheduler registries, by the names users write in study specs.

Every optimizer entry is a frozen `OptimInfo` that knows its sensible learning-rate range, so a
spec can say "lr: per optimizer". For D-Adaptation and Prodigy `lr` is a multiplier of the
adapted step size d (around 1.0), not a step size. Optional packages are imported lazily inside
the factories, so importing this module stays cheap.

Schedules are driven explicitly by the training loop (timm's convention): `after_update(n)`
after the n-th optimizer step and `after_epoch(e, metric)` after e completed epochs. Schedulers
act on the param group's `lr`, which for D-Adaptation is the multiplier of d; that is what
users who combine D-Adaptation with a cosine schedule do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from .errors import choose

if TYPE_CHECKING:  # config imports this module; only the type is needed here
    from .config import OptimizerConfig, SchedulerConfig

OptimFactory = Callable[[Iterable[torch.nn.Parameter], "OptimizerConfig", float], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimInfo:
    """One optimizer: how to build it and what its `lr` means."""

    name: str
    factory: OptimFactory  # (params, cfg, lr) -> optimizer
    default_lr: float  # a learning rate that trains a small DLNN without tuning
    lr_range: tuple[float, float]  # sensible search bounds (log scale)
    package: str  # where it comes from (recorded with the versions)
    n_betas: int = 0  # how many betas `OptimizerConfig.betas` must hold (0: not used)
    uses_momentum: bool = False  # reads `OptimizerConfig.momentum`
    adaptive_d: bool = False  # D-Adaptation/Prodigy: lr multiplies an estimated step size d (param_groups[0]["d"])
    description: str = ""


def _kwargs(cfg: "OptimizerConfig", lr: float, **fixed) -> dict:
    """The settings every factory passes: lr, weight decay, and betas/eps when given."""
    kwargs = {"lr": lr, "weight_decay": cfg.weight_decay, **fixed}
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    if cfg.eps is not None:
        kwargs["eps"] = cfg.eps
    return kwargs


def _sgd(params, cfg, lr):
    return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)


def _momentum(params, cfg, lr):
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _nesterov(params, cfg, lr):
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)


def _adagrad(params, cfg, lr):
    return torch.optim.Adagrad(params, **_kwargs(cfg, lr))


def _rmsprop(params, cfg, lr):
    return torch.optim.RMSprop(params, **_kwargs(cfg, lr))


def _adadelta(params, cfg, lr):
    return torch.optim.Adadelta(params, **_kwargs(cfg, lr))


def _adam(params, cfg, lr):
    return torch.optim.Adam(params, **_kwargs(cfg, lr))


def _adamw(params, cfg, lr):
    return torch.optim.AdamW(params, **_kwargs(cfg, lr))


def _dadaptadam(params, cfg, lr):
    from dadaptation import DAdaptAdam

    return DAdaptAdam(params, **_kwargs(cfg, lr, d0=cfg.d0))


def _dadaptsgd(params, cfg, lr):
    from dadaptation import DAdaptSGD

    return DAdaptSGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, d0=cfg.d0)


def _dadaptadagrad(params, cfg, lr):
    from dadaptation import DAdaptAdaGrad

    kwargs = {"lr": lr, "weight_decay": cfg.weight_decay, "d0": cfg.d0}
    if cfg.eps is not None:
        kwargs["eps"] = cfg.eps
    return DAdaptAdaGrad(params, **kwargs)


def _lion(params, cfg, lr):
    from lion_pytorch import Lion

    kwargs = {"lr": lr, "weight_decay": cfg.weight_decay}
    if cfg.betas is not None:
        kwargs["betas"] = tuple(cfg.betas)
    return Lion(params, **kwargs)


def _adan(params, cfg, lr):
    from timm.optim import Adan

    return Adan(params, **_kwargs(cfg, lr))


def _prodigy(params, cfg, lr):
    from prodigyopt import Prodigy

    return Prodigy(params, **_kwargs(cfg, lr, d0=cfg.d0))


OPTIMIZERS: dict[str, OptimInfo] = {
    info.name: info
    for info in (
        OptimInfo("sgd", _sgd, 1e-2, (1e-4, 1e-1), "torch", description="plain SGD: tolerates a narrow lr range"),
        OptimInfo("momentum", _momentum, 3e-3, (1e-4, 1e-1), "torch", uses_momentum=True, description="SGD with heavy-ball momentum"),
        OptimInfo("nesterov", _nesterov, 3e-3, (1e-4, 1e-1), "torch", uses_momentum=True, description="SGD with Nesterov momentum"),
        OptimInfo("adagrad", _adagrad, 3e-2, (1e-3, 3e-1), "torch"),
        OptimInfo("rmsprop", _rmsprop, 1e-3, (1e-5, 1e-2), "torch"),
        OptimInfo("adadelta", _adadelta, 1.0, (0.1, 10.0), "torch", description="lr scales an already unit-free step"),
        OptimInfo("adam", _adam, 1e-3, (1e-5, 1e-2), "torch", n_betas=2),
        OptimInfo("adamw", _adamw, 1e-3, (1e-5, 1e-2), "torch", n_betas=2, description="Adam with decoupled weight decay"),
        # D-Adaptation's advice is lr 1.0; on small DLNNs here the Adam-type estimate overshoots
        # at 1.0 (validation error rises) and trains at 0.3, while the AdaGrad variant's d grows
        # too slowly at 1.0 and trains at 3 (measured in tests/test_train.py's setting).
        OptimInfo("dadaptadam", _dadaptadam, 0.3, (0.03, 3.0), "dadaptation", n_betas=2, adaptive_d=True,
                  description="D-Adaptation Adam: lr multiplies the estimated step size d (starts at d0)"),
        OptimInfo("dadaptsgd", _dadaptsgd, 1.0, (0.1, 10.0), "dadaptation", uses_momentum=True, adaptive_d=True),
        OptimInfo("dadaptadagrad", _dadaptadagrad, 3.0, (0.3, 30.0), "dadaptation", adaptive_d=True),
        OptimInfo("lion", _lion, 1e-3, (1e-5, 3e-3), "lion_pytorch", n_betas=2,
                  description="sign update of fixed size lr per weight: keep lr at or below Adam's"),
        OptimInfo("adan", _adan, 1e-3, (1e-5, 1e-2), "timm", n_betas=3),
        OptimInfo("prodigy", _prodigy, 0.3, (0.03, 3.0), "prodigyopt", n_betas=2, adaptive_d=True,
                  description="successor of D-Adaptation Adam; overshoots like it at lr 1.0"),
    )
}


def resolve_lr(cfg: "OptimizerConfig") -> float:
    """The configured lr, or the optimizer's default when the config leaves it at None."""
    return OPTIMIZERS[cfg.name].default_lr if cfg.lr is None else cfg.lr


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: "OptimizerConfig", lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer named by `cfg` over `params`; `lr` overrides the config (the range test uses it)."""
    info = choose(OPTIMIZERS, cfg.name, "optimizer.name")
    return info.factory(params, cfg, resolve_lr(cfg) if lr is None else lr)


def adapted_d(optimizer: torch.optim.Optimizer) -> float | None:
    """D-Adaptation's/Prodigy's current step-size estimate d, or None for other optimizers."""
    d = optimizer.param_groups[0].get("d")
    return None if d is None else float(d)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size in effect now: lr, times d for D-Adaptation/Prodigy."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) * float(group.get("d", 1.0))


# --------------------------------------------------------------------------- schedulers


def _noop(*_args) -> None:
    return None


@dataclass(frozen=True)
class Schedule:
    """A built learning-rate schedule and the two hooks the training loop calls."""

    name: str
    scheduler: object | None
    after_update: Callable[[int], None]  # called with the number of optimizer steps done so far
    after_epoch: Callable[[int, float], None]  # called with the number of epochs done and the validation metric


def _none(cfg: "SchedulerConfig", optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    return Schedule("none", None, _noop, _noop)


def _cosine(cfg: "SchedulerConfig", optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    """timm's CosineLRScheduler: warm-up from warmup_lr_init over warmup_t epochs, then cosine
    cycles of t_initial epochs (default: the run split into cycle_limit cycles, i.e. cycle_limit − 1
    restarts), each cycle's peak scaled by cycle_decay, lr_min after the last cycle. Durations are
    in epochs; with interval="step" the schedule moves every update (timm t_in_epochs=False)."""
    from timm.scheduler import CosineLRScheduler

    cycle = cfg.t_initial if cfg.t_initial is not None else epochs / cfg.cycle_limit
    per_update = cfg.interval == "step"
    unit = steps_per_epoch if per_update else 1
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, round(cycle * unit)) if per_update else max(cycle, 1e-9),
        lr_min=cfg.lr_min,
        cycle_decay=cfg.cycle_decay,
        cycle_limit=cfg.cycle_limit,
        warmup_t=round(cfg.warmup_t * unit) if per_update else cfg.warmup_t,
        warmup_lr_init=cfg.warmup_lr_init,
        warmup_prefix=cfg.warmup_prefix,
        t_in_epochs=not per_update,
    )
    if per_update:
        return Schedule("cosine", scheduler, scheduler.step_update, _noop)
    return Schedule("cosine", scheduler, _noop, lambda epoch, metric: scheduler.step(epoch))


def _step(cfg: "SchedulerConfig", optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.resolved_gamma())
    return Schedule("step", scheduler, _noop, lambda epoch, metric: scheduler.step())


def _exponential(cfg: "SchedulerConfig", optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.resolved_gamma())
    return Schedule("exponential", scheduler, _noop, lambda epoch, metric: scheduler.step())


def _plateau(cfg: "SchedulerConfig", optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.factor, patience=cfg.patience)
    return Schedule("plateau", scheduler, _noop, lambda epoch, metric: scheduler.step(metric if math.isfinite(metric) else float("inf")))


@dataclass(frozen=True)
class SchedulerInfo:
    name: str
    factory: Callable[..., Schedule]  # (cfg, optimizer, epochs, steps_per_epoch) -> Schedule
    fields: tuple[str, ...]  # the SchedulerConfig fields it reads
    description: str = ""


SCHEDULERS: dict[str, SchedulerInfo] = {
    info.name: info
    for info in (
        SchedulerInfo("none", _none, (), "constant lr"),
        SchedulerInfo("cosine", _cosine, ("interval", "warmup_t", "warmup_lr_init", "warmup_prefix", "lr_min", "t_initial", "cycle_limit", "cycle_decay"),
                      "timm CosineLRScheduler with warm-up and restarts"),
        SchedulerInfo("step", _step, ("step_size", "gamma"), "lr × gamma every step_size epochs (gamma default 0.5)"),
        SchedulerInfo("exponential", _exponential, ("gamma",), "lr × gamma every epoch (gamma default 0.95)"),
        SchedulerInfo("plateau", _plateau, ("patience", "factor"), "lr × factor when validation stalls for patience epochs"),
    )
}


def build_scheduler(cfg: "SchedulerConfig", optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule named by `cfg` for a run of `epochs` epochs of `steps_per_epoch` updates."""
    return choose(SCHEDULERS, cfg.name, "scheduler.name").factory(cfg, optimizer, epochs, steps_per_epoch)
