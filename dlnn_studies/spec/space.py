"""A study's search space, compiled from the spec: trial -> flat TrainConfig overrides.

Each `Param` is one dotted `TrainConfig` key ("optimizer.lr", "model.hidden"). Parameters under
the optimizer or the scheduler may be conditional (`only_for`): `optimizer.d0` is only drawn for
D-Adaptation/Prodigy, `scheduler.warmup_t` only for schedulers that read it. A per-optimizer
learning rate is one unit-free Optuna parameter, "optimizer.lr_position": the position of lr in
the chosen optimizer's own log range (0 = its low end, 1 = its high end). One parameter across
optimizers is what importance and parallel coordinates need (Optuna cannot give one parameter
name different ranges), and each optimizer still gets exactly its own range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

# Parameters that name a registry entry; their children can be conditional on the chosen entry.
PARENTS = {"optimizer": "optimizer.name", "scheduler": "scheduler.name"}
# The Optuna parameter of a per-optimizer learning rate, in [0, 1] (see the module docstring).
LR_POSITION = "optimizer.lr_position"


def lr_from_position(position: float, low: float, high: float) -> float:
    return float(low * (high / low) ** position)


def position_from_lr(lr: float, low: float, high: float) -> float:
    return math.log(lr / low) / math.log(high / low)


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) setting. `kind` is categorical, float, int or fixed."""

    key: str  # flat TrainConfig key
    path: str  # TOML path, for messages
    kind: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    value: Any = None  # kind == "fixed"
    grid: tuple = ()  # values for the grid sampler (numeric params)
    parent: str | None = None  # "optimizer.name" / "scheduler.name" for their children
    only_for: tuple[str, ...] | None = None  # parent values for which the param is drawn; None: always
    per_optimizer: bool = False  # optimizer.lr drawn as one param per optimizer, over per_choice ranges
    per_choice: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # optimizer -> (low, high), log scale

    def active(self, parent_value: Any) -> bool:
        return self.only_for is None or parent_value in self.only_for

    def names(self) -> list[str]:
        """The Optuna parameter names this param can produce."""
        if self.kind == "fixed":
            return []
        if self.per_optimizer:
            return [LR_POSITION]
        return [self.key]

    def name_for(self, parent_value: Any) -> str:
        return LR_POSITION if self.per_optimizer else self.key

    def distribution(self, parent_value: Any = None) -> BaseDistribution:
        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.per_optimizer:
            return FloatDistribution(0.0, 1.0)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid_values(self) -> list:
        """Values the grid sampler walks; empty when the param has no finite set of values."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.grid:
            return list(self.grid)
        if self.kind == "int" and not self.log and (int(self.high) - int(self.low)) // int(self.step or 1) < 64:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return []


def parent_value(param: Param, flat: Mapping[str, Any], base_flat: Mapping[str, Any]) -> Any:
    if param.parent is None:
        return None
    return flat.get(param.parent, base_flat.get(param.parent))


def ordered(params: tuple[Param, ...]) -> list[Param]:
    """Parents first, so children can see which optimizer/scheduler was drawn."""
    return sorted(params, key=lambda p: p.key not in PARENTS.values())


def suggest(trial: optuna.Trial, params: tuple[Param, ...], base_flat: Mapping[str, Any]) -> dict[str, Any]:
    """Draw every active parameter of a trial; returns flat config overrides (dotted keys)."""
    flat: dict[str, Any] = {}
    for param in ordered(params):
        if param.kind == "fixed":
            flat[param.key] = param.value
            continue
        pv = parent_value(param, flat, base_flat)
        if not param.active(pv):
            continue
        name = param.name_for(pv)
        if param.kind == "categorical":
            flat[param.key] = trial.suggest_categorical(name, list(param.choices))
        elif param.per_optimizer:
            flat[param.key] = lr_from_position(trial.suggest_float(name, 0.0, 1.0), *param.per_choice[pv])
        elif param.kind == "int":
            flat[param.key] = trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
        else:
            flat[param.key] = trial.suggest_float(name, float(param.low), float(param.high), step=param.step, log=param.log)
    return flat


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one of the distribution's values (bounds and step respected)."""
    if isinstance(dist, CategoricalDistribution):
        return any(value == c and type(value) is type(c) or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == c) for c in dist.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if not dist.low - 1e-12 * abs(dist.low) <= value <= dist.high + 1e-12 * abs(dist.high):
        return False
    step = getattr(dist, "step", None)
    if step is not None:
        k = (value - dist.low) / step
        return abs(k - round(k)) < 1e-8
    return True


def params_for(params: tuple[Param, ...], flat: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[Param, Any, BaseDistribution]]]:
    """Optuna params that reproduce the flat config values `flat` (a full `to_flat()` dict), for
    enqueueing a known config. Returns (params, misses): misses are values outside the space."""
    out: dict[str, Any] = {}
    misses = []
    for param in ordered(params):
        if param.kind == "fixed":
            continue
        pv = flat.get(param.parent) if param.parent else None
        if not param.active(pv):
            continue
        if param.per_optimizer and pv not in param.per_choice:
            continue
        dist = param.distribution(pv)
        value = flat.get(param.key)
        if param.per_optimizer:
            low, high = param.per_choice[pv]
            dist = FloatDistribution(low, high, log=True)
            if contains(dist, value):
                out[LR_POSITION] = min(1.0, max(0.0, position_from_lr(value, low, high)))
            else:
                misses.append((param, value, dist))
            continue
        if contains(dist, value):
            out[param.name_for(pv)] = int(value) if isinstance(dist, IntDistribution) else value
        else:
            misses.append((param, value, dist))
    return out, misses


def grid_space(params: tuple[Param, ...]) -> dict[str, list]:
    """The grid sampler's search space: every Optuna param name -> its values."""
    space: dict[str, list] = {}
    for param in params:
        for name in param.names():
            space[name] = param.grid_values()
    return space


def describe(dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        return "one of " + ", ".join(repr(c) for c in dist.choices)
    text = f"[{dist.low:g}, {dist.high:g}]"
    if dist.log:
        text += " (log)"
    if getattr(dist, "step", None) not in (None, 1):
        text += f" step {dist.step:g}"
    return text
