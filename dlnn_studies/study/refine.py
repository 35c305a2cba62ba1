"""`dlnn refine STUDY`: the second stage practitioners use, a grid around the best region.

The new study fixes the best trial's categorical choices (optimizer, scheduler, activation, ...)
and grids each numeric setting over the range the top `--around` trials with those same choices
span (widened a little when they agree, clipped to the old space), `--points` values per setting
plus the best trial's own value. Those top trials with the same choices (and only those: others
would mix incomparable trials into its plots and importances) are copied into the new study as
completed trials (its seeds), so its best is never worse than the old best and the grid's own
run of the best values shows how reproducible that result is.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from dlnn_core.dotted import assign

from . import records
from ..errors import UsageError
from ..spec.names import check_name
from .service import ranked_trials, stored_spec
from ..spec.space import Param
from ..spec.schema import StudySpec, parse_spec
from ..store.storage import close_storage, open_storage


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _numeric_grid(p: Param, values: list[float], best: float, points: int, bounds: tuple[float, float]) -> dict[str, Any]:
    """A refined numeric param as a spec table: low/high (clipped to the old bounds) and its grid."""
    lo, hi = min(values), max(values)
    low0, high0 = bounds
    log = p.log or p.per_optimizer
    if p.kind == "int":
        step = int(p.step or 1)
        if lo == hi:
            lo, hi = lo - step, hi + step
        lo, hi = max(int(low0), int(lo)), min(int(high0), int(hi))
        grid = {int(round(v)) for v in np.linspace(lo, hi, points)} | {int(best)}
        grid = sorted({int(low0) + step * round((g - int(low0)) / step) for g in grid})
        grid = [g for g in grid if lo <= g <= hi] or [int(best)]
        lo, hi = min(grid), max(grid)
        if lo == hi:
            return {"value": lo}
        table = {"low": lo, "high": hi, "grid": grid}
        if step != 1:
            table["step"] = step
        return table
    if lo == hi:
        lo, hi = (lo / 2, hi * 2) if log else (lo - 0.1 * (high0 - low0), hi + 0.1 * (high0 - low0))
    lo, hi = max(low0, lo), min(high0, hi)
    raw = np.geomspace(lo, hi, points) if log else np.linspace(lo, hi, points)
    grid = sorted({_round(v) for v in raw} | {best})
    grid = [g for g in grid if low0 <= g <= high0]
    lo, hi = min(grid), max(grid)
    if lo == hi:
        return {"value": lo}
    table = {"low": lo, "high": hi, "grid": grid}
    if log:
        table["log"] = True
    return table


def refine_spec(spec: StudySpec, ranked: list[FrozenTrial], *, name: str, around: int, points: int, max_trials: int,
                trial: int | None = None) -> tuple[StudySpec, list[FrozenTrial]]:
    """The refine study's spec and the trials to seed it with."""
    if not ranked:
        raise UsageError("the study has no completed feasible trials to refine around")
    if points < 2:
        raise UsageError(f"--points {points}: expected at least 2")
    if trial is not None:
        chosen = [t for t in ranked if t.number == trial]
        if not chosen:
            raise UsageError(f"--trial {trial}: not a completed feasible trial of the study")
        best = chosen[0]
    else:
        best = ranked[0]
    flat = {t.number: records.trial_flat(t) for t in ranked[: max(around, 1)] + [best]}
    best_flat = flat[best.number]
    categorical = [p for p in spec.space if p.kind == "categorical"]
    same = [t for t in ranked[:around] if all(flat[t.number].get(p.key) == best_flat.get(p.key) for p in categorical)]
    if best not in same:
        same.insert(0, best)
    raw = copy.deepcopy(spec.raw)
    raw["study"] = {**raw.get("study", {}), "name": name,
                    "description": f"grid refinement of {spec.name} around trial {best.number} (top {around})"}
    raw["sampler"] = {"name": "grid"}
    # Its points are all near the best: a median pruner's cut among near-equal curves is a coin
    # toss (on quick-refine it cut the winner's own rerun at epoch 2), so a refine never prunes.
    raw["pruner"] = {"name": "none"}
    raw.pop("baseline", None)
    raw.get("budget", {}).pop("timeout_s", None)
    base = raw.setdefault("base", {})
    space: dict[str, Any] = {}
    sizes = []
    for p in spec.space:
        parent_value = best_flat.get(p.parent) if p.parent else None
        if p.kind == "fixed" or not p.active(parent_value):
            continue
        if p.kind == "categorical":
            assign(base, p.key, best_flat[p.key])
            continue
        values = [flat[t.number][p.key] for t in same]
        bounds = p.per_choice[parent_value] if p.per_optimizer else (p.low, p.high)
        table = _numeric_grid(p, values, best_flat[p.key], points, bounds)
        if "value" in table:
            assign(base, p.key, table["value"])
            continue
        assign(space, p.key, table)
        sizes.append((p.key, len(table["grid"])))
    size = math.prod(n for _, n in sizes) if sizes else 1
    if size > max_trials:
        detail = " × ".join(f"{n} ({k})" for k, n in sizes)
        raise UsageError(f"the refine grid has {size} points ({detail}), more than --max-trials {max_trials}; "
                         "use fewer --points or raise --max-trials")
    if not sizes:
        raise UsageError("the best trials agree on every setting: there is nothing left to refine")
    raw["space"] = space
    seeds = same
    raw.setdefault("budget", {})["trials"] = size + len(seeds)
    new = parse_spec(raw, source=f"refine spec for {spec.name}")
    return new, seeds


def refine(url: str, name: str, *, around: int = 5, points: int = 3, new_name: str | None = None, max_trials: int = 100,
           trial: int | None = None, log=print):
    """Launch the refine study on the same storage and seed it; returns its spec."""
    from .launch import launch

    if new_name is not None:
        check_name(new_name, "--name")
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        if spec.multi_objective:
            raise UsageError(f"study {name!r} has several objectives; refine needs one (export its Pareto front instead)")
        ranked = ranked_trials(optuna.load_study(study_name=name, storage=storage))
    finally:
        close_storage(storage)
    new_spec, seeds = refine_spec(spec, ranked, name=new_name or f"{name}-refine", around=around, points=points,
                                  max_trials=max_trials, trial=trial)
    launched = launch(new_spec, url, log=log, seed_with=(name, seeds))
    return new_spec, launched
