"""A launched study's definition as data: what `launch` compiled from the spec, stored on the study
beside the raw TOML, so every reader (workers, status, export, report, refine, verify) loads the
same search space, base config, objective, sampler, pruner and budget instead of compiling the
spec again with today's registries (nanoGPT's checkpoints carry their `model_args` the same way).

The record is plain JSON with a format number (`FORMAT`). An optimizer's lr range, a scheduler's
defaults or any other registry entry edited after launch therefore never changes a launched study.
A study launched before definitions were stored (it has only the raw spec) is compiled from its
raw spec once more, as it always was; a record of another format is refused, naming both formats.
"""

from __future__ import annotations

from typing import Any, Mapping

from dlnn_core import ConfigError
from dlnn_core.config import TrainConfig

from ..errors import UsageError
from .baselines import Baseline
from .schema import StudySpec
from .space import Param

FORMAT = 1  # bump when the record's shape changes; from_record refuses other formats by name
FORMAT_KEY = "format"
KIND = "dlnn-study-definition"

# StudySpec fields stored as they are (JSON values); base, space, baselines and raw are converted.
_PLAIN = ("name", "description", "metrics", "directions", "trials", "timeout_s", "heartbeat_interval", "grace_period",
          "max_retry", "sampler", "sampler_options", "pruner", "pruner_options")
_TUPLES = ("metrics", "directions")


def param_record(p: Param) -> dict[str, Any]:
    """One compiled parameter as JSON: every field, the per-optimizer ranges resolved at launch included."""
    return {"key": p.key, "path": p.path, "kind": p.kind, "choices": list(p.choices), "low": p.low, "high": p.high,
            "log": p.log, "step": p.step, "value": p.value, "grid": list(p.grid), "parent": p.parent,
            "only_for": None if p.only_for is None else list(p.only_for), "per_optimizer": p.per_optimizer,
            "per_choice": {name: [low, high] for name, (low, high) in p.per_choice.items()}}


def param_from_record(d: Mapping[str, Any]) -> Param:
    return Param(key=d["key"], path=d["path"], kind=d["kind"], choices=tuple(d["choices"]), low=d["low"], high=d["high"],
                 log=d["log"], step=d["step"], value=d["value"], grid=tuple(d["grid"]), parent=d["parent"],
                 only_for=None if d["only_for"] is None else tuple(d["only_for"]), per_optimizer=d["per_optimizer"],
                 per_choice={name: (float(r[0]), float(r[1])) for name, r in d["per_choice"].items()})


def to_record(spec: StudySpec) -> dict[str, Any]:
    """The compiled spec as a JSON-safe record (what `launch` stores on the study)."""
    return {FORMAT_KEY: FORMAT, "kind": KIND,
            **{name: list(getattr(spec, name)) if name in _TUPLES else getattr(spec, name) for name in _PLAIN},
            "base": spec.base.to_dict(),
            "space": [param_record(p) for p in spec.space],
            "baselines": [{"name": b.name, "config": b.config.to_dict(), "params": b.params, "overrides": b.overrides}
                          for b in spec.baselines]}


def from_record(record: Mapping[str, Any], raw: Mapping[str, Any], source: str) -> StudySpec:
    """The StudySpec a record describes, with `raw` (the stored TOML) beside it; nothing is compiled.
    The base config is rebuilt with TrainConfig's checks (a setting today's code no longer knows is
    refused with its field named); the space keeps the ranges it was launched with."""
    fmt = record.get(FORMAT_KEY) if isinstance(record, Mapping) else None
    if fmt != FORMAT or record.get("kind") != KIND:
        raise UsageError(f"{source}: the stored study definition has format {fmt!r}; this dlnn reads format {FORMAT} "
                         f"({KIND}). Use the dlnn version that launched the study, or launch it again with --from")
    try:
        base = TrainConfig.from_dict(record["base"])
        baselines = tuple(Baseline(b["name"], TrainConfig.from_dict(b["config"]), dict(b["params"]), dict(b["overrides"]))
                          for b in record["baselines"])
        space = tuple(param_from_record(p) for p in record["space"])
        plain = {name: tuple(record[name]) if name in _TUPLES else record[name] for name in _PLAIN}
    except ConfigError as exc:
        raise UsageError(f"{source}: the stored base config no longer loads with this dlnn: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{source}: the stored study definition (format {FORMAT}) is damaged: {type(exc).__name__}: {exc}") from None
    return StudySpec(**plain, base=base, space=space, baselines=baselines, raw=dict(raw))

