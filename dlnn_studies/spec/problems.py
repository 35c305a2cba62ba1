"""A study spec's problems as data: each a dlnn_core `Problem` (field, value, allowed, message) whose
field is its TOML path (`space.optimizer.lr.low`), as the core's problems name their setting, so a
caller reads the path, the value and what is allowed instead of cutting them out of a message.
`SpecError` (schema.py) prints each as one line, `path: message`."""

from __future__ import annotations

from typing import Any, Iterable

from dlnn_core.errors import ConfigError, Problem

__all__ = ["Problem", "at", "known", "unknown", "from_config", "under"]


def at(path: str, value: Any, allowed: str, message: str) -> Problem:
    """The problem of `value` at the TOML `path`: `allowed` says what may stand there, `message`
    says what is wrong without the path."""
    return Problem(path, value, allowed, message)


def known(names: Iterable[str]) -> str:
    """The allowed names as a message lists them."""
    return ", ".join(names)


def unknown(path: str, what: str, value: Any, names: Iterable[str], quote: bool = True) -> Problem:
    """`unknown <what> "<value>"; known: a, b, c` at `path`: a name not in its registry."""
    allowed = known(names)
    shown = f'"{value}"' if quote else f"{value!r}"
    return Problem(path, value, allowed, f"unknown {what} {shown}; known: {allowed}")


def from_config(path: str, exc: ConfigError, before: str = "", name_first: bool = False) -> Problem:
    """A ConfigError as one problem at `path`, all on one line: the first problem's value and
    allowed values; its message (after `before`, and after its setting when `name_first`: the path
    names another place), then the other problems each with its setting."""
    first, *rest = exc.problems
    lead = str(first) if name_first else first.message
    return Problem(path, first.value, first.allowed, before + "; ".join([lead, *(str(p) for p in rest)]))


def under(prefix: str, exc: ConfigError) -> list[Problem]:
    """Each problem of a ConfigError, once, with its setting's path under the `prefix` table."""
    out, seen = [], set()
    for p in exc.problems:
        if (p.field, p.message) not in seen:  # a value (a list) need not hash
            seen.add((p.field, p.message))
            out.append(Problem(f"{prefix}.{p.field}", p.value, p.allowed, p.message))
    return out
