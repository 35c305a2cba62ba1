"""Optimizer and learning-rate scheduler registries, by the names users write in study specs.

Every optimizer entry is a frozen `OptimInfo`, data as in timm: the class, the fixed arguments
and the `OptimizerConfig` fields it reads (`reads`, the one place that says d0 applies only to
D-Adaptation/Prodigy, momentum only to momentum optimizers, betas only where n_betas > 0), and its
sensible learning-rate range, so a spec can say "lr: per optimizer". One generic `build_optimizer`
builds every entry. For D-Adaptation and Prodigy `lr` is a multiplier of the adapted step size d
(around 1.0), not a step size.

Every scheduler entry is a frozen `SchedulerInfo` in the same way: the scheduler class (timm's where
timm has one), the `SchedulerConfig` fields it reads, their defaults, and how they become the class's
arguments. Schedules are driven explicitly by the training loop (timm's convention): `after_update(n)`
after the n-th optimizer step and `after_epoch(e, metric)` after e completed epochs. Schedulers
act on the param group's `lr`, which for D-Adaptation is the multiplier of d; that is what
users who combine D-Adaptation with a cosine schedule do.

Both registries name their classes as import strings, imported when an optimizer or schedule is built,
so this module (which configs check names against) imports without torch.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

from .errors import ConfigError, choose, raise_all
from .fields import Boolean, Integer, Number, OneOf, Rule, as_number, check_fields

if TYPE_CHECKING:  # torch is imported when something is built
    import torch

# The OptimizerConfig settings an optimizer may take besides lr (which every optimizer takes).
SETTINGS = ("weight_decay", "momentum", "betas", "eps", "d0")


@dataclass(frozen=True)
class OptimInfo:
    """One optimizer as data (timm's `OptimInfo`): its class, the fixed arguments that make this
    entry, the `OptimizerConfig` fields its constructor takes, and what its `lr` means."""

    name: str
    target: str  # "module.Class", imported on build so importing this module stays cheap
    reads: frozenset[str]  # the OptimizerConfig fields passed besides lr (betas/eps only when set, else the optimizer's own)
    default_lr: float  # a learning rate that trains a small DLNN without tuning
    lr_range: tuple[float, float]  # sensible search bounds (log scale)
    package: str  # where it comes from (recorded with the versions)
    n_betas: int = 0  # how many betas `OptimizerConfig.betas` must hold: > 0 exactly when it reads betas
    fixed: Mapping[str, Any] = field(default_factory=dict, hash=False)  # constructor arguments of this entry (nesterov=True)
    description: str = ""
    sync_free: str | None = None  # "module.Class" of the same update without host reads inside a step (packs use it); None: target has none

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", frozenset(self.reads))
        if not self.reads <= set(SETTINGS) or ("betas" in self.reads) != (self.n_betas > 0):
            raise ValueError(f"optimizer {self.name}: reads {sorted(self.reads)} (known: {', '.join(SETTINGS)}) "
                             f"must include betas exactly when n_betas ({self.n_betas}) > 0")

    @property
    def adaptive_d(self) -> bool:
        """D-Adaptation/Prodigy: lr multiplies an estimated step size d (param_groups[0]["d"]) that
        starts at d0; exactly the optimizers that read d0."""
        return "d0" in self.reads

    def optimizer_class(self, sync_free: bool = False) -> type[torch.optim.Optimizer]:
        """The class to build; with `sync_free`, the sync-free form where the entry names one."""
        return _load(self.sync_free if sync_free and self.sync_free else self.target)


def _load(target: str) -> Any:
    """The class named by "package.module.Class", imported now (registry entries name their classes)."""
    module, name = target.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


_ADAPTIVE = frozenset({"weight_decay", "eps"})  # the torch adaptive-step optimizers without betas
_ADAM = frozenset({"weight_decay", "betas", "eps"})

OPTIMIZERS: dict[str, OptimInfo] = {
    info.name: info
    for info in (
        OptimInfo("sgd", "torch.optim.SGD", {"weight_decay"}, 1e-2, (1e-4, 1e-1), "torch",
                  description="plain SGD: tolerates a narrow lr range"),
        OptimInfo("momentum", "torch.optim.SGD", {"weight_decay", "momentum"}, 3e-3, (1e-4, 1e-1), "torch",
                  description="SGD with heavy-ball momentum"),
        OptimInfo("nesterov", "torch.optim.SGD", {"weight_decay", "momentum"}, 3e-3, (1e-4, 1e-1), "torch", fixed={"nesterov": True},
                  description="SGD with Nesterov momentum"),
        OptimInfo("adagrad", "torch.optim.Adagrad", _ADAPTIVE, 3e-2, (1e-3, 3e-1), "torch"),
        OptimInfo("rmsprop", "torch.optim.RMSprop", _ADAPTIVE, 1e-3, (1e-5, 1e-2), "torch"),
        OptimInfo("adadelta", "torch.optim.Adadelta", _ADAPTIVE, 1.0, (0.1, 10.0), "torch", description="lr scales an already unit-free step"),
        OptimInfo("adam", "torch.optim.Adam", _ADAM, 1e-3, (1e-5, 1e-2), "torch", n_betas=2),
        OptimInfo("adamw", "torch.optim.AdamW", _ADAM, 1e-3, (1e-5, 1e-2), "torch", n_betas=2, description="Adam with decoupled weight decay"),
        # D-Adaptation's advice is lr 1.0; on small DLNNs here the Adam-type estimate overshoots
        # at 1.0 (validation error rises) and trains at 0.3, while the AdaGrad variant's d grows
        # too slowly at 1.0 and trains at 3 (measured in tests/test_train.py's setting).
        OptimInfo("dadaptadam", "dadaptation.DAdaptAdam", _ADAM | {"d0"}, 0.3, (0.03, 3.0), "dadaptation", n_betas=2,
                  description="D-Adaptation Adam: lr multiplies the estimated step size d (starts at d0)",
                  sync_free="dlnn_core.adaptive.DAdaptAdam"),
        OptimInfo("dadaptsgd", "dadaptation.DAdaptSGD", {"weight_decay", "momentum", "d0"}, 1.0, (0.1, 10.0), "dadaptation"),
        OptimInfo("dadaptadagrad", "dadaptation.DAdaptAdaGrad", _ADAPTIVE | {"d0"}, 3.0, (0.3, 30.0), "dadaptation"),
        OptimInfo("lion", "lion_pytorch.Lion", {"weight_decay", "betas"}, 1e-3, (1e-5, 3e-3), "lion_pytorch", n_betas=2,
                  description="sign update of fixed size lr per weight: keep lr at or below Adam's"),
        OptimInfo("adan", "timm.optim.Adan", _ADAM, 1e-3, (1e-5, 1e-2), "timm", n_betas=3),
        OptimInfo("prodigy", "prodigyopt.Prodigy", _ADAM | {"d0"}, 0.3, (0.03, 3.0), "prodigyopt", n_betas=2,
                  description="successor of D-Adaptation Adam; overshoots like it at lr 1.0", sync_free="dlnn_core.adaptive.Prodigy"),
    )
}


def reads(optimizer: str, setting: str) -> bool:
    """Whether the optimizer named `optimizer` takes `OptimizerConfig.<setting>`: lr always, the
    others as its registry entry's `reads` says. The one answer to "does this setting apply here"
    for config checks, spec checks, conditional search parameters and reports."""
    return setting == "lr" or setting in OPTIMIZERS[optimizer].reads


def resolve_lr(cfg: "OptimizerConfig") -> float:
    """The configured lr, or the optimizer's default when the config leaves it at None."""
    return OPTIMIZERS[cfg.name].default_lr if cfg.lr is None else cfg.lr


def relative_lr(optimizer: str, lr: float | None) -> float:
    """lr over the optimizer's default lr (1.0 when lr is None: the default is used), a unit-free
    learning rate comparable across optimizers. The one place the ratio is computed: the worker's
    `lr_rel` attr and the report's lr tables and importance read it."""
    default = choose(OPTIMIZERS, optimizer, "optimizer.name").default_lr
    return (default if lr is None else lr) / default


def optimizer_kwargs(cfg: "OptimizerConfig", lr: float | None = None) -> dict[str, Any]:
    """The constructor arguments `build_optimizer` passes: lr, the entry's fixed arguments and the
    config's fields the optimizer reads, leaving out unset ones (betas/eps None: the optimizer's own)."""
    info = choose(OPTIMIZERS, cfg.name, "optimizer.name")
    kwargs: dict[str, Any] = {"lr": resolve_lr(cfg) if lr is None else lr, **info.fixed}
    for setting in SETTINGS:
        if setting in info.reads and getattr(cfg, setting) is not None:
            kwargs[setting] = getattr(cfg, setting)
    return kwargs


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: "OptimizerConfig", lr: float | None = None, *,
                    sync_free: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by `cfg` over `params`; `lr` overrides the config (the range test uses it).
    `sync_free`: the entry's sync-free form of the same update where it has one (`OptimInfo.sync_free`)."""
    kwargs = optimizer_kwargs(cfg, lr)
    return OPTIMIZERS[cfg.name].optimizer_class(sync_free)(params, **kwargs)


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


@dataclass(frozen=True)
class SchedulerInfo:
    """One learning-rate schedule as data: its class, the `SchedulerConfig` fields it reads (`fields`,
    the one place that says which settings apply to it), their defaults where the config leaves them
    unset, and how they become the class's arguments for a run of `epochs` × `steps_per_epoch` updates."""

    name: str
    target: str | None  # "module.Class", imported on build; None: the lr stays constant
    fields: tuple[str, ...]  # the SchedulerConfig fields it reads
    arguments: Callable[["SchedulerConfig", int, int], dict[str, Any]]  # (cfg, epochs, steps_per_epoch) -> the class's keywords
    defaults: Mapping[str, Any] = field(default_factory=dict, hash=False)  # values of fields the config leaves at None
    timm: bool = True  # driven as timm's Scheduler (step_update per update, step per epoch); False: torch's ReduceLROnPlateau
    description: str = ""


def _cosine(cfg: "SchedulerConfig", epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """timm's CosineLRScheduler: warm-up from warmup_lr_init over warmup_t epochs, then cosine
    cycles of t_initial epochs (default: the run split into cycle_limit cycles, i.e. cycle_limit − 1
    restarts), each cycle's peak scaled by cycle_decay, lr_min after the last cycle. Durations are
    in epochs; with interval="step" the schedule moves every update (timm t_in_epochs=False)."""
    cycle = cfg.t_initial if cfg.t_initial is not None else epochs / cfg.cycle_limit
    per_update = cfg.interval == "step"
    unit = steps_per_epoch if per_update else 1
    return {
        "t_initial": max(1, round(cycle * unit)) if per_update else max(cycle, 1e-9),
        "lr_min": cfg.lr_min,
        "cycle_decay": cfg.cycle_decay,
        "cycle_limit": cfg.cycle_limit,
        "warmup_t": round(cfg.warmup_t * unit) if per_update else cfg.warmup_t,
        "warmup_lr_init": cfg.warmup_lr_init,
        "warmup_prefix": cfg.warmup_prefix,
        "t_in_epochs": not per_update,
    }


SCHEDULERS: dict[str, SchedulerInfo] = {
    info.name: info
    for info in (
        SchedulerInfo("none", None, (), lambda cfg, epochs, steps: {}, description="constant lr"),
        SchedulerInfo("cosine", "timm.scheduler.CosineLRScheduler",
                      ("interval", "warmup_t", "warmup_lr_init", "warmup_prefix", "lr_min", "t_initial", "cycle_limit", "cycle_decay"),
                      _cosine, description="timm CosineLRScheduler with warm-up and restarts"),
        # lr × gamma^(epochs // step_size), as torch's StepLR; exponential is the same with step_size 1
        SchedulerInfo("step", "timm.scheduler.StepLRScheduler", ("step_size", "gamma"),
                      lambda cfg, epochs, steps: {"decay_t": cfg.step_size, "decay_rate": cfg.resolved_gamma()},
                      defaults={"gamma": 0.5}, description="lr × gamma every step_size epochs (gamma default 0.5)"),
        SchedulerInfo("exponential", "timm.scheduler.StepLRScheduler", ("gamma",),
                      lambda cfg, epochs, steps: {"decay_t": 1, "decay_rate": cfg.resolved_gamma()},
                      defaults={"gamma": 0.95}, description="lr × gamma every epoch (gamma default 0.95)"),
        # timm's PlateauLRScheduler is deprecated (it warns when built), so torch's is used
        SchedulerInfo("plateau", "torch.optim.lr_scheduler.ReduceLROnPlateau", ("patience", "factor"),
                      lambda cfg, epochs, steps: {"mode": "min", "factor": cfg.factor, "patience": cfg.patience},
                      timm=False, description="lr × factor when validation stalls for patience epochs"),
    )
}
# The gamma a step or exponential schedule uses when the config leaves it unset (SchedulerConfig.resolved_gamma).
DEFAULT_GAMMA = {name: info.defaults["gamma"] for name, info in SCHEDULERS.items() if "gamma" in info.defaults}


def build_scheduler(cfg: "SchedulerConfig", optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule named by `cfg` for a run of `epochs` epochs of `steps_per_epoch` updates. A timm
    scheduler hears both hooks, as timm's own training loop calls it: `step_update` moves a per-update
    schedule and `step` a per-epoch one, each ignoring the other. ReduceLROnPlateau reads the validation
    metric after each epoch (a non-finite one counts as no improvement)."""
    info = choose(SCHEDULERS, cfg.name, "scheduler.name")
    if info.target is None:
        return Schedule(info.name, None, _noop, _noop)
    scheduler = _load(info.target)(optimizer, **info.arguments(cfg, epochs, steps_per_epoch))
    if info.timm:
        return Schedule(info.name, scheduler, scheduler.step_update, lambda epoch, metric: scheduler.step(epoch, metric))
    return Schedule(info.name, scheduler, _noop, lambda epoch, metric: scheduler.step(metric if math.isfinite(metric) else float("inf")))


# ----------------------------------------------------------------------------- configs (beside their registries)

INTERVALS = ("step", "epoch")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer name and settings. `lr=None` takes the optimizer's default from the registry;
    for D-Adaptation and Prodigy `lr` is the multiplier of the adapted step (about 1.0)."""

    name: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9  # momentum, nesterov, dadaptsgd
    betas: tuple[float, ...] | None = None  # None: the optimizer's own; 2 values (3 for adan)
    eps: float | None = None  # None: the optimizer's own
    d0: float = 1e-6  # D-Adaptation/Prodigy: initial estimate of the distance to the solution

    RULES: ClassVar[dict[str, Rule]] = {  # betas: its own check, as many as the optimizer takes
        "name": OneOf(OPTIMIZERS),
        "lr": Number(low=0, low_open=True, optional=True),
        "weight_decay": Number(low=0),
        "momentum": Number(low=0, high=1, high_open=True),
        "eps": Number(low=0, low_open=True, optional=True),
        "d0": Number(low=0, low_open=True),
    }

    def __post_init__(self) -> None:
        """Check every field and raise one ConfigError naming all the bad ones."""
        errors: list[ConfigError] = []
        refused = check_fields(errors, self, "optimizer.", self.RULES)
        if "name" not in refused and self.betas is not None:  # how many betas, if any, depends on the optimizer
            _betas(errors, self)
        raise_all(errors)

    @property
    def info(self):
        return OPTIMIZERS[self.name]


def _betas(errors: list[ConfigError], cfg: OptimizerConfig) -> None:
    """`betas`: as many numbers in [0, 1) as the optimizer takes, or null for one without betas."""
    betas, n = cfg.betas, OPTIMIZERS[cfg.name].n_betas
    if isinstance(betas, (list, tuple)):
        betas = [as_number(b) for b in betas]  # "9.99e-1" from YAML as every field reads it
    ok = reads(cfg.name, "betas") and isinstance(betas, (list, tuple)) and len(betas) == n and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
    if not ok:
        allowed = f"{n} numbers in [0, 1) for {cfg.name}" if reads(cfg.name, "betas") else f"null ({cfg.name} has no betas)"
        errors.append(ConfigError("optimizer.betas", cfg.betas, allowed))
        return
    object.__setattr__(cfg, "betas", tuple(float(b) for b in betas))


@dataclass(frozen=True)
class SchedulerConfig:
    """Learning-rate schedule. Durations (warmup_t, t_initial, step_size) are in epochs; for
    `cosine`, interval="step" moves the lr every update, "epoch" once per epoch."""

    name: str = "none"
    interval: str = "step"  # cosine: step the timm scheduler per update or per epoch
    warmup_t: float = 0.0  # cosine: warm-up length, epochs
    warmup_lr_init: float = 0.0  # cosine: lr (multiplier for D-Adaptation) at the start of warm-up
    warmup_prefix: bool = False  # cosine: cycles start after the warm-up instead of including it
    lr_min: float = 0.0  # cosine: floor of each cycle and value after the last one
    t_initial: float | None = None  # cosine: cycle length in epochs; None: epochs / cycle_limit
    cycle_limit: int = 1  # cosine: number of cycles (restarts = cycle_limit − 1)
    cycle_decay: float = 1.0  # cosine: each restart's peak is the previous one × cycle_decay
    step_size: int = 10  # step: epochs between decays
    gamma: float | None = None  # step/exponential: decay factor; None: 0.5 (step), 0.95 (exponential)
    patience: int = 5  # plateau: epochs without improvement before a decay
    factor: float = 0.5  # plateau: decay factor

    RULES: ClassVar[dict[str, Rule]] = {
        "name": OneOf(SCHEDULERS),
        "interval": OneOf(INTERVALS),
        "warmup_t": Number(low=0),
        "warmup_lr_init": Number(low=0),
        "warmup_prefix": Boolean(),
        "lr_min": Number(low=0),
        "t_initial": Number(low=0, low_open=True, optional=True),
        "cycle_limit": Integer(),
        "cycle_decay": Number(low=0, low_open=True),
        "step_size": Integer(),
        "gamma": Number(low=0, low_open=True, high=1, optional=True),
        "patience": Integer(low=0),
        "factor": Number(low=0, low_open=True, high=1, high_open=True),
    }

    def __post_init__(self) -> None:
        """Check every field and raise one ConfigError naming all the bad ones."""
        errors: list[ConfigError] = []
        check_fields(errors, self, "scheduler.", self.RULES)
        raise_all(errors)

    def resolved_gamma(self) -> float:
        return self.gamma if self.gamma is not None else DEFAULT_GAMMA.get(self.name, 0.5)
