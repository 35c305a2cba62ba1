"""How one setting's value is read and checked, as data: a `Number`, `Integer`, `Boolean` or `OneOf`
rule per field. Every config class lists its fields' rules (`RULES`), runs them when it is built,
and config.FIELD_RULES gathers them by dotted name, so the spec checks a searched value by the same
rule without building a TrainConfig. `LIMITS` holds each numeric setting's upper bound beside them.

Numbers are read one way for every field and every source (YAML, TOML, JSON, `--set KEY=VALUE`):
YAML 1.1 reads `1e-3` as the string "1e-3", so `as_number` reads a string written as a number as
that number (`data.noise: 1e-2` as `optimizer.lr: 1e-3`, `--set epochs=1e4` as `epochs: 10000`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Collection, Mapping

from .errors import ConfigError


# A decimal number as YAML or a shell writes it: digits, an optional point, an optional exponent.
_NUMERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def as_number(value: Any) -> Any:
    """The one number coercion: a string written as a decimal number ("1e-3", "2.5", "1e4") is that
    number, an int when it is whole ("1e4" -> 10000, exactly) else a float; anything else, words
    ("nan", "fast") included, is returned as it is, for the field's rule to judge."""
    if not isinstance(value, str) or not _NUMERAL.fullmatch(value.strip()):
        return value
    exact = Decimal(value.strip())
    return int(exact) if exact == exact.to_integral_value() and abs(exact.adjusted()) <= 30 else float(exact)


@dataclass(frozen=True)
class Number:
    """A finite float within optional bounds (None where `optional`); `what` replaces the generated text."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    optional: bool = False
    what: str = ""

    def allowed(self) -> str:
        if self.what:
            return self.what
        text = "a finite number"
        if self.low is not None:
            text += f" {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            text += f"{' and' if self.low is not None else ''} {'<' if self.high_open else '<='} {self.high}"
        return text + (" (or null)" if self.optional else "")

    def read(self, value: Any) -> Any:
        """The value as a float (numbers written as strings included: as_number); ValueError when the rule refuses it."""
        if value is None and self.optional:
            return None
        value = as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        number = float(value)
        too_low = self.low is not None and (number < self.low or (self.low_open and number == self.low))
        too_high = self.high is not None and (number > self.high or (self.high_open and number == self.high))
        if not math.isfinite(number) or too_low or too_high:
            raise ValueError
        return number


@dataclass(frozen=True)
class Integer:
    """An int >= low; an integral float (2.0 from a float search space) is read as its int, and a
    whole number written as a string ("1e4", from YAML or --set) too (as_number)."""

    low: int = 1
    what: str = ""

    def allowed(self) -> str:
        return self.what or f"an integer >= {self.low}"

    def read(self, value: Any) -> int:
        value = as_number(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < self.low:
            raise ValueError
        return value


@dataclass(frozen=True)
class Boolean:
    def allowed(self) -> str:
        return "true or false"

    def read(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value


@dataclass(frozen=True)
class OneOf:
    """One of the names of `choices` (a registry dict or a tuple of names)."""

    choices: Collection[str] = field(hash=False)

    def allowed(self) -> list[str]:
        return sorted(self.choices)

    def read(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:  # every choice is a name; a list would not even hash
            raise ValueError
        return value


Rule = Number | Integer | Boolean | OneOf


def check_value(rule: Rule, key: str, value: Any) -> tuple[Any, ConfigError | None]:
    """(the value as the rule reads it, None), or (the value, the ConfigError naming `key`)."""
    try:
        return rule.read(value), None
    except (TypeError, ValueError):
        return value, ConfigError(key, value, rule.allowed())


def check_fields(errors: list[ConfigError], owner: Any, prefix: str, rules: Mapping[str, Rule]) -> set[str]:
    """Run every rule on `owner`'s field of that name, storing the value as read (owner may be a
    frozen dataclass being built); appends each refusal to `errors` and returns the refused names."""
    refused = set()
    for name, rule in rules.items():
        value, error = check_value(rule, f"{prefix}{name}", getattr(owner, name))
        if error is None:
            object.__setattr__(owner, name, value)
        else:
            errors.append(error)
            refused.add(name)
    return refused


# ----------------------------------------------------------------------------- limits

@dataclass(frozen=True)
class Limit:
    """The upper bound of one numeric setting (its lower bound is checked with the field), or
    None for unbounded, with the reason; `integer`: the setting takes whole numbers only."""

    high: float | None
    why: str
    integer: bool = False


_EPOCHS = 10**6
_SAMPLES = 10**8
# Every numeric TrainConfig setting, by its dotted name: one table, checked when a TrainConfig is
# built, so a study's base and the extremes of its search space are checked at launch. Bounds are
# where a run stops being a plausible experiment on one machine (memory or time), not tuning advice.
LIMITS: dict[str, Limit] = {
    "data.n_train": Limit(_SAMPLES, "states (or trajectories): 10^8 states already take gigabytes of float64", integer=True),
    "data.n_val": Limit(_SAMPLES, "validation states (or trajectories), evaluated every epoch: the data.n_train bound", integer=True),
    "data.n_test": Limit(_SAMPLES, "test and ood states (or trajectories): the data.n_train bound", integer=True),
    "data.n_rollout": Limit(10**5, "rollout trajectories per split, integrated together by DOP853", integer=True),
    "data.rollout_steps": Limit(10**6, "samples per rollout trajectory; every metric rolls the model out this far", integer=True),
    "data.duration": Limit(10**4, "seconds per trajectory; duration × rate_hz samples each"),
    "data.rate_hz": Limit(10**4, "samples per second of trajectories"),
    "data.noise": Limit(None, "a noise std of any size is computable; a large one only makes the data useless, which the metrics show"),
    "data.savgol_window": Limit(10**4 + 1, "samples in the Savitzky–Golay window (clipped to the trajectory length)", integer=True),
    "data.savgol_order": Limit(20, "polynomial order of the Savitzky–Golay fit; higher orders are numerically meaningless", integer=True),
    "data.ood_scale": Limit(100, "the ood box as a multiple of the training box"),
    "data.params": Limit(None, "physical parameters: each system checks its own"),
    "data.declared": Limit(None, "a declared system: its expressions are bounded in size and checked on its box (dlnn_core/declared.py)"),
    "data.file_split": Limit(None, "fractions of the file's trajectories, each in [0, 1] and summing to 1 (its own check)"),
    "model.hidden": Limit(65536, "width of each hidden layer: wider ones do not fit a GPU's memory", integer=True),
    "model.depth": Limit(64, "hidden layers; second derivatives through deeper networks are too slow to search", integer=True),
    "model.mass_eps": Limit(None, "a regularizer added to the mass matrix; any positive value is computable"),
    "optimizer.lr": Limit(None, "too large a rate diverges, which fit detects and the service records as infeasible"),
    "optimizer.weight_decay": Limit(None, "too much decay only shrinks the model, which the metrics show"),
    "optimizer.momentum": Limit(None, "bounded by its own check: [0, 1)"),
    "optimizer.betas": Limit(None, "bounded by its own check: each in [0, 1)"),
    "optimizer.eps": Limit(None, "a numerical guard; large values only slow training"),
    "optimizer.d0": Limit(None, "D-Adaptation's initial distance estimate; the optimizer adapts it"),
    "scheduler.warmup_t": Limit(_EPOCHS, "epochs, so no more than the epochs bound"),
    "scheduler.warmup_lr_init": Limit(None, "a rate (multiplier): too large diverges, which fit detects"),
    "scheduler.lr_min": Limit(None, "a rate (multiplier): too large diverges, which fit detects"),
    "scheduler.t_initial": Limit(_EPOCHS, "epochs, so no more than the epochs bound"),
    "scheduler.cycle_limit": Limit(_EPOCHS, "cycles of at least one epoch each", integer=True),
    "scheduler.cycle_decay": Limit(None, "a factor on each restart's peak rate: too large diverges, which fit detects"),
    "scheduler.step_size": Limit(_EPOCHS, "epochs, so no more than the epochs bound", integer=True),
    "scheduler.gamma": Limit(None, "bounded by its own check: (0, 1]"),
    "scheduler.patience": Limit(_EPOCHS, "epochs, so no more than the epochs bound", integer=True),
    "scheduler.factor": Limit(None, "bounded by its own check: (0, 1)"),
    "batch_size": Limit(_SAMPLES, "samples per step, and never more than the training set (checked with data.n_train)", integer=True),
    "epochs": Limit(_EPOCHS, "a run of a million epochs is not a trial; budget.timeout_s also stops trials", integer=True),
    "grad_clip": Limit(None, "a norm cap: a large one means no clipping"),
    "rollout_horizon": Limit(None, "bounded by the samples per trajectory (checked with data.duration and rate_hz)", integer=True),
    "rollout_weight": Limit(None, "a loss weight; divergence is detected and recorded"),
    "rollout_batch": Limit(10**6, "rollout windows per step, each integrated through rollout_horizon steps", integer=True),
    "shooting_iters": Limit(10**5, "L-BFGS iterations after the epochs, each a rollout of every segment", integer=True),
    "shooting_segment": Limit(None, "bounded by the samples per trajectory (checked with data.duration and rate_hz)", integer=True),
    "shooting_check": Limit(10**5, "evaluations between validation checks of the shooting fit", integer=True),
    "seed": Limit(2**32 - 1, "32-bit seeds: more gain nothing and some tools refuse them", integer=True),
    "data_seed": Limit(2**32 - 1, "32-bit seeds: more gain nothing and some tools refuse them", integer=True),
}


def check_limit(errors: list[ConfigError], key: str, value: Any) -> None:
    """Refuse `value` above the LIMITS bound of `key` (if it has one)."""
    limit = LIMITS.get(key)
    if limit is not None and limit.high is not None and isinstance(value, (int, float)) and value > limit.high:
        bound = f"{limit.high:,}" if isinstance(limit.high, int) else f"{limit.high:g}"
        errors.append(ConfigError(key, value, f"at most {bound} ({limit.why})"))
