"""The user-facing error types of the library: a bad value named with its field (`ConfigError`, which
can carry several problems, so a config reports every bad field at once), and every problem of a
declared system at once (`DeclarationError`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence


def shorten(text: str, width: int = 80) -> str:
    """`text` cut to at most `width` characters, its middle replaced by " … ", so that a huge value
    (a 10,000-character name, a pasted file) cannot swamp the message that quotes it."""
    text = str(text)
    if len(text) <= width:
        return text
    keep = max(width - 3, 2)  # characters of the text kept: two thirds from its start, one third from its end
    return f"{text[: keep - keep // 3]} … {text[len(text) - keep // 3:]}"


@dataclass(frozen=True)
class Problem:
    """One bad value: its field, the value, what is allowed, and the message that says so without
    the field (a study spec puts its own path there)."""

    field: str
    value: Any
    allowed: str
    message: str

    def __str__(self) -> str:
        return f"{shorten(self.field)}: {self.message}"


def problem(field: str, value: Any, allowed: str | Iterable[Any]) -> Problem:
    """The usual problem, "VALUE is not allowed; expected ALLOWED"; a list of choices reads "one of ..."."""
    if not isinstance(allowed, str):
        allowed = "one of " + ", ".join(repr(a) for a in allowed)
    return Problem(field, value, allowed, f"{shorten(repr(value))} is not allowed; expected {allowed}")


class ConfigError(ValueError):
    """Configuration values that are not allowed: `problems` holds every one, each naming the field,
    the value and what is allowed; `field`, `value` and `allowed` are the first's. The message has
    one line per problem."""

    problems: tuple[Problem, ...]

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        self._hold((problem(field, value, allowed),))

    @classmethod
    def of(cls, problems: Iterable[Problem], text: str | None = None) -> "ConfigError":
        """One error carrying `problems` (at least one); `text` replaces the one-line-each message."""
        error = cls.__new__(cls)
        error._hold(tuple(problems), text)
        return error

    def _hold(self, problems: tuple[Problem, ...], text: str | None = None) -> None:
        self.problems = problems
        self.field, self.value, self.allowed = problems[0].field, problems[0].value, problems[0].allowed
        ValueError.__init__(self, "\n".join(str(p) for p in problems) if text is None else text)


def collect(errors: list[ConfigError], check: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Run `check`, keeping the ConfigError it raises in `errors` instead of stopping; True when it raised none."""
    try:
        check(*args, **kwargs)
    except ConfigError as exc:
        errors.append(exc)
        return False
    return True


def raise_all(errors: Sequence[ConfigError]) -> None:
    """Raise nothing, the one error found (as it was raised), or one ConfigError with every problem of several."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError.of(p for error in errors for p in error.problems)


class DeclarationError(ConfigError):
    """Every problem of a declared system at once, given as (field, message); one line, "; " between them."""

    def __init__(self, problems: list[tuple[str, str]]):
        self._hold(tuple(Problem(field, None, message, message) for field, message in problems),
                   "; ".join(f"{field}: {message}" for field, message in problems))


def choose(registry: dict, name: str, field: str) -> Any:
    """Look `name` up in a registry dict, failing with the list of known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise ConfigError(field, name, sorted(registry)) from None
