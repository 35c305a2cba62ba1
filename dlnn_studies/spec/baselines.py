"""A study's baselines: known configs enqueued before sampling starts, from a spec's [[baseline]]
tables (a preset's recipe and/or dotted params) or from an earlier study's best trials (`launch
--from`), each as the Optuna params it takes in the search space plus the settings outside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from dlnn_core import ConfigError
from dlnn_core.config import PRESETS, TrainConfig
from dlnn_core.dotted import flatten

from .problems import Problem, at, from_config, unknown
from .space import Param, describe, params_for

# Fields a preset or an old study's best config carries into a baseline: the recipe, not the data or the loop.
RECIPE_PREFIXES = ("optimizer.", "scheduler.", "model.")
RECIPE_KEYS = ("loss", "batch_size", "grad_clip")


@dataclass(frozen=True)
class Baseline:
    """A known config enqueued before sampling starts: its Optuna params and the settings outside the space."""

    name: str
    config: TrainConfig
    params: dict[str, Any]
    overrides: dict[str, Any]  # flat settings that differ from base and are not searched


def read_baselines(items: list, base: TrainConfig, space: list[Param], problems: list[Problem]) -> list[Baseline]:
    """The [[baseline]] tables as Baselines (a preset's recipe and/or dotted params on the base), each checked against the space."""
    out = []
    names = set()
    for i, b in enumerate(items):
        where = f"baseline[{i}]"
        for k in b:
            if k not in ("name", "preset", "params"):
                problems.append(at(f"{where}.{k}", k, "name, preset, params", "unknown key; known: name, preset, params"))
        name = b.get("name", b.get("preset", f"baseline-{i}"))
        if not isinstance(name, str):
            problems.append(at(f"{where}.name", name, "a string", "must be a string"))
            continue
        if name in names:
            problems.append(at(f"{where}.name", name, "a name no other baseline has", f"{name!r} is used twice"))
        names.add(name)
        flat: dict[str, Any] = {}
        preset = b.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                problems.append(unknown(f"{where}.preset", "preset", preset, sorted(PRESETS)))
                continue
            flat.update(recipe(PRESETS[preset].to_flat()))
        params = b.get("params", {})
        if not isinstance(params, dict):
            problems.append(at(f"{where}.params", params, "a table of dotted settings", "must be a table of dotted settings"))
            continue
        flat.update(flatten(params, keep=("data.params",)))
        baseline = make_baseline(name, base, space, flat, where, problems.append, strict=True)
        if baseline is not None:
            out.append(baseline)
    return out


def recipe(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a flat config that makes a recipe: optimizer, scheduler, model, loss, batch size, clipping."""
    return {k: v for k, v in flat.items() if k.startswith(RECIPE_PREFIXES) or k in RECIPE_KEYS}


def make_baseline(name: str, base: TrainConfig, space: list[Param] | tuple[Param, ...], flat: Mapping[str, Any],
                  where: str, report, strict: bool) -> Baseline | None:
    """A config (base + flat overrides) as an enqueueable trial; `report` takes each Problem. strict:
    values outside the space are errors (a spec's baselines); otherwise they are dropped and left to
    the sampler (launch --from)."""
    try:
        cfg = base.with_flat(flat)
    except ConfigError as exc:
        report(from_config(where, exc, name_first=True))
        return None
    full = cfg.to_flat()
    params, misses = params_for(tuple(space), full)
    # Searched settings the baseline does not give are left to the sampler; the ones it gives must fit the space.
    given = {k for k in flat}
    explicit = {p.key for p in space if p.key in given}
    key_of = {n: p.key for p in space for n in p.names()}
    params = {name: value for name, value in params.items() if key_of.get(name) in explicit}
    misses = [m for m in misses if m[0].key in explicit]
    for param, value, dist in misses:
        if strict:
            report(at(where, value, f"{param.path} ({describe(dist)})",
                      f"{param.key} = {value!r} lies outside {param.path} ({describe(dist)}); widen the space or change the baseline"))
    if strict and misses:
        return None
    searched = {p.key for p in space}
    base_flat = base.to_flat()
    overrides = {k: v for k, v in full.items() if k not in searched and base_flat.get(k) != v} if strict else {}
    return Baseline(name=name, config=cfg, params=params, overrides=overrides)
