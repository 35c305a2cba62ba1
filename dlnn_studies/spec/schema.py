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

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from dlnn_core import ConfigError, datafiles, file_dataset
from dlnn_core.config import TrainConfig
from dlnn_core.metrics import METRICS as EVAL_METRICS

from ..errors import UsageError
from .names import NAME_RULE, name_problem
from .baselines import Baseline, read_baselines
from .problems import Problem, at, from_config, known, under, unknown
from .samplers import read_pruner, read_sampler
from .space import Param
from .space_tables import extreme, is_int, is_num, read_space

# Metrics a study can optimize, with their natural direction: dlnn_core.metrics.METRICS is the one list.
METRICS: dict[str, str] = {name: m.direction for name, m in EVAL_METRICS.items()}
# Metrics that need the true system's equations: absent for data files, so no objective there.
NEEDS_SYSTEM = frozenset(name for name, m in EVAL_METRICS.items() if m.needs_system)
# Error metrics: positive, minimized, spanning decades. Studies store them as log10 (study/records.py).
LOG_METRICS = frozenset(name for name, m in EVAL_METRICS.items() if m.log_scale and m.direction == "minimize")
# The value each epoch reports to the pruner (fit's report callback).
PRUNING_METRIC = "val_rel_mse"

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
    """A spec with problems: `problems` holds every one as a `Problem` (its TOML path, the value,
    what is allowed), and the message lists them, one `path: message` line each."""

    def __init__(self, source: str, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem{'s' * (len(problems) != 1)} in the study spec:\n{lines}")

    @property
    def messages(self) -> list[str]:
        """Each problem as its line of the message reads it (`path: message`)."""
        return [str(p) for p in self.problems]


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
        raise SpecError(str(path), [at("malformed TOML", text, "a TOML document", str(exc))]) from None
    return parse_spec(raw, source=str(path), default_name=path.stem)


def parse_spec(raw: Mapping[str, Any], source: str = "spec", default_name: str | None = None, check_files: bool = True) -> StudySpec:
    """Validate a parsed spec (a TOML document or the copy stored on a study). `check_files`:
    read a `base.data.file` and check its content; the copy stored on a study was checked at
    launch, and reading it back must not need the file."""
    problems: list[Problem] = []
    spec = _spec(dict(raw), default_name, check_files, problems)
    if problems:
        raise SpecError(source, problems)
    assert spec is not None
    return spec


# ------------------------------------------------------------------------------------ helpers


def _json_safe(x: Any, path: str, problems: list[Problem]) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v, f"{path}.{k}", problems) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v, f"{path}[{i}]", problems) for i, v in enumerate(x)]
    if isinstance(x, float) and not math.isfinite(x):
        problems.append(at(path, x, "a finite number", f"{x} is not a finite number"))
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    problems.append(at(path, str(x), "a string, number, boolean, array or table",
                       f"{type(x).__name__} values (TOML dates and times) are not allowed"))
    return None


# ------------------------------------------------------------------------------- the spec
#
# Each check below is a plain function that appends what it finds to `problems` (the messages of
# SpecError) and goes on, so one pass over the spec reports every problem.


def _spec(raw: dict, default_name: str | None, check_files: bool, problems: list[Problem]) -> StudySpec | None:
    """The spec from a parsed document, or None when `problems` holds anything."""
    raw = _json_safe(raw, "spec", problems)
    tables = _tables(raw, problems)
    name, description = _study(tables["study"], default_name, problems)
    base = _base(tables["base"], problems)
    metrics, directions = _objective(tables["objective"], base.data.rollout_steps, problems)
    trials, timeout_s = _budget(tables["budget"], problems)
    heartbeat, grace, max_retry = _worker(tables["worker"], problems)
    space = read_space(tables["space"], base, problems)
    if not problems:
        fixed = {p.key: p.value for p in space if p.kind == "fixed"}
        try:  # fixed space values are part of every trial's config, baselines included
            base = base.with_flat(fixed)
        except ConfigError as exc:
            problems.append(from_config("space", exc, "the fixed values together are invalid: ", name_first=True))
    if base.data.file:
        base = _data_file(base, metrics, space, check_files, problems)
    sampler, sampler_options = read_sampler(tables["sampler"], metrics, space, problems)
    pruner, pruner_options = read_pruner(tables["pruner"], metrics, base.epochs, problems)
    baselines = read_baselines(tables["baseline"], base, space, problems)
    if trials is not None and len(baselines) > trials:
        problems.append(at("budget.trials", trials, f"at least {len(baselines)} (one per baseline)",
                           f"{trials} is fewer than the {len(baselines)} baseline trials"))
    if problems:
        return None
    return StudySpec(
        name=name, description=description, metrics=metrics, directions=directions, trials=trials,
        timeout_s=timeout_s, heartbeat_interval=heartbeat, grace_period=grace, max_retry=max_retry,
        sampler=sampler, sampler_options=sampler_options, pruner=pruner, pruner_options=pruner_options,
        base=base, space=tuple(space), baselines=tuple(baselines), raw=raw,
    )


def _tables(raw: dict, problems: list[Problem]) -> dict[str, Any]:
    """Every known table of the spec (empty when absent); unknown tables, unknown keys and tables
    of the wrong type are problems."""
    for key in raw:
        if key not in TABLES:
            problems.append(at(key, key, known(TABLES), f"unknown table; known: {known(TABLES)}"))
    tables = {}
    for key, names in TABLES.items():
        value = raw.get(key, [] if key == "baseline" else {})
        if key == "baseline":
            if not isinstance(value, list) or not all(isinstance(b, dict) for b in value):
                problems.append(at("baseline", value, "an array of tables", "must be an array of tables ([[baseline]])"))
                value = []
        elif not isinstance(value, dict):
            problems.append(at(key, value, "a table", "must be a table"))
            value = {}
        elif names is not None:
            problems += [at(f"{key}.{k}", k, known(sorted(names)), f"unknown key; known: {known(sorted(names))}") for k in value if k not in names]
        tables[key] = value
    return tables


def _data_file(base: TrainConfig, metrics: tuple[str, ...], space: list[Param], check_files: bool, problems: list[Problem]) -> TrainConfig:
    """A spec on a data file: objectives the file can give, the file itself (read and checked
    with the largest searched batch and Savitzky–Golay window; a relative path from the working
    directory, as `launch` reads it). `launch` then pins its sha256 and publishes the bytes
    (launch.pin_data); a pinned file that is not here is not read (its bytes are in the store)."""
    for m in metrics:
        if m in NEEDS_SYSTEM:
            problems.append(at("objective", m, known(sorted(set(METRICS) - NEEDS_SYSTEM)),
                               f"{m} needs the true system's equations, which base.data.file does not give; "
                               "choose a metric measured on the data (val_rel_mse, test_rollout_error, ...)"))
        elif m.startswith("ood_") and base.data.file_split[3] == 0:
            problems.append(at("objective", m, "a metric on the splits base.data.file_split gives",
                               f"{m} needs an ood split, and base.data.file_split gives none (its ood fraction is 0)"))
    if not check_files or problems:
        return base
    pinned, local = base.data.file_sha256, Path(base.data.file)
    if pinned and not (local.is_file() and datafiles.file_sha256(local) == pinned):
        return base  # pinned bytes from the artifact store (refine, verify, another host): checked when first pinned
    by_key = {p.key: p for p in space}
    extremes = {key: extreme(by_key[key], max) for key in ("batch_size", "data.savgol_window") if key in by_key}
    try:
        file_dataset.check_train_config(base.with_flat({k: v for k, v in extremes.items() if v is not None}))
    except ConfigError as exc:
        problems += under("base", exc)
    return base


def _study(t: dict, default_name: str | None, problems: list[Problem]) -> tuple[str, str]:
    name = t.get("name", default_name)
    if name_problem(name) is not None:
        problems.append(at("study.name", name, NAME_RULE, name_problem(name)))
    description = t.get("description", "")
    if not isinstance(description, str):
        problems.append(at("study.description", description, "a string", "must be a string"))
        description = ""
    return name, description


def _objective(t: dict, rollout_steps: int, problems: list[Problem]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metrics to optimize, each known and within the base's rollouts, and their directions."""
    if "metric" in t and "metrics" in t:
        problems.append(at("objective", [t["metric"], t["metrics"]], "metric or metrics", "give either metric or metrics, not both"))
    metrics = t.get("metrics", [t.get("metric", PRUNING_METRIC)])
    path = "objective.metrics" if "metrics" in t else "objective.metric"
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        problems.append(at(path, metrics, "a metric name or a non-empty list of them", "must be a metric name or a non-empty list of them"))
        return (PRUNING_METRIC,), ("minimize",)
    for i, m in enumerate(metrics):
        if m not in METRICS:
            where = f"{path}[{i}]" if "metrics" in t else path
            problems.append(unknown(where, "metric", m, sorted(METRICS), quote=False))
    for i, m in enumerate(metrics):
        horizon = m.rsplit("_", 1)[-1]
        if horizon.isdigit() and int(horizon) >= rollout_steps:
            problems.append(at(path, m, f"a metric within base.data.rollout_steps ({rollout_steps})",
                               f"{m} needs base.data.rollout_steps > {horizon} (it is {rollout_steps})"))
    if len(set(metrics)) != len(metrics):
        problems.append(at(path, metrics, "each metric once", "a metric is listed twice"))
    return tuple(metrics), _directions(t, metrics, problems)


def _directions(t: dict, metrics: list[str], problems: list[Problem]) -> tuple[str, ...]:
    """One direction per metric: given, or each metric's natural one."""
    if "direction" in t and "directions" in t:
        problems.append(at("objective", [t["direction"], t["directions"]], "direction or directions", "give either direction or directions, not both"))
    directions = t.get("directions", t.get("direction"))
    dpath = "objective.directions" if "directions" in t else "objective.direction"
    if directions is None:
        directions = [METRICS.get(m, "minimize") for m in metrics]
    elif isinstance(directions, str):
        directions = [directions]
    if not isinstance(directions, list) or len(directions) != len(metrics):
        problems.append(at(dpath, directions, f"{len(metrics)} directions, one per metric", f"needs one direction per metric ({len(metrics)})"))
        directions = ["minimize"] * len(metrics)
    for i, d in enumerate(directions):
        if d not in ("minimize", "maximize"):
            problems.append(at(f"{dpath}{f'[{i}]' if len(directions) > 1 else ''}", d, "'minimize' or 'maximize'", f"{d!r} is not 'minimize' or 'maximize'"))
    return tuple(directions)


def _budget(t: dict, problems: list[Problem]) -> tuple[int | None, float | None]:
    trials = t.get("trials")
    if not is_int(trials) or trials < 1:
        problems.append(at("budget.trials", trials, "an integer >= 1", f"{trials!r} must be an integer >= 1 (the trial budget of the whole study)"))
        trials = None
    timeout = t.get("timeout_s")
    if timeout is not None and not (is_num(timeout) and timeout > 0):
        problems.append(at("budget.timeout_s", timeout, "a positive number of seconds", f"{timeout!r} must be a positive number of seconds"))
        timeout = None
    return trials, (float(timeout) if timeout is not None else None)


def _worker(t: dict, problems: list[Problem]) -> tuple[int, int, int]:
    interval = t.get("heartbeat_interval", 10)
    grace = t.get("grace_period", 6 * interval if is_int(interval) else 60)
    retry = t.get("max_retry", 3)
    if not is_int(interval) or interval < 1:
        problems.append(at("worker.heartbeat_interval", interval, "an integer >= 1", f"{interval!r} must be an integer >= 1 (seconds)"))
        interval = 10
    if not is_int(grace) or grace < 2 * interval:
        problems.append(at("worker.grace_period", grace, f"an integer >= {2 * interval}",
                           f"{grace!r} must be an integer >= 2 × heartbeat_interval ({2 * interval} s), "
                           "so a slow heartbeat is not taken for a dead worker"))
    if not is_int(retry) or retry < 0:
        problems.append(at("worker.max_retry", retry, "an integer >= 0", f"{retry!r} must be an integer >= 0"))
    return interval, grace, retry


# ------------------------------------------------------------------------------- base config

# Settings that describe the data's system together: a problem in one sets all of them aside.
SYSTEM_SETTINGS = frozenset({"data.system", "data.params", "data.declared"})


def _base(t: dict, problems: list[Problem]) -> TrainConfig:
    """The fixed config; TrainConfig names all of its problems at once. With problems, the rest of
    the spec is still checked against the base's good settings (see _good_part)."""
    t = json.loads(json.dumps(t))  # a copy: the config must not share dicts with the stored spec
    try:
        return TrainConfig.from_dict(t)
    except ConfigError as exc:
        problems += under("base", exc)
        return _good_part(t, exc)
    except (TypeError, ValueError) as exc:
        problems.append(at("base", t, "a TrainConfig table", str(exc)))
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
