"""The report as a record: every number and claim a report shows, as plain frozen data (what
`dlnn report --json` prints and tests read), before anything is drawn or formatted. Renderers
(render.py) only format it; figures.py draws the figures from the data they carry."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .evidence import Claim

FORMAT = 1  # the record's format version (in --json output)


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]  # raw values: numbers stay numbers (None: no value); a column named "… %" holds percents


@dataclass(frozen=True)
class Figure:
    name: str  # the PNG's file name without suffix
    caption: str
    data: dict  # what figures.py draws, in plain lists and numbers


@dataclass(frozen=True)
class Claims:
    claims: tuple[Claim, ...]


@dataclass(frozen=True)
class Section:
    title: str
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Record:
    study: str
    description: str
    basis: str
    tally: dict[str, int]
    sections: tuple[Section, ...]
    claims: tuple[Claim, ...] = field(default=())  # every claim of the Answers, for comparisons between runs
    format: int = FORMAT


def table(headers: list[str], rows: list[list[Any]]) -> Table:
    return Table(tuple(headers), tuple(tuple(r) for r in rows))


def to_json(record: Record) -> dict:
    """The record as JSON-safe data (non-finite floats as strings)."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        return x

    def kinded(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            out = {"type": type(x).__name__.lower()}
            for f in dataclasses.fields(x):
                out[f.name] = kinded(getattr(x, f.name))
            if isinstance(x, Claim):
                out["label"] = x.label
            return out
        if isinstance(x, (list, tuple)):
            return [kinded(v) for v in x]
        if isinstance(x, dict):
            return {k: kinded(v) for k, v in x.items()}
        return x

    return clean(kinded(record))


def claims_from_json(data: dict) -> list[Claim]:
    """The claims of a record printed by `dlnn report --json` (for `--against`)."""
    names = {f.name for f in dataclasses.fields(Claim)}
    out = []
    for c in data.get("claims", []):
        kw = {k: v for k, v in c.items() if k in names}
        for k in ("effect", "low", "high", "bound"):
            if isinstance(kw.get(k), str):
                kw[k] = float(kw[k])
        out.append(Claim(**kw))
    return out
