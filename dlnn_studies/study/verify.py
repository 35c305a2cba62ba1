"""`dlnn verify STUDY --top K --seeds M`: retrain the K best configs with M fresh seeds.

The best single draw of a search is optimistically biased (it won partly by its seed). The
retrains are trials of a child study, `STUDY-verify`, so any number of workers run them in
parallel and the dashboard shows them: each is enqueued with the candidate's whole config and a
new `seed` (model initialization and minibatch order; the dataset stays the same), is never
pruned, and records `verify_of` (the candidate's trial number) and `seed`. A `--reference`
preset (the published recipe) is retrained the same way on the study's data and epochs, so the
winners are compared with it at equal fidelity and over the same seeds. `candidates()` ranks the
candidates by their mean over seeds; the report shows it and `dlnn export` marks the winner.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import optuna

from . import records
from ..errors import UsageError
from .launch import launch
from .service import ranked_trials, stored_spec
from ..spec.baselines import recipe
from ..spec.schema import parse_spec
from ..store.storage import close_storage, open_storage

FIRST_SEED = 1000  # fresh seeds: far from the 0.. that specs and searches use


def verify_name(name: str) -> str:
    return f"{name}-verify"


def per_name(name: str, key: str) -> str:
    """The child study of `dlnn verify NAME --per KEY`: one retrained config per choice of KEY."""
    return f"{name}-per-{key}"


@dataclass(frozen=True)
class Candidate:
    """One verified config: its objective over fresh seeds (diverged seeds are counted, not averaged)."""

    label: str  # "trial 12" or the reference preset's name
    trial: int | None  # the study's trial; None for a reference preset
    n_ok: int
    n_diverged: int
    mean: float | None
    std: float | None
    rollout_mean: float | None
    rollout_std: float | None


def verify(url: str, name: str, *, top: int = 3, seeds: int = 3, references: tuple[str, ...] = (),
           log: Callable[[str], None] = print) -> tuple[str, int]:
    """Launch STUDY-verify with top × seeds enqueued retrains; returns (its name, trials enqueued).
    Relaunching with the same arguments is a no-op."""
    from dlnn_core.config import PRESETS

    if top < 1 or seeds < 1:
        raise UsageError(f"--top {top} --seeds {seeds}: both must be at least 1")
    for ref in references:
        if ref not in PRESETS:
            raise UsageError(f"--reference {ref!r}: not a preset; known: {', '.join(sorted(PRESETS))}")
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        ranked = ranked_trials(optuna.load_study(study_name=name, storage=storage))[:top]
    finally:
        close_storage(storage)
    if not ranked:
        raise UsageError(f"study {name!r} has no completed feasible trial to verify yet (see `dlnn status {name}`)")
    child = verify_name(name)
    raw = copy.deepcopy(spec.raw)
    raw["study"] = {"name": child, "description": f"the {len(ranked)} best configs of {name} retrained with {seeds} fresh seeds"}
    raw["space"], raw["sampler"], raw["pruner"] = {}, {"name": "random"}, {"name": "none"}
    raw.pop("baseline", None)
    raw["budget"] = {"trials": (len(ranked) + len(references)) * seeds}
    child_spec = parse_spec(raw, source=f"verify spec for {name}")
    launched = launch(child_spec, url, log=lambda m: None)
    if not launched.created:
        log(f"study {child!r} already exists; run workers on it: dlnn work {child}")
        return child, 0
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=child, storage=storage)
        for t in ranked:
            flat = records.trial_flat(t)
            flat.pop("device", None)
            for i in range(seeds):
                seed = FIRST_SEED + i
                study.enqueue_trial({}, user_attrs={"overrides": {**flat, "seed": seed}, "verify_of": t.number, "seed": seed})
        base = spec.base.to_flat()
        for ref in references:  # the preset's recipe on the study's data, epochs and dtype
            flat = {**base, **recipe(PRESETS[ref].to_flat())}
            flat.pop("device", None)
            for i in range(seeds):
                seed = FIRST_SEED + i
                study.enqueue_trial({}, user_attrs={"overrides": {**flat, "seed": seed}, "verify_of": -1, "reference": ref, "seed": seed})
    finally:
        close_storage(storage)
    n = (len(ranked) + len(references)) * seeds
    log(f"launched {child!r}: trials {', '.join(str(t.number) for t in ranked)} of {name!r}"
        + (f" and {', '.join(references)}" if references else "") + f" × {seeds} fresh seeds ({n} trials); "
        f"run workers on it: dlnn work {child}")
    return child, n


def best_per_choice(study: optuna.Study, key: str) -> dict[Any, optuna.trial.FrozenTrial]:
    """The best completed feasible trial of each choice of `key` (each with its own tuned learning rate)."""
    out: dict[Any, optuna.trial.FrozenTrial] = {}
    for t in ranked_trials(study):
        choice = records.trial_flat(t).get(key)
        if choice is not None and choice not in out:
            out[choice] = t
    return out


def verify_per(url: str, name: str, key: str, *, seeds: int = 3, log: Callable[[str], None] = print) -> tuple[str, int]:
    """Launch STUDY-per-KEY: the best config of every choice of KEY retrained with `seeds` fresh seeds,
    so that "which KEY" rests on mean ± interval over seeds rather than on single draws. Relaunching is a no-op."""
    if seeds < 2:
        raise UsageError(f"--seeds {seeds}: a comparison over seeds needs at least 2 per choice")
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        searched = [q.key for q in spec.space if q.kind == "categorical"]
        if key not in searched:
            raise UsageError(f"--per {key!r}: not a categorical setting that study {name!r} searches; "
                             f"its categorical settings: {', '.join(searched) or 'none'}")
        best = best_per_choice(optuna.load_study(study_name=name, storage=storage), key)
    finally:
        close_storage(storage)
    if len(best) < 2:
        raise UsageError(f"--per {key}: study {name!r} has a completed trial for {len(best)} choice(s) of {key}; "
                         "a comparison needs two (see `dlnn status`)")
    child = per_name(name, key)
    raw = copy.deepcopy(spec.raw)
    raw["study"] = {"name": child, "description": f"the best config of each {key} of {name} retrained with {seeds} fresh seeds"}
    raw["space"], raw["sampler"], raw["pruner"] = {}, {"name": "random"}, {"name": "none"}
    raw.pop("baseline", None)
    raw["budget"] = {"trials": len(best) * seeds}
    launched = launch(parse_spec(raw, source=f"verify --per spec for {name}"), url, log=lambda m: None)
    if not launched.created:
        log(f"study {child!r} already exists; run workers on it: dlnn work {child}")
        return child, 0
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=child, storage=storage)
        for choice, t in best.items():
            flat = records.trial_flat(t)
            flat.pop("device", None)
            for i in range(seeds):
                seed = FIRST_SEED + i
                study.enqueue_trial({}, user_attrs={"overrides": {**flat, "seed": seed}, "verify_of": t.number, "seed": seed,
                                                    "verify_per": key, "choice": choice})
    finally:
        close_storage(storage)
    n = len(best) * seeds
    log(f"launched {child!r}: the best trial of each {key} of {name!r} "
        f"({', '.join(f'{c}: {t.number}' for c, t in best.items())}) × {seeds} fresh seeds ({n} trials); run workers on it: dlnn work {child}")
    return child, n


def candidates(rows: Iterable[Any], direction: str) -> list[Candidate]:
    """Rank verified configs by their mean objective over seeds (report.Row-like rows with
    `verify_of`, `outcome`, `value` and `metrics`); configs whose every seed diverged come last."""
    by: dict[str, list[Any]] = {}
    for r in rows:
        if r.verify_of is not None and r.outcome in ("complete", "diverged", "failed", "pruned"):
            by.setdefault(r.reference or f"trial {r.verify_of}", []).append(r)
    out = []
    for label, rs in by.items():
        trial = None if rs[0].reference else rs[0].verify_of
        values = [r.value for r in rs if r.outcome == "complete" and r.value is not None and math.isfinite(r.value)]
        rollouts = [r.metrics.get("test_rollout_error") for r in rs if r.outcome == "complete"]
        rollouts = [v for v in rollouts if isinstance(v, (int, float)) and math.isfinite(v)]
        out.append(Candidate(label, trial, len(values), sum(r.outcome == "diverged" for r in rs), _mean(values), _std(values),
                             _mean(rollouts), _std(rollouts)))
    sign = 1.0 if direction == "minimize" else -1.0
    return sorted(out, key=lambda c: (c.mean is None, sign * (c.mean or 0.0)))


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
