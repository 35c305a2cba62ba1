"""Sampler and pruner registries, by the names written in a spec's [sampler] and [pruner] tables,
and the checks of those tables (read_sampler, read_pruner).

Optuna does not store samplers or pruners; the spec is kept on the study, and every worker builds
the same ones from it with these factories. Each worker passes its own sampler seed: equal
seeds make parallel workers suggest the same points.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna
from optuna.exceptions import ExperimentalWarning

from .problems import Problem, at, known, unknown
from .space import Param


@dataclass(frozen=True)
class Option:
    """One spec option: its type(s) and default (None: Optuna's own)."""

    types: tuple[type, ...]
    default: Any = None
    check: Callable[[Any], str | None] | None = None  # None when the value is allowed, else what is (e.g. "> 0")


def _positive(v: Any) -> str | None:
    return None if v > 0 else "> 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else ">= 0"


def _percent(v: Any) -> str | None:
    return None if 0 <= v <= 100 else "in [0, 100]"


def _at_least_2(v: Any) -> str | None:
    return None if v >= 2 else ">= 2"


def _resource(v: Any) -> str | None:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return None
    return '"auto" or an integer >= 1'


INT, FLOAT, BOOL = (int,), (int, float), (bool,)


@dataclass(frozen=True)
class SamplerInfo:
    name: str
    build: Callable[..., optuna.samplers.BaseSampler]  # (options, seed, grid_space) -> sampler
    options: Mapping[str, Option]
    multi_objective: bool
    description: str
    requires: str | None = None  # an optional package the sampler imports


def _tpe(o: dict, seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    # multivariate + group model the joint and conditional space; constant_liar makes parallel
    # workers treat running trials as bad, so they do not all sample the same promising point.
    group = o["group"] and o["multivariate"]
    sampler = optuna.samplers.TPESampler(
        seed=seed, multivariate=o["multivariate"], group=group,
        constant_liar=o["constant_liar"], n_startup_trials=o["n_startup_trials"],
        n_ei_candidates=o["n_ei_candidates"], warn_independent_sampling=False,
    )
    return sampler


def _random(o: dict, seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _cmaes(o: dict, seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    kwargs = {k: v for k, v in o.items() if v is not None}
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False, **kwargs)


def _gp(o: dict, seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False, **o)


def _grid(o: dict, seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GridSampler(grid, seed=seed)


def _nsga2(o: dict, seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, **o)


SAMPLERS: dict[str, SamplerInfo] = {
    info.name: info
    for info in (
        SamplerInfo("tpe", _tpe, {
            "n_startup_trials": Option(INT, 10, _non_negative),
            "n_ei_candidates": Option(INT, 24, _positive),
            "multivariate": Option(BOOL, True),
            "group": Option(BOOL, True),
            "constant_liar": Option(BOOL, True),
        }, True, "TPE, multivariate and grouped (conditional spaces), constant liar for parallel workers"),
        SamplerInfo("random", _random, {}, True, "uniform random search"),
        SamplerInfo("cmaes", _cmaes, {
            "n_startup_trials": Option(INT, 1, _non_negative),
            "sigma0": Option(FLOAT, None, _positive),
            "popsize": Option(INT, None, _positive),
            "consider_pruned_trials": Option(BOOL, False),
            "use_separable_cma": Option(BOOL, False),
            "with_margin": Option(BOOL, False),
            "lr_adapt": Option(BOOL, False),
        }, False, "CMA-ES on the numeric params (categorical ones are drawn at random)", requires="cmaes"),
        SamplerInfo("gp", _gp, {
            "n_startup_trials": Option(INT, 10, _non_negative),
            "deterministic_objective": Option(BOOL, False),
        }, True, "Gaussian-process Bayesian optimization (small budgets)"),
        SamplerInfo("grid", _grid, {}, True, "every combination of the listed values (the refine stage)"),
        SamplerInfo("nsga2", _nsga2, {
            "population_size": Option(INT, 50, _at_least_2),
        }, True, "NSGA-II genetic search for Pareto studies"),
    )
}


@dataclass(frozen=True)
class PrunerInfo:
    name: str
    build: Callable[..., optuna.pruners.BasePruner]  # (options, epochs) -> pruner
    options: Mapping[str, Option]
    description: str


_MEDIANISH = {
    "n_startup_trials": Option(INT, 5, _non_negative),
    # None: a quarter of the epochs. On pendulum_answers (benchmarks/results/pruning.md) that kept
    # false kills at 5 % while saving 50 % of the epochs; warm-up 1-2 killed more winners.
    "n_warmup_steps": Option(INT, None, _non_negative),
    "interval_steps": Option(INT, 1, _positive),
    # Parallel workers: do not judge a trial against fewer than this many peers at a step.
    "n_min_trials": Option(INT, 3, _positive),
}
_PATIENCE = {"patience": Option(INT, None, _non_negative)}


def _patient(pruner: optuna.pruners.BasePruner, o: dict) -> optuna.pruners.BasePruner:
    if o.get("patience") is None:
        return pruner
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.pruners.PatientPruner(pruner, patience=o["patience"])


def _medianish(o: dict, epochs: int) -> dict:
    kw = {k: o[k] for k in _MEDIANISH}
    if kw["n_warmup_steps"] is None:
        kw["n_warmup_steps"] = max(1, epochs // 4)
    return kw


def _median(o: dict, epochs: int) -> optuna.pruners.BasePruner:
    kw = _medianish(o, epochs)
    return _patient(optuna.pruners.MedianPruner(**kw), o)


def _percentile(o: dict, epochs: int) -> optuna.pruners.BasePruner:
    kw = _medianish(o, epochs)
    return _patient(optuna.pruners.PercentilePruner(o["percentile"], **kw), o)


def _successive_halving(o: dict, epochs: int) -> optuna.pruners.BasePruner:
    kw = {k: o[k] for k in ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count")}
    return _patient(optuna.pruners.SuccessiveHalvingPruner(**kw), o)


def _hyperband(o: dict, epochs: int) -> optuna.pruners.BasePruner:
    max_resource = epochs if o["max_resource"] == "auto" else o["max_resource"]
    return _patient(optuna.pruners.HyperbandPruner(
        min_resource=o["min_resource"], max_resource=max_resource,
        reduction_factor=o["reduction_factor"], bootstrap_count=o["bootstrap_count"]), o)


def _none(o: dict, epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


PRUNERS: dict[str, PrunerInfo] = {
    info.name: info
    for info in (
        PrunerInfo("none", _none, {}, "never prune"),
        PrunerInfo("median", _median, {**_MEDIANISH, **_PATIENCE}, "prune below the median of peers at the same epoch"),
        PrunerInfo("percentile", _percentile, {"percentile": Option(FLOAT, 25.0, _percent), **_MEDIANISH, **_PATIENCE},
                   "prune outside the best `percentile` % of peers at the same epoch"),
        PrunerInfo("successive_halving", _successive_halving, {
            "min_resource": Option((int, str), "auto", _resource),
            "reduction_factor": Option(INT, 4, _at_least_2),
            "min_early_stopping_rate": Option(INT, 0, _non_negative),
            "bootstrap_count": Option(INT, 0, _non_negative),
            **_PATIENCE,
        }, "asynchronous successive halving"),
        PrunerInfo("hyperband", _hyperband, {
            "min_resource": Option(INT, 1, _positive),
            "max_resource": Option((int, str), "auto", _resource),
            "reduction_factor": Option(INT, 3, _at_least_2),
            "bootstrap_count": Option(INT, 0, _non_negative),
            **_PATIENCE,
        }, "Hyperband over successive-halving brackets (max_resource auto = epochs)"),
    )
}


def check_options(given: Mapping[str, Any], options: Mapping[str, Option], path: str) -> tuple[dict[str, Any], list[Problem]]:
    """Options with defaults filled in, and the problems found (each at its TOML path)."""
    problems: list[Problem] = []
    out = {name: opt.default for name, opt in options.items()}
    for key, value in given.items():
        if key not in options:
            known = ", ".join(sorted(options)) or "none"
            problems.append(at(f"{path}.{key}", key, known, f"unknown option; known: {known}"))
            continue
        opt = options[key]
        ok_type = isinstance(value, opt.types) and not (isinstance(value, bool) and bool not in opt.types)
        if not ok_type:
            types = " or ".join(t.__name__ for t in opt.types)
            problems.append(at(f"{path}.{key}", value, types, f"{value!r} is not {types}"))
            continue
        allowed = opt.check(value) if opt.check else None
        if allowed:
            problems.append(at(f"{path}.{key}", value, allowed, f"{value!r} must be {allowed}"))
            continue
        out[key] = value
    return out, problems


def read_sampler(t: dict, metrics: tuple[str, ...], space: list[Param], problems: list[Problem]) -> tuple[str, dict]:
    """A spec's [sampler] table: the sampler's name and its options (defaults filled in), checked against the metrics and the space."""
    t = dict(t)
    name = t.pop("name", "tpe")
    if name not in SAMPLERS:
        problems.append(unknown("sampler.name", "sampler", name, SAMPLERS))
        return "tpe", {}
    info = SAMPLERS[name]
    if info.requires and importlib.util.find_spec(info.requires) is None:
        problems.append(at("sampler.name", name, f"a sampler whose package is installed (pip install {info.requires})",
                           f'"{name}" needs the {info.requires} package (pip install {info.requires})'))
    options, option_problems = check_options(t, info.options, "sampler")
    problems += option_problems
    if len(metrics) > 1 and not info.multi_objective:
        problems.append(at("sampler.name", name, known(n for n, i in SAMPLERS.items() if i.multi_objective),
                           f'"{name}" cannot optimize several metrics; use tpe, nsga2, gp or random'))
    if name == "grid":
        for p in space:
            if p.kind == "fixed":
                continue
            if not p.grid_values() or p.per_optimizer:
                problems.append(at(p.path, p.kind, "choices or grid = [...]", "the grid sampler needs explicit values: use choices or grid = [...]"))
            elif p.only_for is not None:
                problems.append(at(p.path, list(p.only_for), "an unconditional parameter",
                                   f"the grid sampler cannot search a conditional parameter (only for "
                                   f"{', '.join(p.only_for)}); fix the {p.parent} or drop the parameter"))
    return name, options


def read_pruner(t: dict, metrics: tuple[str, ...], epochs: int, problems: list[Problem]) -> tuple[str, dict]:
    """A spec's [pruner] table: the pruner's name and its options, checked against the metrics and base.epochs."""
    t = dict(t)
    name = t.pop("name", "median")
    if name not in PRUNERS:
        problems.append(unknown("pruner.name", "pruner", name, PRUNERS))
        return "none", {}
    options, option_problems = check_options(t, PRUNERS[name].options, "pruner")
    problems += option_problems
    if len(metrics) > 1 and name != "none":
        problems.append(at("pruner.name", name, '"none"', f'"{name}" cannot prune a study with several metrics (Optuna prunes single-objective studies); use "none"'))
    if name == "hyperband" and options.get("max_resource") not in ("auto", None) and options["max_resource"] > epochs:
        problems.append(at("pruner.max_resource", options["max_resource"], f'"auto" or at most base.epochs ({epochs})',
                           f"{options['max_resource']} exceeds base.epochs ({epochs})"))
    return name, options


def build_sampler(name: str, options: Mapping[str, Any], seed: int, grid: dict) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return SAMPLERS[name].build(dict(options), seed, grid)


def build_pruner(name: str, options: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS[name].build(dict(options), epochs)
