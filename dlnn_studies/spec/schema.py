"""Study specs (`studies/*.toml`): parse with tomllib and validate the whole spec before anything
touches storage. Every problem is collected and reported with its TOML path, e.g.
`space.optimizer.choices[2]: unknown optimizer "adamm"; known: adadelta, adagrad, ...`.

A spec has these tables (see studies/quick.toml for a commented example):
  [study]      name, description
  [objective]  metric = "val_rel_mse" (or metrics = [...] for a Pareto study), direction(s)
  [budget]     trials (counted across all workers), timeout_s (wall clock from the first trial)
  [worker]     heartbeat_interval, grace_period (seconds), max_retry (retries of a trial whose worker
               died; a stopped or cut trial is always re-queued)
  [sampler]    name = tpe | random | cmaes | gp | grid | nsga2, and its options (tpe: n_startup_trials,
               multivariate, group, constant_liar: all on by default)
  [pruner]     name = none | median | percentile | successive_halving | hyperband, and its options
  [base]       the fixed TrainConfig (nested like a config file; `preset = "..."` allowed)
               [base.data] system = a built-in name, "declared" with a [base.data.declared] table
               (coordinates, angles, params, T, V, D, q_range, qdot_range), or "package.module:factory"
  [space.*]    searched settings, keyed by their TrainConfig path:
                 choices = [...]                       categorical
                 low, high, log = true, step = ...     float (int when low/high are integers)
                 value = ...                           fixed
                 grid = [...]                          explicit values for the grid sampler
                 per_optimizer = true (+ ranges)       optimizer.lr over each optimizer's own range
                 only_for = [...]                      draw only for these optimizers/schedulers
               `[space.optimizer] choices` / `[space.scheduler] choices` pick the name.
  [[baseline]] name, preset, params = { "dotted.key" = value }: configs enqueued first.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dlnn_core import ACTIVATIONS, METHODS, MODEL_FORMS, MODEL_KINDS, SYSTEMS, ConfigError, datafiles
from dlnn_core.activations import ZERO_CURVATURE
from dlnn_core.config import FIELD_RULES, LIMITS, PRESETS, TrainConfig, check_setting
from dlnn_core.dotted import flatten
from dlnn_core.losses import LOSSES
from dlnn_core.metrics import METRICS as EVAL_METRICS
from dlnn_core.model_config import INIT_CHOICES
from dlnn_core.optim import OPTIMIZERS, SCHEDULERS, reads

from ..errors import UsageError
from .names import name_problem
from .samplers import PRUNERS, SAMPLERS, check_options
from .space import PARENTS, Param, describe, params_for

# Metrics a study can optimize, with their natural direction: dlnn_core.metrics.METRICS is the one list.
METRICS: dict[str, str] = {name: m.direction for name, m in EVAL_METRICS.items()}
# Metrics that need the true system's equations: absent for data files, so no objective there.
NEEDS_SYSTEM = frozenset(name for name, m in EVAL_METRICS.items() if m.needs_system)
# Error metrics: positive, minimized, spanning decades. Studies store them as log10 (study/records.py).
LOG_METRICS = frozenset(name for name, m in EVAL_METRICS.items() if m.log_scale and m.direction == "minimize")
# The value each epoch reports to the pruner (fit's report callback).
PRUNING_METRIC = "val_rel_mse"

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
# Fields a preset or an old study's best config carries into a baseline: the recipe, not the data or the loop.
RECIPE_PREFIXES = ("optimizer.", "scheduler.", "model.")
RECIPE_KEYS = ("loss", "batch_size", "grad_clip")

DIST_KEYS = {"choices", "low", "high", "log", "step", "value", "grid", "per_optimizer", "ranges", "only_for"}
TABLES = {
    "study": {"name", "description"},
    "objective": {"metric", "metrics", "direction", "directions"},
    "budget": {"trials", "timeout_s"},
    "worker": {"heartbeat_interval", "grace_period", "max_retry"},
    "sampler": None,  # options checked against the sampler's registry entry
    "pruner": None,
    "base": None,  # checked by TrainConfig
    "space": None,
    "baseline": None,
}
# Settings whose values are checked by their field rule alone (config.check_setting); the others are
# checked with the rest of a config: the data's settings (system, file, sizes), the batch and the
# rollout horizon (against the training set), the optimizer and scheduler names (their settings),
# and the model kind (the activation's curvature).
TOGETHER = frozenset({"batch_size", "rollout_horizon", "optimizer.name", "scheduler.name", "model.kind"})
ALONE = frozenset(k for k in FIELD_RULES if k not in TOGETHER and not k.startswith("data."))
# Settings checked together in space() (largest batch vs smallest training set), so each alone is
# checked with its partner at its most permissive value.
PAIRED = {"batch_size": {"data.n_train": LIMITS["data.n_train"].high}, "data.n_train": {"batch_size": 1}}


@dataclass(frozen=True)
class Baseline:
    """A known config enqueued before sampling starts: its Optuna params and the settings outside the space."""

    name: str
    config: TrainConfig
    params: dict[str, Any]
    overrides: dict[str, Any]  # flat settings that differ from base and are not searched


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    metrics: tuple[str, ...]
    directions: tuple[str, ...]
    trials: int
    timeout_s: float | None
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    sampler: str
    sampler_options: dict[str, Any]
    pruner: str
    pruner_options: dict[str, Any]
    base: TrainConfig
    space: tuple[Param, ...]
    baselines: tuple[Baseline, ...]
    raw: dict[str, Any]  # the parsed TOML, JSON-safe: what is stored on the study

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def digest(self) -> str:
        return spec_digest(self.raw)

    def param_names(self) -> list[str]:
        return [name for p in self.space for name in p.names()]


class SpecError(UsageError):
    """A spec with problems; the message lists every one of them."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)} in the study spec:\n{lines}")


def spec_digest(raw: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a spec file; raises SpecError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the spec ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: the spec is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                         "save it as UTF-8 (TOML requires it)") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(path), [f"malformed TOML: {exc}"]) from None
    return parse_spec(raw, source=str(path), default_name=path.stem)


def parse_spec(raw: Mapping[str, Any], source: str = "spec", default_name: str | None = None, check_files: bool = True) -> StudySpec:
    """Validate a parsed spec (a TOML document or the copy stored on a study). `check_files`:
    read a `base.data.file` and check its content; the copy stored on a study was checked at
    launch, and reading it back must not need the file."""
    problems: list[str] = []
    spec = _spec(dict(raw), default_name, check_files, problems)
    if problems:
        raise SpecError(source, problems)
    assert spec is not None
    return spec


# ------------------------------------------------------------------------------------ helpers


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _json_safe(x: Any, path: str, problems: list[str]) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v, f"{path}.{k}", problems) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v, f"{path}[{i}]", problems) for i, v in enumerate(x)]
    if isinstance(x, float) and not math.isfinite(x):
        problems.append(f"{path}: {x} is not a finite number")
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    problems.append(f"{path}: {type(x).__name__} values (TOML dates and times) are not allowed")
    return None


def _extreme(p: Param, pick) -> Any:
    """The smallest or largest value (pick = min or max) a numeric param can take, or None."""
    values = [p.value] if p.kind == "fixed" else list(p.choices) if p.kind == "categorical" else [p.low, p.high]
    values = [v for v in values if _is_num(v)]
    return pick(values) if values else None


def _one_line(exc: ConfigError) -> str:
    """A ConfigError's text with its problems on one line, as a line of SpecError."""
    return str(exc).replace("\n", "; ")


def _config_message(exc: ConfigError) -> str:
    """ConfigError's text without its own field prefix (the caller adds the TOML path), on one line."""
    text, prefix = _one_line(exc), f"{exc.field}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _base_problems(exc: ConfigError) -> list[str]:
    """Each problem of a config error, once, at its path under [base]."""
    return list(dict.fromkeys(f"base.{p.field}: {p.message}" for p in exc.problems))


# ------------------------------------------------------------------------------- the spec
#
# Each check below is a plain function that appends what it finds to `problems` (the messages of
# SpecError) and goes on, so one pass over the spec reports every problem.


def _spec(raw: dict, default_name: str | None, check_files: bool, problems: list[str]) -> StudySpec | None:
    """The spec from a parsed document, or None when `problems` holds anything."""
    raw = _json_safe(raw, "spec", problems)
    tables = _tables(raw, problems)
    name, description = _study(tables["study"], default_name, problems)
    base = _base(tables["base"], problems)
    metrics, directions = _objective(tables["objective"], base.data.rollout_steps, problems)
    trials, timeout_s = _budget(tables["budget"], problems)
    heartbeat, grace, max_retry = _worker(tables["worker"], problems)
    space = _space(tables["space"], base, problems)
    if not problems:
        fixed = {p.key: p.value for p in space if p.kind == "fixed"}
        try:  # fixed space values are part of every trial's config, baselines included
            base = base.with_flat(fixed)
        except ConfigError as exc:
            problems.append(f"space: the fixed values together are invalid: {_one_line(exc)}")
    if base.data.file:
        base = _data_file(base, metrics, space, check_files, problems)
    sampler, sampler_options = _sampler(tables["sampler"], metrics, space, problems)
    pruner, pruner_options = _pruner(tables["pruner"], metrics, base.epochs, problems)
    baselines = _baselines(tables["baseline"], base, space, problems)
    if trials is not None and len(baselines) > trials:
        problems.append(f"budget.trials: {trials} is fewer than the {len(baselines)} baseline trials")
    if problems:
        return None
    return StudySpec(
        name=name, description=description, metrics=metrics, directions=directions, trials=trials,
        timeout_s=timeout_s, heartbeat_interval=heartbeat, grace_period=grace, max_retry=max_retry,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
        base=base, space=tuple(space), baselines=tuple(baselines), raw=raw,
    )


def _tables(raw: dict, problems: list[str]) -> dict[str, Any]:
    """Every known table of the spec (empty when absent); unknown tables, unknown keys and tables
    of the wrong type are problems."""
    for key in raw:
        if key not in TABLES:
            problems.append(f"{key}: unknown table; known: {', '.join(TABLES)}")
    tables = {}
    for key, known in TABLES.items():
        value = raw.get(key, [] if key == "baseline" else {})
        if key == "baseline":
            if not isinstance(value, list) or not all(isinstance(b, dict) for b in value):
                problems.append("baseline: must be an array of tables ([[baseline]])")
                value = []
        elif not isinstance(value, dict):
            problems.append(f"{key}: must be a table")
            value = {}
        elif known is not None:
            problems += [f"{key}.{k}: unknown key; known: {', '.join(sorted(known))}" for k in value if k not in known]
        tables[key] = value
    return tables


def _data_file(base: TrainConfig, metrics: tuple[str, ...], space: list[Param], check_files: bool, problems: list[str]) -> TrainConfig:
    """A spec on a data file: objectives the file can give, the file itself (read and checked
    with the largest searched batch and Savitzky–Golay window; a relative path from the working
    directory, as `launch` reads it). `launch` then pins its sha256 and publishes the bytes
    (launch.pin_data); a pinned file that is not here is not read (its bytes are in the store)."""
    for m in metrics:
        if m in NEEDS_SYSTEM:
            problems.append(f"objective: {m} needs the true system's equations, which base.data.file does not give; "
                            "choose a metric measured on the data (val_rel_mse, test_rollout_error, ...)")
        elif m.startswith("ood_") and base.data.file_split[3] == 0:
            problems.append(f"objective: {m} needs an ood split, and base.data.file_split gives none (its ood fraction is 0)")
    if not check_files or problems:
        return base
    pinned, local = base.data.file_sha256, Path(base.data.file)
    if pinned and not (local.is_file() and datafiles.file_sha256(local) == pinned):
        return base  # pinned bytes from the artifact store (refine, verify, another host): checked when first pinned
    by_key = {p.key: p for p in space}
    extremes = {key: _extreme(by_key[key], max) for key in ("batch_size", "data.savgol_window") if key in by_key}
    try:
        datafiles.check_train_config(base.with_flat({k: v for k, v in extremes.items() if v is not None}))
    except ConfigError as exc:
        problems += _base_problems(exc)
    return base


def _study(t: dict, default_name: str | None, problems: list[str]) -> tuple[str, str]:
    name = t.get("name", default_name)
    if name_problem(name) is not None:
        problems.append(f"study.name: {name_problem(name)}")
    description = t.get("description", "")
    if not isinstance(description, str):
        problems.append("study.description: must be a string")
        description = ""
    return name, description


def _objective(t: dict, rollout_steps: int, problems: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metrics to optimize, each known and within the base's rollouts, and their directions."""
    if "metric" in t and "metrics" in t:
        problems.append("objective: give either metric or metrics, not both")
    metrics = t.get("metrics", [t.get("metric", PRUNING_METRIC)])
    path = "objective.metrics" if "metrics" in t else "objective.metric"
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        problems.append(f"{path}: must be a metric name or a non-empty list of them")
        return (PRUNING_METRIC,), ("minimize",)
    for i, m in enumerate(metrics):
        if m not in METRICS:
            where = f"{path}[{i}]" if "metrics" in t else path
            problems.append(f"{where}: unknown metric {m!r}; known: {', '.join(sorted(METRICS))}")
    for i, m in enumerate(metrics):
        horizon = m.rsplit("_", 1)[-1]
        if horizon.isdigit() and int(horizon) >= rollout_steps:
            problems.append(f"{path}: {m} needs base.data.rollout_steps > {horizon} (it is {rollout_steps})")
    if len(set(metrics)) != len(metrics):
        problems.append(f"{path}: a metric is listed twice")
    return tuple(metrics), _directions(t, metrics, problems)


def _directions(t: dict, metrics: list[str], problems: list[str]) -> tuple[str, ...]:
    """One direction per metric: given, or each metric's natural one."""
    if "direction" in t and "directions" in t:
        problems.append("objective: give either direction or directions, not both")
    directions = t.get("directions", t.get("direction"))
    dpath = "objective.directions" if "directions" in t else "objective.direction"
    if directions is None:
        directions = [METRICS.get(m, "minimize") for m in metrics]
    elif isinstance(directions, str):
        directions = [directions]
    if not isinstance(directions, list) or len(directions) != len(metrics):
        problems.append(f"{dpath}: needs one direction per metric ({len(metrics)})")
        directions = ["minimize"] * len(metrics)
    for i, d in enumerate(directions):
        if d not in ("minimize", "maximize"):
            problems.append(f"{dpath}{f'[{i}]' if len(directions) > 1 else ''}: {d!r} is not 'minimize' or 'maximize'")
    return tuple(directions)


def _budget(t: dict, problems: list[str]) -> tuple[int | None, float | None]:
    trials = t.get("trials")
    if not _is_int(trials) or trials < 1:
        problems.append(f"budget.trials: {trials!r} must be an integer >= 1 (the trial budget of the whole study)")
        trials = None
    timeout = t.get("timeout_s")
    if timeout is not None and not (_is_num(timeout) and timeout > 0):
        problems.append(f"budget.timeout_s: {timeout!r} must be a positive number of seconds")
        timeout = None
    return trials, (float(timeout) if timeout is not None else None)


def _worker(t: dict, problems: list[str]) -> tuple[int, int, int]:
    interval = t.get("heartbeat_interval", 10)
    grace = t.get("grace_period", 6 * interval if _is_int(interval) else 60)
    retry = t.get("max_retry", 3)
    if not _is_int(interval) or interval < 1:
        problems.append(f"worker.heartbeat_interval: {interval!r} must be an integer >= 1 (seconds)")
        interval = 10
    if not _is_int(grace) or grace < 2 * interval:
        problems.append(f"worker.grace_period: {grace!r} must be an integer >= 2 × heartbeat_interval ({2 * interval} s), "
                        "so a slow heartbeat is not taken for a dead worker")
    if not _is_int(retry) or retry < 0:
        problems.append(f"worker.max_retry: {retry!r} must be an integer >= 0")
    return interval, grace, retry


def _sampler(t: dict, metrics: tuple[str, ...], space: list[Param], problems: list[str]) -> tuple[str, dict]:
    t = dict(t)
    name = t.pop("name", "tpe")
    if name not in SAMPLERS:
        problems.append(f'sampler.name: unknown sampler "{name}"; known: {", ".join(SAMPLERS)}')
        return "tpe", {}
    info = SAMPLERS[name]
    if info.requires and importlib.util.find_spec(info.requires) is None:
        problems.append(f'sampler.name: "{name}" needs the {info.requires} package (pip install {info.requires})')
    options, option_problems = check_options(t, info.options, "sampler")
    problems += option_problems
    if len(metrics) > 1 and not info.multi_objective:
        problems.append(f'sampler.name: "{name}" cannot optimize several metrics; use tpe, nsga2, gp or random')
    if name == "grid":
        for p in space:
            if p.kind == "fixed":
                continue
            if not p.grid_values() or p.per_optimizer:
                problems.append(f"{p.path}: the grid sampler needs explicit values: use choices or grid = [...]")
            elif p.only_for is not None:
                problems.append(f"{p.path}: the grid sampler cannot search a conditional parameter (only for "
                                f"{', '.join(p.only_for)}); fix the {p.parent} or drop the parameter")
    return name, options


def _pruner(t: dict, metrics: tuple[str, ...], epochs: int, problems: list[str]) -> tuple[str, dict]:
    t = dict(t)
    name = t.pop("name", "median")
    if name not in PRUNERS:
        problems.append(f'pruner.name: unknown pruner "{name}"; known: {", ".join(PRUNERS)}')
        return "none", {}
    options, option_problems = check_options(t, PRUNERS[name].options, "pruner")
    problems += option_problems
    if len(metrics) > 1 and name != "none":
        problems.append(f'pruner.name: "{name}" cannot prune a study with several metrics (Optuna prunes single-objective studies); use "none"')
    if name == "hyperband" and options.get("max_resource") not in ("auto", None) and options["max_resource"] > epochs:
        problems.append(f"pruner.max_resource: {options['max_resource']} exceeds base.epochs ({epochs})")
    return name, options


# ------------------------------------------------------------------------------- base config

# Settings that describe the data's system together: a problem in one sets all of them aside.
SYSTEM_SETTINGS = frozenset({"data.system", "data.params", "data.declared"})


def _base(t: dict, problems: list[str]) -> TrainConfig:
    """The fixed config; TrainConfig names all of its problems at once. With problems, the rest of
    the spec is still checked against the base's good settings (see _good_part)."""
    t = json.loads(json.dumps(t))  # a copy: the config must not share dicts with the stored spec
    try:
        return TrainConfig.from_dict(t)
    except ConfigError as exc:
        problems += _base_problems(exc)
        return _good_part(t, exc)
    except (TypeError, ValueError) as exc:
        problems.append(f"base: {exc}")
        return TrainConfig()


def _good_part(t: dict, exc: ConfigError) -> TrainConfig:
    """[base] with every setting the error refuses left at its default (the whole system when any
    of SYSTEM_SETTINGS is refused), or the defaults when that is no config either."""
    refused = {".".join(p.field.split(".")[:2]) for p in exc.problems}
    if refused & SYSTEM_SETTINGS:
        refused |= SYSTEM_SETTINGS
    kept = {key: {k: v for k, v in value.items() if f"{key}.{k}" not in refused} if isinstance(value, dict) else value
            for key, value in t.items() if key not in refused}
    try:
        return TrainConfig.from_dict(kept)
    except (TypeError, ValueError):  # ConfigError included
        return TrainConfig()


def _check_value(base: TrainConfig, key: str, value: Any, where: str, problems: list[str], context: Mapping[str, Any] = {}) -> bool:
    """Is `value` a valid setting for `key` (given the parent choice in `context`)? Reports at `where`."""
    if key in NAMED:
        what, registry = NAMED[key]
        if not isinstance(value, str) or value not in registry:
            problems.append(f'{where}: unknown {what} "{value}"; known: {", ".join(sorted(registry))}')
            return False
    if key == "model.activation" and value in ZERO_CURVATURE:
        return True  # allowed only for an MLP baseline: decided in _space(), which knows the model kinds
    if key in ALONE:  # its field rule and LIMITS bound say it all: no config is built
        error = check_setting(key, value)
        if error is not None:
            problems.append(f"{where}: {_config_message(error)}")
        return error is None
    try:
        base.with_flat({**context, key: value})
    except ConfigError as exc:
        problems.append(f"{where}: {_config_message(exc)}")
        return False
    return True


# ------------------------------------------------------------------------------- space


def _space(t: dict, base: TrainConfig, problems: list[str]) -> list[Param]:
    """Every [space.*] table as a Param, checked alone, against each other and against the base."""
    params: list[Param] = []
    _walk(t, [], base, params, problems)
    keys = [p.key for p in params]
    for key in set(keys):
        if keys.count(key) > 1:
            problems.append(f"space: {key} is given more than once")
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


def _curvature(by_key: Mapping[str, Param], base: TrainConfig, problems: list[str]) -> None:
    """An activation without curvature is refused when any searched/fixed model kind has an L network."""
    act, kind = by_key.get("model.activation"), by_key.get("model.kind")
    kinds = set(kind.choices) if kind and kind.kind == "categorical" else {kind.value if kind else base.model.kind}
    if act is None or not kinds - {"mlp"}:
        return
    for i, choice in enumerate(act.choices if act.kind == "categorical" else [act.value]):
        if choice in ZERO_CURVATURE:
            where = f"{act.path}.choices[{i}]" if act.kind == "categorical" else f"{act.path}.value"
            problems.append(f'{where}: "{choice}" cannot be used for the Lagrangian network: its second derivative is zero, '
                            "so ∂²L/∂q̇² vanishes and q̈ cannot be solved for (only a model.kind = \"mlp\" baseline may use it)")


def _batch_fits(by_key: Mapping[str, Param], base: TrainConfig, problems: list[str]) -> None:
    """The largest batch must fit the smallest training set (PAIRED: each alone was checked without the other)."""
    batch, n_train = by_key.get("batch_size"), by_key.get("data.n_train")
    if batch is None and n_train is None:
        return
    largest = _extreme(batch, max) if batch is not None else base.batch_size
    smallest = _extreme(n_train, min) if n_train is not None else base.data.n_train
    if largest is not None and smallest is not None:
        try:
            base.with_flat({"batch_size": largest, "data.n_train": smallest})
        except ConfigError as exc:
            problems.append(f"{(batch or n_train).path}: the largest batch_size ({largest}) does not fit the smallest "
                            f"data.n_train ({smallest}): {_config_message(exc)}")


def _walk(t: dict, path: list[str], base: TrainConfig, params: list[Param], problems: list[str]) -> None:
    """The tables under [space] (nested by the setting's dotted name), each with distribution keys a Param."""
    dist = {k: v for k, v in t.items() if k in DIST_KEYS}
    if dist:
        if not path:
            problems.append(f"space: distribution keys ({', '.join(dist)}) need a setting name, e.g. [space.optimizer.lr]")
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
            problems.append(f"{where}: expected a table with choices, low/high or value (got {value!r})")


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

    def check(self, value: Any, where: str, problems: list[str]) -> bool:
        return _check_value(self.base, self.key, value, where, problems, self.context)

    def param(self, **kwargs: Any) -> Param:
        return Param(key=self.key, path=self.where, parent=self.parent, only_for=self.only_for, **kwargs)


def _param(path: list[str], d: dict, base: TrainConfig, problems: list[str]) -> Param | None:
    """The Param of the table at space.<path> (its distribution keys `d`), or None with its problems reported."""
    where, key = "space." + ".".join(path), PARENTS.get(".".join(path), ".".join(path))
    parent = PARENTS.get(path[0]) if len(path) == 2 and path[0] in PARENTS else None
    unknown = _unknown_setting(key, base)
    if unknown is not None:
        problems.append(f"{where}: {unknown}")
        return None
    if not _one_form(d, key, where, problems):
        return None
    only_for = _only_for(d.get("only_for"), parent, path[0], where, problems)
    allowed = DIST_KEYS - ({"per_optimizer", "ranges"} if key != "optimizer.lr" else set())
    problems += [f"{where}.{k}: not allowed here" for k in d if k not in allowed]
    table = _Table(key, where, parent, only_for, base, {**_context(parent, only_for, key), **PAIRED.get(key, {})})
    if "value" in d:
        return table.param(kind="fixed", value=d["value"]) if table.check(d["value"], f"{where}.value", problems) else None
    if "choices" in d:
        return _categorical(table, d, problems)
    if d.get("per_optimizer"):
        return _per_optimizer(table, d, problems)
    return _numeric(table, d, problems)


def _unknown_setting(key: str, base: TrainConfig) -> str | None:
    """Why `key` is not a TrainConfig setting (with the nearest name and the known ones), or None when it is."""
    base_flat = base.to_flat()
    if key in base_flat or key.startswith("data.params."):
        return None
    settings = sorted(k for k in base_flat if not k.startswith("data.params")) + ["data.params.<name>"]
    section = key.split(".")[0] + "." if "." in key else ""
    near = difflib.get_close_matches(key, settings, n=1)
    hint = f' (did you mean "{near[0]}"?)' if near else ""
    known = [k for k in settings if section and k.startswith(section)] or [k for k in settings if "." not in k] + ["data.*", "model.*", "optimizer", "optimizer.*", "scheduler", "scheduler.*"]
    return f"not a training setting{hint}; known{' in ' + section[:-1] if section and known[0].startswith(section) else ''}: {', '.join(known)}"


def _one_form(d: dict, key: str, where: str, problems: list[str]) -> bool:
    """The table gives exactly one of choices, low/high, value or per_optimizer (this last for optimizer.lr only)."""
    forms = [k for k in ("choices", "low", "value", "per_optimizer") if k in d]
    if "high" in d and "low" not in d:
        forms.append("high")
    if len(forms) != 1:
        problems.append(f"{where}: give exactly one of choices = [...], low/high, value or per_optimizer = true")
        return False
    if "per_optimizer" in d and key != "optimizer.lr":
        problems.append(f"{where}.per_optimizer: only optimizer.lr can take its range from each optimizer")
        return False
    return True


def _only_for(only_for: Any, parent: str | None, section: str, where: str, problems: list[str]) -> tuple[str, ...] | None:
    """The optimizers/schedulers a setting under space.optimizer/space.scheduler is drawn for: the
    known names given (None, as if not given, when there are none)."""
    if only_for is None:
        return None
    if parent is None:
        problems.append(f"{where}.only_for: only settings under space.optimizer or space.scheduler can be conditional")
        return None
    if not isinstance(only_for, list) or not only_for or not all(isinstance(x, str) for x in only_for):
        problems.append(f"{where}.only_for: must be a non-empty list of {section} names")
        return None
    what, registry = NAMED[parent]
    for i, name in enumerate(only_for):
        if name not in registry:
            problems.append(f'{where}.only_for[{i}]: unknown {what} "{name}"; known: {", ".join(sorted(registry))}')
    return tuple(name for name in only_for if name in registry) or None


def _context(parent: str | None, only_for: tuple[str, ...] | None, key: str) -> dict:
    """The optimizer a setting's values are checked with: the first of only_for that reads it (as
    optim.reads says; how many betas depends on the optimizer), else the base's own."""
    if parent != "optimizer.name" or not only_for:
        return {}
    setting = key.split(".", 1)[1]
    readers = [name for name in only_for if name in OPTIMIZERS and reads(name, setting)]
    return {parent: readers[0]} if readers else {}


def _categorical(table: _Table, d: dict, problems: list[str]) -> Param | None:
    """choices = [...]: each a valid value, none twice."""
    where, choices = table.where, d["choices"]
    if not isinstance(choices, list) or not choices:
        problems.append(f"{where}.choices: must be a non-empty list")
        return None
    valid = []
    for i, c in enumerate(choices):
        if isinstance(c, (dict, list)):
            problems.append(f"{where}.choices[{i}]: must be a string, number or boolean")
        elif table.check(c, f"{where}.choices[{i}]", problems):
            valid.append(c)
    if len({json.dumps(c) for c in choices}) != len(choices):
        problems.append(f"{where}.choices: lists a value twice")
    problems += [f"{where}.{k}: not allowed with choices" for k in ("low", "high", "log", "step", "grid") if k in d]
    # With bad choices the spec already fails; the valid ones still let later checks run.
    return table.param(kind="categorical", choices=tuple(valid)) if valid else None


def _per_optimizer(table: _Table, d: dict, problems: list[str]) -> Param | None:
    """per_optimizer = true: optimizer.lr over each optimizer's own range, or the one `ranges` gives it."""
    where = table.where
    if d.get("per_optimizer") is not True:
        problems.append(f"{where}.per_optimizer: must be true or absent")
        return None
    ranges = d.get("ranges", {})
    if not isinstance(ranges, dict):
        problems.append(f"{where}.ranges: must be a table of optimizer = [low, high]")
        ranges = {}
    problems += [f"{where}.{k}: not allowed with per_optimizer (the ranges come from the optimizer registry or ranges)"
                 for k in ("low", "high", "log", "step", "grid") if k in d]
    per: dict[str, tuple[float, float]] = {}
    for opt, rng in ranges.items():
        rwhere = f"{where}.ranges.{opt}"
        if opt not in OPTIMIZERS:
            problems.append(f'{rwhere}: unknown optimizer "{opt}"; known: {", ".join(sorted(OPTIMIZERS))}')
        elif not (isinstance(rng, list) and len(rng) == 2 and all(_is_num(x) for x in rng) and 0 < rng[0] < rng[1]):
            problems.append(f"{rwhere}: must be [low, high] with 0 < low < high")
        else:
            per[opt] = (float(rng[0]), float(rng[1]))
    # Filled in for the optimizers the study can draw in _condition.
    return table.param(kind="float", log=True, per_optimizer=True, per_choice=per)


def _numeric(table: _Table, d: dict, problems: list[str]) -> Param | None:
    """low/high (log, step, grid): an int range when low, high and step are integers, else a float
    one; both ends are checked as values. Any problem reported here leaves no Param."""
    where, low, high = table.where, d.get("low"), d.get("high")
    if not _is_num(low) or not _is_num(high):
        problems.append(f"{where}: low and high must both be numbers (got low={low!r}, high={high!r})")
        return None
    log, step, before = d.get("log", False), d.get("step"), len(problems)
    fractional = _fractional_bounds(table, {"low": low, "high": high, "step": step}, problems)
    if not isinstance(log, bool):
        problems.append(f"{where}.log: must be true or false")
        log = False
    if low >= high:
        problems.append(f"{where}: low must be < high (got low={low}, high={high}); use value = ... for a fixed setting")
    _scale(where, log, low, step, problems)
    for bound, value in (("low", low), ("high", high)):
        if bound not in fractional:
            table.check(value, f"{where}.{bound}", problems)
    grid = _grid(where, d.get("grid", []), low, high, problems)
    if len(problems) > before:
        return None
    if _is_int(low) and _is_int(high) and (step is None or _is_int(step)):
        return table.param(kind="int", low=int(low), high=int(high), log=log, step=step, grid=tuple(int(g) for g in grid))
    return table.param(kind="float", low=float(low), high=float(high), log=log, step=float(step) if step is not None else None,
                       grid=tuple(float(g) for g in grid))


def _fractional_bounds(table: _Table, bounds: Mapping[str, Any], problems: list[str]) -> set[str]:
    """The bounds of an integer setting written as fractions (or as floats: 16.0), each one message."""
    if not (table.key in LIMITS and LIMITS[table.key].integer):
        return set()
    fractional = set()
    for bound, value in bounds.items():
        if _is_num(value) and not _is_int(value):
            hint = f"; write {int(value)}" if float(value).is_integer() else ""
            problems.append(f"{table.where}.{bound}: {value!r} must be an integer ({table.key} takes whole numbers{hint})")
            fractional.add(bound)
    return fractional


def _scale(where: str, log: bool, low: Any, step: Any, problems: list[str]) -> None:
    """A log scale needs low > 0 and no step; a step is a positive number."""
    if log and low <= 0:
        problems.append(f"{where}: a log scale needs low > 0 (got low={low})")
    if step is not None:
        if not _is_num(step) or step <= 0:
            problems.append(f"{where}.step: {step!r} must be a positive number")
        elif log:
            problems.append(f"{where}.step: a log scale cannot have a step")


def _grid(where: str, grid: Any, low: Any, high: Any, problems: list[str]) -> list:
    """grid = [...]: numbers in [low, high] for the grid sampler (none when absent or bad)."""
    if not isinstance(grid, list) or not all(_is_num(g) for g in grid):
        problems.append(f"{where}.grid: must be a list of numbers")
        return []
    for i, g in enumerate(grid):
        if not low <= g <= high:
            problems.append(f"{where}.grid[{i}]: {g} lies outside [low, high] = [{low}, {high}]")
    return grid


def _condition(p: Param, candidates: list, problems: list[str]) -> Param:
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
                problems.append(f'{p.path}.only_for: {field} means nothing for "{name}"; it applies to {what}: {", ".join(sorted(meaningful))}')
    else:
        only_for = tuple(sorted(meaningful))
    if not [c for c in candidates if c in only_for]:
        parent_path = f"space.{p.parent.split('.')[0]}"
        problems.append(f"{p.path}: {field} only applies to {what} ({', '.join(sorted(meaningful))}), "
                        f"and none of {', '.join(map(str, candidates))} (from {parent_path} or base) is one")
    # Always drawn when every candidate qualifies: a plain, unconditional parameter.
    cond = None if set(candidates) <= set(only_for) else tuple(sorted(set(only_for) & set(candidates)))
    if p.per_optimizer:
        per = {opt: p.per_choice.get(opt, OPTIMIZERS[opt].lr_range) for opt in candidates if opt in OPTIMIZERS}
        for opt in p.per_choice:
            if opt not in candidates:
                problems.append(f'{p.path}.ranges.{opt}: "{opt}" is not among the optimizers this study can draw ({", ".join(candidates)})')
        return Param(**{**p.__dict__, "per_choice": per, "only_for": cond})
    return Param(**{**p.__dict__, "only_for": cond})


# ------------------------------------------------------------------------------- baselines


def _baselines(items: list, base: TrainConfig, space: list[Param], problems: list[str]) -> list[Baseline]:
    out = []
    names = set()
    for i, b in enumerate(items):
        where = f"baseline[{i}]"
        for k in b:
            if k not in ("name", "preset", "params"):
                problems.append(f"{where}.{k}: unknown key; known: name, preset, params")
        name = b.get("name", b.get("preset", f"baseline-{i}"))
        if not isinstance(name, str):
            problems.append(f"{where}.name: must be a string")
            continue
        if name in names:
            problems.append(f"{where}.name: {name!r} is used twice")
        names.add(name)
        flat: dict[str, Any] = {}
        preset = b.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                problems.append(f'{where}.preset: unknown preset "{preset}"; known: {", ".join(sorted(PRESETS))}')
                continue
            flat.update(recipe(PRESETS[preset].to_flat()))
        params = b.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{where}.params: must be a table of dotted settings")
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
    """A config (base + flat overrides) as an enqueueable trial. strict: values outside the space
    are errors (a spec's baselines); otherwise they are dropped and left to the sampler (launch --from)."""
    try:
        cfg = base.with_flat(flat)
    except ConfigError as exc:
        report(f"{where}: {_one_line(exc)}")
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
            report(f"{where}: {param.key} = {value!r} lies outside {param.path} ({describe(dist)}); widen the space or change the baseline")
    if strict and misses:
        return None
    searched = {p.key for p in space}
    base_flat = base.to_flat()
    overrides = {k: v for k, v in full.items() if k not in searched and base_flat.get(k) != v} if strict else {}
    return Baseline(name=name, config=cfg, params=params, overrides=overrides)
