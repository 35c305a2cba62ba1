"""The user-facing error types of the library: a bad value named with its field (`ConfigError`), and
every problem of a declared system at once (`DeclarationError`)."""

from __future__ import annotations

from typing import Any, Iterable


def shorten(text: str, width: int = 80) -> str:
    """`text` cut to at most `width` characters, its middle replaced by " … ", so that a huge value
    (a 10,000-character name, a pasted file) cannot swamp the message that quotes it."""
    text = str(text)
    if len(text) <= width:
        return text
    keep = max(width - 3, 2)  # characters of the text kept: two thirds from its start, one third from its end
    return f"{text[: keep - keep // 3]} … {text[len(text) - keep // 3:]}"


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the field, the value and what is."""

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{shorten(field)}: {shorten(repr(value))} is not allowed; expected {allowed}")


class DeclarationError(ConfigError):
    """Every problem of a declared system at once, each as (field, message); `field` is the first's."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        self.field, self.value, self.allowed = problems[0][0], None, problems[0][1]
        ValueError.__init__(self, "; ".join(f"{field}: {message}" for field, message in problems))


def choose(registry: dict, name: str, field: str) -> Any:
    """Look `name` up in a registry dict, failing with the list of known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ConfigError(field, name, sorted(registry)) from None
