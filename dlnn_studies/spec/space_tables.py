"""The [space.*] tables of a study spec, read and checked into the search space's `Param`s
(space.py draws them): each value checked by its field rule alone where that says it all
(config.check_setting), else with the base config; conditions on the optimizer or scheduler
resolved against the parents the study can draw. schema.py reads the rest of the spec."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from dlnn_core import ACTIVATIONS, METHODS, MODEL_FORMS, MODEL_KINDS, SYSTEMS, ConfigError
from dlnn_core.activations import ZERO_CURVATURE
from dlnn_core.config import FIELD_RULES, LIMITS, TrainConfig, check_setting
from dlnn_core.losses import LOSSES
from dlnn_core.model_config import INIT_CHOICES
from dlnn_core.optim import OPTIMIZERS, SCHEDULERS, reads

from .problems import Problem, at, from_config, known, unknown
from .space import PARENTS, Param

# Registries behind names users write, for "unknown X; known: ..." messages.
NAMED = {
    "optimizer.name": ("optimizer", OPTIMIZERS),
    "scheduler.name": ("scheduler", SCHEDULERS),
    "loss": ("loss", LOSSES),
    "model.activation": ("activation", ACTIVATIONS),
    "model.kind": ("model kind", MODEL_KINDS),
    "model.form": ("model form", MODEL_FORMS),
    "model.init": ("initialization", INIT_CHOICES),
    "data.system": ("system", SYSTEMS),
    "method": ("method", METHODS),
}
DIST_KEYS = {"choices", "low", "high", "log", "step", "value", "grid", "per_optimizer", "ranges", "only_for"}

# Settings whose values are checked by their field rule alone (config.check_setting); the others are
# checked with the rest of a config: the data's settings (system, file, sizes), the batch and the
# rollout horizon and the shooting settings (against the training set), the optimizer and scheduler
# names (their settings), and the model kind (the activation's curvature).
TOGETHER = frozenset({"batch_size", "rollout_horizon", "shooting_iters", "shooting_segment", "optimizer.name", "scheduler.name", "model.kind"})
ALONE = frozenset(k for k in FIELD_RULES if k not in TOGETHER and not k.startswith("data."))
# Settings checked together in space() (largest batch vs smallest training set), so each alone is
# checked with its partner at its most permissive value.
PAIRED = {"batch_size": {"data.n_train": LIMITS["data.n_train"].high}, "data.n_train": {"batch_size": 1}}


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def extreme(p: Param, pick) -> Any:
    """The smallest or largest value (pick = min or max) a numeric param can take, or None."""
    values = [p.value] if p.kind == "fixed" else list(p.choices) if p.kind == "categorical" else [p.low, p.high]
    values = [v for v in values if is_num(v)]
    return pick(values) if values else None


def _check_value(base: TrainConfig, key: str, value: Any, where: str, problems: list[Problem], context: Mapping[str, Any] | None = None) -> bool:
    """Is `value` a valid setting for `key` (given the parent choice in `context`)? Reports at `where`."""
    if key in NAMED:
        what, registry = NAMED[key]
        if not isinstance(value, str) or value not in registry:
            problems.append(unknown(where, what, value, sorted(registry)))
            return False
    if key == "model.activation" and value in ZERO_CURVATURE:
        return True  # allowed only for an MLP baseline: decided in read_space(), which knows the model kinds
    if key in ALONE:  # its field rule and LIMITS bound say it all: no config is built
        error = check_setting(key, value)
        if error is not None:
            problems.append(from_config(where, error))
        return error is None
    try:
        base.with_flat({**(context or {}), key: value})
    except ConfigError as exc:
        problems.append(from_config(where, exc))
        return False
    return True


# ------------------------------------------------------------------------------- space


def read_space(t: dict, base: TrainConfig, problems: list[Problem]) -> list[Param]:
    """Every [space.*] table as a Param, checked alone, against each other and against the base."""
    params: list[Param] = []
    _walk(t, [], base, params, problems)
    keys = [p.key for p in params]
    for key in set(keys):
        if keys.count(key) > 1:
            problems.append(at("space", key, "each setting once", f"{key} is given more than once"))
    by_key = {p.key: p for p in params}
    _curvature(by_key, base, problems)
    _batch_fits(by_key, base, problems)
    # Children of optimizer/scheduler: resolve and check the conditions now that the parents are known.
    base_flat = base.to_flat()
    out = []
    for p in params:
        if p.parent is None:
            out.append(p)
            continue
        parent = by_key.get(p.parent)
        candidates = list(parent.choices) if parent and parent.kind == "categorical" else [parent.value if parent else base_flat[p.parent]]
        out.append(_condition(p, candidates, problems))
    return out


def _curvature(by_key: Mapping[str, Param], base: TrainConfig, problems: list[Problem]) -> None:
    """An activation without curvature is refused when any searched/fixed model kind has an L network."""
    act, kind = by_key.get("model.activation"), by_key.get("model.kind")
    kinds = set(kind.choices) if kind and kind.kind == "categorical" else {kind.value if kind else base.model.kind}
    if act is None or not kinds - {"mlp"}:
        return
    for i, choice in enumerate(act.choices if act.kind == "categorical" else [act.value]):
        if choice in ZERO_CURVATURE:
            where = f"{act.path}.choices[{i}]" if act.kind == "categorical" else f"{act.path}.value"
            problems.append(at(where, choice, "an activation with curvature (any but " + known(sorted(ZERO_CURVATURE)) + ")",
                               f'"{choice}" cannot be used for the Lagrangian network: its second derivative is zero, '
                               "so ∂²L/∂q̇² vanishes and q̈ cannot be solved for (only a model.kind = \"mlp\" baseline may use it)"))


def _batch_fits(by_key: Mapping[str, Param], base: TrainConfig, problems: list[Problem]) -> None:
    """The largest batch must fit the smallest training set (PAIRED: each alone was checked without the other)."""
    batch, n_train = by_key.get("batch_size"), by_key.get("data.n_train")
    if batch is None and n_train is None:
        return
    largest = extreme(batch, max) if batch is not None else base.batch_size
    smallest = extreme(n_train, min) if n_train is not None else base.data.n_train
    if largest is not None and smallest is not None:
        try:
            base.with_flat({"batch_size": largest, "data.n_train": smallest})
        except ConfigError as exc:
            problems.append(from_config((batch or n_train).path, exc, f"the largest batch_size ({largest}) does not fit the "
                                        f"smallest data.n_train ({smallest}): "))


def _walk(t: dict, path: list[str], base: TrainConfig, params: list[Param], problems: list[Problem]) -> None:
    """The tables under [space] (nested by the setting's dotted name), each with distribution keys a Param."""
    dist = {k: v for k, v in t.items() if k in DIST_KEYS}
    if dist:
        if not path:
            problems.append(at("space", list(dist), "a table named for a setting, e.g. [space.optimizer.lr]",
                               f"distribution keys ({', '.join(dist)}) need a setting name, e.g. [space.optimizer.lr]"))
        else:
            param = _param(path, dist, base, problems)
            if param is not None:
                params.append(param)
    for key, value in t.items():
        if key in DIST_KEYS:
            continue
        where = ".".join(["space", *path, key])
        if isinstance(value, dict):
            _walk(value, [*path, key], base, params, problems)
        else:
            problems.append(at(where, value, "a table with choices, low/high or value",
                               f"expected a table with choices, low/high or value (got {value!r})"))


@dataclass(frozen=True)
class _Table:
    """One [space.*] table being read: the setting it searches, its TOML path, its parent and the
    settings its values are checked together with."""

    key: str  # the TrainConfig setting, e.g. "optimizer.lr"
    where: str  # its TOML path, e.g. "space.optimizer.lr"
    parent: str | None  # "optimizer.name" / "scheduler.name" for a setting under space.optimizer / space.scheduler
    only_for: tuple[str, ...] | None
    base: TrainConfig
    context: Mapping[str, Any]  # the parent choice (_context) and PAIRED partners

    def check(self, value: Any, where: str, problems: list[Problem]) -> bool:
        return _check_value(self.base, self.key, value, where, problems, self.context)

    def param(self, **kwargs: Any) -> Param:
        return Param(key=self.key, path=self.where, parent=self.parent, only_for=self.only_for, **kwargs)


def _param(path: list[str], d: dict, base: TrainConfig, problems: list[Problem]) -> Param | None:
    """The Param of the table at space.<path> (its distribution keys `d`), or None with its problems reported."""
    where, key = "space." + ".".join(path), PARENTS.get(".".join(path), ".".join(path))
    parent = PARENTS.get(path[0]) if len(path) == 2 and path[0] in PARENTS else None
    refusal = _unknown_setting(where, key, base)
    if refusal is not None:
        problems.append(refusal)
        return None
    if not _one_form(d, key, where, problems):
        return None
    only_for = _only_for(d.get("only_for"), parent, path[0], where, problems)
    allowed = DIST_KEYS - ({"per_optimizer", "ranges"} if key != "optimizer.lr" else set())
    problems += [at(f"{where}.{k}", d[k], known(sorted(allowed)), "not allowed here") for k in d if k not in allowed]
    table = _Table(key, where, parent, only_for, base, {**_context(parent, only_for, key), **PAIRED.get(key, {})})
    if "value" in d:
        return table.param(kind="fixed", value=d["value"]) if table.check(d["value"], f"{where}.value", problems) else None
    if "choices" in d:
        return _categorical(table, d, problems)
    if d.get("per_optimizer"):
        return _per_optimizer(table, d, problems)
    return _numeric(table, d, problems)


def _unknown_setting(where: str, key: str, base: TrainConfig) -> Problem | None:
    """Why `key` (the table at `where`) is not a TrainConfig setting (with the nearest name and the
    known ones), or None when it is."""
    base_flat = base.to_flat()
    if key in base_flat or key.startswith("data.params."):
        return None
    settings = sorted(k for k in base_flat if not k.startswith("data.params")) + ["data.params.<name>"]
    section = key.split(".")[0] + "." if "." in key else ""
    near = difflib.get_close_matches(key, settings, n=1)
    hint = f' (did you mean "{near[0]}"?)' if near else ""
    near_names = [k for k in settings if section and k.startswith(section)] or [k for k in settings if "." not in k] + ["data.*", "model.*", "optimizer", "optimizer.*", "scheduler", "scheduler.*"]
    names = known(near_names)
    return at(where, key, names, f"not a training setting{hint}; known{' in ' + section[:-1] if section and near_names[0].startswith(section) else ''}: {names}")


def _one_form(d: dict, key: str, where: str, problems: list[Problem]) -> bool:
    """The table gives exactly one of choices, low/high, value or per_optimizer (this last for optimizer.lr only)."""
    forms = [k for k in ("choices", "low", "value", "per_optimizer") if k in d]
    if "high" in d and "low" not in d:
        forms.append("high")
    if len(forms) != 1:
        problems.append(at(where, forms, "exactly one of choices, low/high, value or per_optimizer",
                           "give exactly one of choices = [...], low/high, value or per_optimizer = true"))
        return False
    if "per_optimizer" in d and key != "optimizer.lr":
        problems.append(at(f"{where}.per_optimizer", d["per_optimizer"], "per_optimizer only under space.optimizer.lr",
                           "only optimizer.lr can take its range from each optimizer"))
        return False
    return True


def _only_for(only_for: Any, parent: str | None, section: str, where: str, problems: list[Problem]) -> tuple[str, ...] | None:
    """The optimizers/schedulers a setting under space.optimizer/space.scheduler is drawn for: the
    known names given (None, as if not given, when there are none)."""
    if only_for is None:
        return None
    if parent is None:
        problems.append(at(f"{where}.only_for", only_for, "only_for only under space.optimizer or space.scheduler",
                           "only settings under space.optimizer or space.scheduler can be conditional"))
        return None
    if not isinstance(only_for, list) or not only_for or not all(isinstance(x, str) for x in only_for):
        problems.append(at(f"{where}.only_for", only_for, f"a non-empty list of {section} names",
                           f"must be a non-empty list of {section} names"))
        return None
    what, registry = NAMED[parent]
    for i, name in enumerate(only_for):
        if name not in registry:
            problems.append(unknown(f"{where}.only_for[{i}]", what, name, sorted(registry)))
    return tuple(name for name in only_for if name in registry) or None


def _context(parent: str | None, only_for: tuple[str, ...] | None, key: str) -> dict:
    """The optimizer a setting's values are checked with: the first of only_for that reads it (as
    optim.reads says; how many betas depends on the optimizer), else the base's own."""
    if parent != "optimizer.name" or not only_for:
        return {}
    setting = key.split(".", 1)[1]
    readers = [name for name in only_for if name in OPTIMIZERS and reads(name, setting)]
    return {parent: readers[0]} if readers else {}


def _categorical(table: _Table, d: dict, problems: list[Problem]) -> Param | None:
    """choices = [...]: each a valid value, none twice."""
    where, choices = table.where, d["choices"]
    if not isinstance(choices, list) or not choices:
        problems.append(at(f"{where}.choices", choices, "a non-empty list", "must be a non-empty list"))
        return None
    valid = []
    for i, c in enumerate(choices):
        if isinstance(c, (dict, list)):
            problems.append(at(f"{where}.choices[{i}]", c, "a string, number or boolean", "must be a string, number or boolean"))
        elif table.check(c, f"{where}.choices[{i}]", problems):
            valid.append(c)
    if len({json.dumps(c) for c in choices}) != len(choices):
        problems.append(at(f"{where}.choices", choices, "each value once", "lists a value twice"))
    problems += [at(f"{where}.{k}", d[k], "choices alone", "not allowed with choices") for k in ("low", "high", "log", "step", "grid") if k in d]
    # With bad choices the spec already fails; the valid ones still let later checks run.
    return table.param(kind="categorical", choices=tuple(valid)) if valid else None


def _per_optimizer(table: _Table, d: dict, problems: list[Problem]) -> Param | None:
    """per_optimizer = true: optimizer.lr over each optimizer's own range, or the one `ranges` gives it."""
    where = table.where
    if d.get("per_optimizer") is not True:
        problems.append(at(f"{where}.per_optimizer", d.get("per_optimizer"), "true or absent", "must be true or absent"))
        return None
    ranges = d.get("ranges", {})
    if not isinstance(ranges, dict):
        problems.append(at(f"{where}.ranges", ranges, "a table of optimizer = [low, high]", "must be a table of optimizer = [low, high]"))
        ranges = {}
    problems += [at(f"{where}.{k}", d[k], "per_optimizer and ranges alone",
                    "not allowed with per_optimizer (the ranges come from the optimizer registry or ranges)")
                 for k in ("low", "high", "log", "step", "grid") if k in d]
    per: dict[str, tuple[float, float]] = {}
    for opt, rng in ranges.items():
        rwhere = f"{where}.ranges.{opt}"
        if opt not in OPTIMIZERS:
            problems.append(unknown(rwhere, "optimizer", opt, sorted(OPTIMIZERS)))
        elif not (isinstance(rng, list) and len(rng) == 2 and all(is_num(x) for x in rng) and 0 < rng[0] < rng[1]):
            problems.append(at(rwhere, rng, "[low, high] with 0 < low < high", "must be [low, high] with 0 < low < high"))
        else:
            per[opt] = (float(rng[0]), float(rng[1]))
    # Filled in for the optimizers the study can draw in _condition.
    return table.param(kind="float", log=True, per_optimizer=True, per_choice=per)


def _numeric(table: _Table, d: dict, problems: list[Problem]) -> Param | None:
    """low/high (log, step, grid): an int range when low, high and step are integers, else a float
    one; both ends are checked as values. Any problem reported here leaves no Param."""
    where, low, high = table.where, d.get("low"), d.get("high")
    if not is_num(low) or not is_num(high):
        problems.append(at(where, [low, high], "numbers low < high", f"low and high must both be numbers (got low={low!r}, high={high!r})"))
        return None
    log, step, before = d.get("log", False), d.get("step"), len(problems)
    fractional = _fractional_bounds(table, {"low": low, "high": high, "step": step}, problems)
    if not isinstance(log, bool):
        problems.append(at(f"{where}.log", log, "true or false", "must be true or false"))
        log = False
    if low >= high:
        problems.append(at(where, [low, high], "low < high", f"low must be < high (got low={low}, high={high}); use value = ... for a fixed setting"))
    _scale(where, log, low, step, problems)
    for bound, value in (("low", low), ("high", high)):
        if bound not in fractional:
            table.check(value, f"{where}.{bound}", problems)
    grid = _grid(where, d.get("grid", []), low, high, problems)
    if len(problems) > before:
        return None
    if is_int(low) and is_int(high) and (step is None or is_int(step)):
        return table.param(kind="int", low=int(low), high=int(high), log=log, step=step, grid=tuple(int(g) for g in grid))
    return table.param(kind="float", low=float(low), high=float(high), log=log, step=float(step) if step is not None else None,
                       grid=tuple(float(g) for g in grid))


def _fractional_bounds(table: _Table, bounds: Mapping[str, Any], problems: list[Problem]) -> set[str]:
    """The bounds of an integer setting written as fractions (or as floats: 16.0), each one message."""
    if not (table.key in LIMITS and LIMITS[table.key].integer):
        return set()
    fractional = set()
    for bound, value in bounds.items():
        if is_num(value) and not is_int(value):
            hint = f"; write {int(value)}" if float(value).is_integer() else ""
            problems.append(at(f"{table.where}.{bound}", value, "an integer",
                               f"{value!r} must be an integer ({table.key} takes whole numbers{hint})"))
            fractional.add(bound)
    return fractional


def _scale(where: str, log: bool, low: Any, step: Any, problems: list[Problem]) -> None:
    """A log scale needs low > 0 and no step; a step is a positive number."""
    if log and low <= 0:
        problems.append(at(where, low, "low > 0 on a log scale", f"a log scale needs low > 0 (got low={low})"))
    if step is not None:
        if not is_num(step) or step <= 0:
            problems.append(at(f"{where}.step", step, "a positive number", f"{step!r} must be a positive number"))
        elif log:
            problems.append(at(f"{where}.step", step, "no step on a log scale", "a log scale cannot have a step"))


def _grid(where: str, grid: Any, low: Any, high: Any, problems: list[Problem]) -> list:
    """grid = [...]: numbers in [low, high] for the grid sampler (none when absent or bad)."""
    if not isinstance(grid, list) or not all(is_num(g) for g in grid):
        problems.append(at(f"{where}.grid", grid, "a list of numbers", "must be a list of numbers"))
        return []
    for i, g in enumerate(grid):
        if not low <= g <= high:
            problems.append(at(f"{where}.grid[{i}]", g, f"a number in [{low}, {high}]", f"{g} lies outside [low, high] = [{low}, {high}]"))
    return grid


def _condition(p: Param, candidates: list, problems: list[Problem]) -> Param:
    """Decide for which optimizers/schedulers a child param is drawn, and check that it means something."""
    field = p.key.split(".", 1)[1]
    if p.parent == "optimizer.name":
        meaningful = {n for n in OPTIMIZERS if reads(n, field)}
        what = {"d0": "D-Adaptation/Prodigy optimizers", "momentum": "optimizers with momentum",
                "betas": "optimizers with betas"}.get(field, f"optimizers that read {field}")
    else:
        meaningful = {n for n, i in SCHEDULERS.items() if field in i.fields}
        what = f"schedulers that read {field}"
    only_for = p.only_for
    if only_for is not None:
        for name in only_for:
            if (name in OPTIMIZERS or name in SCHEDULERS) and name not in meaningful:
                problems.append(at(f"{p.path}.only_for", name, known(sorted(meaningful)),
                                   f'{field} means nothing for "{name}"; it applies to {what}: {known(sorted(meaningful))}'))
    else:
        only_for = tuple(sorted(meaningful))
    if not [c for c in candidates if c in only_for]:
        parent_path = f"space.{p.parent.split('.')[0]}"
        problems.append(at(p.path, candidates, known(sorted(meaningful)), f"{field} only applies to {what} ({known(sorted(meaningful))}), "
                           f"and none of {', '.join(map(str, candidates))} (from {parent_path} or base) is one"))
    # Always drawn when every candidate qualifies: a plain, unconditional parameter.
    cond = None if set(candidates) <= set(only_for) else tuple(sorted(set(only_for) & set(candidates)))
    if p.per_optimizer:
        per = {opt: p.per_choice.get(opt, OPTIMIZERS[opt].lr_range) for opt in candidates if opt in OPTIMIZERS}
        for opt in p.per_choice:
            if opt not in candidates:
                problems.append(at(f"{p.path}.ranges.{opt}", opt, known(candidates),
                                   f'"{opt}" is not among the optimizers this study can draw ({", ".join(candidates)})'))
        return Param(**{**p.__dict__, "per_choice": per, "only_for": cond})
    return Param(**{**p.__dict__, "only_for": cond})
