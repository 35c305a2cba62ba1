"""How one setting's value is read and checked, as data: a `Number`, `Integer`, `Boolean` or `OneOf`
rule per field. Every config class lists its fields' rules (`RULES`), runs them when it is built,
and config.FIELD_RULES gathers them by dotted name, so the spec checks a searched value by the same
rule without building a TrainConfig.

Numbers are read one way for every field and every file format: YAML 1.1 reads `1e-3` as the
string "1e-3", so a numeric string is a number here (`data.noise: 1e-2` as `optimizer.lr: 1e-3`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

from .errors import ConfigError


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
        """The value as a float (numeric strings included); ValueError when the rule refuses it."""
        if value is None and self.optional:
            return None
        if isinstance(value, bool):
            raise ValueError
        number = float(value)  # TypeError/ValueError for a value (a list, a word) that is no number
        too_low = self.low is not None and (number < self.low or (self.low_open and number == self.low))
        too_high = self.high is not None and (number > self.high or (self.high_open and number == self.high))
        if not math.isfinite(number) or too_low or too_high:
            raise ValueError
        return number


@dataclass(frozen=True)
class Integer:
    """An int >= low; an integral float (2.0 from a float search space) is read as its int."""

    low: int = 1
    what: str = ""

    def allowed(self) -> str:
        return self.what or f"an integer >= {self.low}"

    def read(self, value: Any) -> int:
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
