"""The one user-facing error type of the library: a bad value, named with its field."""

from __future__ import annotations

from typing import Any, Iterable


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field, the value and what is."""

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}: {value!r} is not allowed; expected {allowed}")


def choose(registry: dict, name: str, field: str) -> Any:
    """Look `name` up in a registry dict, failing with the list of known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ConfigError(field, name, sorted(registry)) from None
