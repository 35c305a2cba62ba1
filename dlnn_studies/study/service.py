"""Studies on a storage: launch (create once, keep the spec on the study, enqueue baselines),
the budgeted study the workers share, and status.

The trial budget is counted across all workers: a trial may only be created while fewer than
`budget.trials` trials count, and the check and the creation happen under one lock per study
(see storage.study_lock). A trial that was failed and retried (killed worker, SIGTERM) counts
once: the retry takes its slot. Queued trials (baselines, retries) are always run.
"""

from __future__ import annotations

import copy
import datetime
import heapq
import json
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from dlnn_core.errors import shorten

from . import records
from ..errors import UsageError
from ..spec.names import check_name
from ..spec.samplers import build_pruner, build_sampler
from ..spec.space import grid_space
from ..spec.schema import StudySpec, make_baseline, parse_spec, recipe, spec_digest
from ..store.storage import TrialView, budget_counts, close_storage, open_storage, redact, study_lock

SPEC_ATTR = "dlnn:spec"  # study user attr: the validated spec (parsed TOML), so every worker builds the same sampler/pruner
DIGEST_ATTR = "dlnn:spec_digest"
CONSTRAINT = "diverged"  # trial constraint: > 0 marks a diverged / out-of-memory trial infeasible
RETRY_KEY = "retry_history"  # system attr Optuna's retry callback puts on a retried trial


class BudgetReached(Exception):
    """No trial may be created: the study's budget (trials or timeout) is used up."""


def find_study(storage: optuna.storages.BaseStorage, name: str):
    """The FrozenStudy named `name`, or None."""
    for study in storage.get_all_studies():
        if study.study_name == name:
            return study
    return None


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def stored_spec(storage: optuna.storages.BaseStorage, name: str) -> StudySpec:
    """The spec kept on a study by `launch`; a UsageError if the study does not exist or was not launched by dlnn."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        known = study_names(storage)
        hint = f"; studies here: {', '.join(known)}" if known else "; this storage has no studies (run `dlnn launch SPEC`)"
        raise UsageError(f"no study named {shorten(repr(name))}{hint}") from None
    raw = storage.get_study_user_attrs(study_id).get(SPEC_ATTR)
    if raw is None:
        raise UsageError(f"study {shorten(repr(name))} was not created by `dlnn launch` (it has no stored spec)")
    return parse_spec(raw, source=f"stored spec of study {shorten(repr(name))}", check_files=False)  # checked at launch


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that use budget: all but the retries of failed trials (a retry takes its original's slot)."""
    return sum(1 for t in trials if RETRY_KEY not in t.system_attrs)


def first_start(trials: list[FrozenTrial]) -> datetime.datetime | None:
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    return min(starts) if starts else None


class ServiceStudy(optuna.Study):
    """An Optuna study whose `ask` respects the study-wide budget, checked under a per-study lock,
    and whose sampler sees at most `history` trials (see `sampler_history`)."""

    def __init__(self, study_name: str, storage, sampler, pruner, *, budget: int, timeout_s: float | None,
                 history: int | None = None):
        if isinstance(storage, optuna.storages.RDBStorage):
            storage = TrialView(storage)
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.budget, self.timeout_s = budget, timeout_s
        self.history = history if history and len(self.directions) == 1 else None
        self._capped = threading.local()

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        """Every trial: pruners, callbacks and users see the whole study."""
        return self._storage.get_all_trials(self._study_id, deepcopy=deepcopy, states=states)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        """What samplers read (Optuna's samplers use this private accessor, the public one
        serves everything else): capped to `history` trials when the study is larger."""
        trials = super()._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        if self.history is not None and len(trials) > self.history:
            # The same cap until the trials change (a new view generation, or a new list without one).
            key = self._storage.generation(self._study_id) if isinstance(self._storage, TrialView) else id(trials)
            cached = getattr(self._capped, "value", None)
            if cached is None or cached[0] != key:
                cached = (key, sampler_history(trials, self.history, self.direction))
                self._capped.value = cached
            trials = cached[1]
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def ask(self, fixed_distributions=None) -> optuna.Trial:
        if isinstance(self._storage, TrialView):
            self._storage.refresh(self._study_id)  # queued trials and new peers seen fresh
        with study_lock(self._storage, self._study_id) as conn:
            if conn is not None:
                used, waiting, start = budget_counts(conn, self._study_id)
            else:
                trials = self._storage.get_all_trials(self._study_id, deepcopy=False)
                used, start = counted(trials), first_start(trials)
                waiting = sum(t.state == TrialState.WAITING for t in trials)
            if self.timeout_s is not None and start is not None:
                if (datetime.datetime.now() - start).total_seconds() > self.timeout_s:
                    raise BudgetReached(f"the study's timeout ({self.timeout_s:g} s from its first trial) has passed")
            if not waiting and used >= self.budget:
                raise BudgetReached(f"the study's budget of {self.budget} trials is used")
            return super().ask(fixed_distributions)


def sampler_history(trials: list[FrozenTrial], history: int, direction, best: int = 100) -> list[FrozenTrial]:
    """The trials a sampler models once a study outgrows `history`: every unfinished trial, the
    `best` completed feasible ones, and the most recent finished ones up to `history`, in number
    order. TPE's "good" group is at most the 25 best trials, so it is unchanged; its "bad" group
    becomes a recent sample, which TPE's own weights already favour; and the cost of a suggestion
    stops growing with the study."""
    finished = [t for t in trials if t.state.is_finished()]
    keep = {t.number for t in trials if not t.state.is_finished()}
    sign = 1.0 if direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None and feasible(t)]
    keep.update(t.number for t in heapq.nsmallest(best, complete, key=lambda t: sign * t.value))
    for t in reversed(finished):
        if len(keep) >= history:
            break
        keep.add(t.number)
    return [t for t in trials if t.number in keep]


def build_study(storage, name: str, spec: StudySpec, seed: int) -> ServiceStudy:
    sampler = build_sampler(spec.sampler, spec.sampler_options, seed, grid_space(spec.space))
    pruner = build_pruner(spec.pruner, spec.pruner_options, spec.base.epochs)
    history = spec.sampler_options.get("max_history") if spec.sampler == "tpe" else None
    return ServiceStudy(name, storage, sampler, pruner, budget=spec.trials, timeout_s=spec.timeout_s, history=history)


# ----------------------------------------------------------------------------------- launch


@dataclass(frozen=True)
class Launched:
    name: str
    created: bool  # False: the same spec was already launched (idempotent)
    enqueued: int
    message: str


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, path + ".")
        elif a != b:
            out.append(path)
    return out


@dataclass(frozen=True)
class DataPin:
    """The dataset file a spec names, pinned by hash: `local` is the file here (None when only the
    spec's `data.file_sha256` names the bytes, which must then already be in the store)."""

    file: str
    sha256: str
    local: Path | None
    store: Any


def pin_data(spec: StudySpec, artifacts: str | Path | None, base_dir: str | Path | None = None) -> tuple[StudySpec, DataPin | None]:
    """The spec with `data.file_sha256` set to the hash of its `data.file` (read here; relative
    paths from `base_dir`, else the working directory), and the pin; (spec, None) for a spec
    whose data names no file. A spec that pins a hash itself must match the file, when the file
    is here; when it is not, the store must already hold those bytes (checked before creating).
    Without a store, a spec that pins its hash (refine and verify derive theirs from a stored spec)
    is taken as it is: its workers fetch by that hash."""
    from ..store import datasets

    file, declared = datasets.config_file(spec.base)
    if file is None:
        return spec, None
    if declared is not None:
        datasets.check_sha256(declared)
    if artifacts is None:
        if declared is not None:  # a spec derived from a stored one (refine, verify): its bytes are published
            return spec, None
        raise UsageError(f"data.file {file!r}: a study's dataset goes into the artifact store, so every worker gets the same "
                         "bytes; pass --artifacts DIR or s3://BUCKET/PREFIX (or set DLNN_ARTIFACTS)")
    from ..store.artifacts import open_store

    local = Path(file).expanduser()
    if not local.is_absolute() and base_dir is not None:
        local = Path(base_dir) / local
    if local.is_file():
        sha = datasets.sha256_file(local)
        if declared is not None and declared != sha:
            raise UsageError(f"data.file {file!r} has sha256 {sha}, but the spec pins data.file_sha256 = {declared}: restore "
                             "that file, or drop file_sha256 from the spec to pin the file as it is now")
    elif declared is not None:
        sha, local = declared, None
    else:
        raise UsageError(f"data.file {file!r}: no such file here ({local.absolute()})")
    store = open_store(artifacts)
    if declared != sha:
        spec = parse_spec(datasets.pin_raw(spec.raw, sha), source=f"spec {spec.name!r} with data.file_sha256")
    return spec, DataPin(file, sha, local, store)


def _publish(pin: DataPin | None, log) -> None:
    """The pinned bytes into the store (once: an intact copy is kept), or a check that they are there."""
    if pin is None:
        return
    from ..store import datasets
    from ..store.artifacts import describe, exists

    if pin.local is not None:
        datasets.publish(pin.store, pin.local, pin.sha256)
        log(f"dataset {pin.file} (sha256 {datasets.short(pin.sha256)}…) is in the artifact store {describe(pin.store)}")
    elif not exists(pin.store, datasets.dataset_key(pin.sha256)):
        raise datasets.DatasetMissing(
            f"data.file {pin.file!r} is not here and the artifact store {describe(pin.store)} does not hold its pinned bytes "
            f"(sha256 {pin.sha256}): launch where the file is, or with the store that holds it")


def launch(spec: StudySpec, url: str, *, name: str | None = None, update: bool = False, from_study: str | None = None,
           top: int = 3, log: Callable[[str], None] = print, seed_with: tuple[str, list[FrozenTrial]] | None = None,
           artifacts: str | Path | None = None, base_dir: str | Path | None = None) -> Launched:
    """Create the study once (schema included), keep the spec on it and enqueue its baselines;
    relaunching the same spec is a no-op, a changed one is refused unless `update`. A spec whose
    data names a file has it published into the artifact store `artifacts` and its hash recorded
    in the stored spec (`data.file_sha256`) before the study exists."""
    if name is not None and name != spec.name:
        check_name(name, "--name")
        raw = json.loads(json.dumps(spec.raw))
        raw.setdefault("study", {})["name"] = name
        spec = parse_spec(raw, source=f"spec with --name {name}")
    name = spec.name
    spec, pin = pin_data(spec, artifacts, base_dir)
    storage = open_storage(url, create_schema=True)
    try:
        return _launch(storage, spec, url, update, from_study, top, log, seed_with, pin, artifacts)
    finally:
        close_storage(storage)


def _launch(storage, spec: StudySpec, url: str, update: bool, from_study: str | None, top: int, log, seed_with,
            pin: DataPin | None = None, artifacts: str | Path | None = None) -> Launched:
    name = spec.name
    seeds: list = []
    if from_study is not None:
        if from_study == name:
            raise UsageError(f"--from {from_study}: the new study needs its own name (use --name NEW)")
        seeds = seed_configs(storage, from_study, spec, top)
        if len(spec.baselines) + len(seeds) > spec.trials:
            raise UsageError(f"budget.trials = {spec.trials} cannot hold {len(spec.baselines)} baselines + {len(seeds)} configs from {from_study!r}")
    summary = find_study(storage, name)
    if summary is not None:
        return _relaunch(storage, summary, spec, update, from_study, log, pin, artifacts)
    _publish(pin, log)  # before the study exists: no worker can start on a study whose bytes are missing
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=list(spec.directions))
    except optuna.exceptions.DuplicatedStudyError:  # another launch won the race
        return _relaunch(storage, find_study(storage, name), spec, update, from_study, log, pin, artifacts)
    study.set_user_attr(SPEC_ATTR, spec.raw)
    study.set_user_attr(DIGEST_ATTR, spec.digest)
    if spec.description:
        study.set_user_attr("description", spec.description)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names(records.metric_names(spec.metrics))
    enqueued = 0
    for b in spec.baselines:
        study.enqueue_trial(b.params, user_attrs={"baseline": b.name, "overrides": b.overrides})
        enqueued += 1
    for origin, b in seeds:
        study.enqueue_trial(b.params, user_attrs={"seeded_from": origin})
        enqueued += 1
    copied = 0
    if seed_with is not None:
        from .refine import seed_trials

        copied = seed_trials(study, spec, seed_with[1], seed_with[0])
    message = (f"launched study {name!r} on {redact(url)}: {spec.trials} trials, sampler {spec.sampler}, pruner {spec.pruner}"
               f", {enqueued} enqueued first ({len(spec.baselines)} baselines"
               + (f", {len(seeds)} from {from_study!r}" if from_study else "") + ")"
               + (f", {copied} finished trials copied from {seed_with[0]!r}" if copied else ""))
    log(message)
    log(next_steps(name, url, artifacts))
    return Launched(name, True, enqueued, message)


def _started(storage, study_id: int) -> int:
    """Trials that have run (or run now): everything but the queued ones."""
    return sum(t.state != TrialState.WAITING for t in storage.get_all_trials(study_id, deepcopy=False))


def _data_change(storage, summary, stored: dict, spec: StudySpec, update: bool) -> str | None:
    """None when the dataset's bytes are those the study was launched with; else the change, if
    `update` may make it. A study's trials must be comparable, so its bytes change only while
    no trial has started (a mistake caught before the workers run); after that, never: the data
    is the experiment, and a new dataset is a new study."""
    from ..store import datasets

    old_file, old_sha = datasets.raw_file(stored)
    new_file, new_sha = datasets.raw_file(spec.raw)
    if old_sha == new_sha:
        return None
    name = spec.name
    was = f"data.file {old_file!r} (sha256 {old_sha})" if old_sha else "generated data (no data.file)"
    now = f"data.file {new_file!r} (sha256 {new_sha})" if new_sha else "generated data (no data.file)"
    new_study = (f"launch a new study for the new data: `dlnn launch SPEC --name {name}-v2` (add `--from {name}` to start "
                 "from its best configs)")
    if not update:
        raise UsageError(f"study {name!r} was launched with {was}; the spec now gives {now}. A study's data never changes "
                         f"under it: {new_study}, or pass --update while no trial of {name!r} has started")
    started = _started(storage, summary._study_id)
    if started:
        raise UsageError(f"--update cannot change the data of study {name!r}: {started} of its trials already ran on {was}, "
                         f"and trials on different data are not comparable. {new_study}")
    return f"data: {was} -> {now}"


def _relaunch(storage, summary, spec: StudySpec, update: bool, from_study: str | None, log, pin: DataPin | None = None,
              artifacts: str | Path | None = None) -> Launched:
    name = spec.name
    stored = summary.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise UsageError(f"a study named {name!r} already exists and was not created by `dlnn launch`; choose another --name")
    if spec_digest(stored) == spec.digest and from_study is None:
        _publish(pin, log)  # idempotent; also fills a store the study is now launched against
        message = f"study {name!r} is already launched with this spec; nothing changed"
        log(message)
        log(next_steps(name, None, artifacts))
        return Launched(name, False, 0, message)
    data_change = _data_change(storage, summary, stored, spec, update and from_study is None)
    changed = _diff(stored, spec.raw)
    if not update or from_study is not None:
        raise UsageError(
            f"study {name!r} already exists with a different spec (changed: {', '.join(changed) or 'seeds'}). "
            f"Start a new study seeded with its best configs: `dlnn launch SPEC --from {name} --name {name}-v2`, "
            "or pass --update to replace the stored spec (running workers keep the old one until they restart)")
    if tuple(d.name.lower() for d in summary.directions) != spec.directions:
        raise UsageError(f"--update cannot change the objective directions of study {name!r}; launch a new study with --from")
    _publish(pin, log)
    study = optuna.load_study(study_name=name, storage=storage)
    study.set_user_attr(SPEC_ATTR, spec.raw)
    study.set_user_attr(DIGEST_ATTR, spec.digest)
    message = f"updated the stored spec of study {name!r} (changed: {', '.join(changed)})" + (f"; {data_change}" if data_change else "")
    log(message)
    return Launched(name, False, 0, message)


def seed_configs(storage, old: str, spec: StudySpec, top: int) -> list[tuple[str, Any]]:
    """The old study's best configs as enqueueable trials of the new spec (their recipe; values
    outside the new space are left to the sampler)."""
    ranked = ranked_trials(optuna.load_study(study_name=old, storage=storage))[:top]
    if not ranked:
        raise UsageError(f"--from {old}: the study has no completed feasible trials to start from")
    out = []
    seen = set()
    for trial in ranked:
        flat = recipe(records.trial_flat(trial))
        key = json.dumps(flat, sort_keys=True)
        if not flat or key in seen:  # the same config twice (a rerun baseline) is enqueued once
            continue
        seen.add(key)
        b = make_baseline(f"{old}#{trial.number}", spec.base, spec.space, flat, f"--from {old} trial {trial.number}",
                          lambda msg: None, strict=False)
        if b is not None:
            out.append((f"{old}#{trial.number}", b))
    return out


def next_steps(name: str, url: str | None, artifacts: str | Path | None = None) -> str:
    """The commands that follow a launch; `--artifacts` where the store is not the default directory."""
    from ..store.artifacts import DEFAULT_ARTIFACTS

    storage = f" --storage {redact(url)}" if url and url != "sqlite:///dlnn.db" else ""
    store = f" --artifacts {artifacts}" if artifacts and str(artifacts) != DEFAULT_ARTIFACTS else ""
    return (f"  add workers (any number, on any machine that reaches the storage):  dlnn work {name}{storage}{store}\n"
            f"  watch:      dlnn status {name}{storage}\n"
            f"  dashboard:  dlnn dashboard{storage}{store}   (http://127.0.0.1:8080)\n"
            f"  export:     dlnn export {name}{storage}{store} --top 5")


# ---------------------------------------------------------------------------------- ranking


def feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed feasible trials, best first (Pareto front first for several objectives)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)
            and t.values is not None and all(math.isfinite(v) for v in t.values)]
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    key = lambda t: tuple(s * v for s, v in zip(signs, t.values))  # noqa: E731
    if len(signs) == 1:
        return sorted(done, key=key)
    front = {t.number for t in study.best_trials if feasible(t)}
    return sorted((t for t in done if t.number in front), key=key) + sorted((t for t in done if t.number not in front), key=key)


# ----------------------------------------------------------------------------------- status


def status(url: str, name: str, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Trials by state, budget use, best value and config, running trials with worker and age,
    and recent failures with their reasons, as a JSON-ready dict."""
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        ranked = ranked_trials(study)  # before closing: a gRPC storage cannot be read once closed
        scales = records.stored_scales(study)
    finally:
        close_storage(storage)
    now = now or datetime.datetime.now()
    states: dict[str, int] = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    retried = {}
    for t in trials:
        if RETRY_KEY in t.system_attrs:
            retried[t.system_attrs[RETRY_KEY][-1]] = t.number
    best = None
    if ranked:
        b = ranked[0]
        best = {"trial": b.number, "values": dict(zip(spec.metrics, records.raw_values(scales, b))), "params": b.params,
                "config": records.trial_config(b), "metrics": records.trial_metrics(b)}
    running = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            worker = records.trial_worker(t)
            running.append({"trial": t.number, "worker": worker.get("id", "?"), "device": worker.get("device"),
                            "age_s": round((now - t.datetime_start).total_seconds(), 1) if t.datetime_start else None,
                            "last_epoch": max(t.intermediate_values) if t.intermediate_values else None})
    failures = []
    for t in reversed(trials):
        diverged = t.state == TrialState.PRUNED and not feasible(t)
        if t.state != TrialState.FAIL and not diverged:
            continue
        reason = t.user_attrs.get("reason")
        if reason is None and t.state == TrialState.FAIL:
            reason = "worker lost (heartbeat went stale)"
        if t.number in retried:
            reason += f"; retried as trial {retried[t.number]}"
        failures.append({"trial": t.number, "state": t.state.name, "reason": reason,
                         "worker": records.trial_worker(t).get("id")})
        if len(failures) >= 10:
            break
    return {
        "study": name, "spec_digest": spec.digest, "metrics": list(spec.metrics), "directions": list(spec.directions),
        "sampler": spec.sampler, "pruner": spec.pruner,
        "budget": {"trials": spec.trials, "used": counted(trials), "timeout_s": spec.timeout_s},
        "states": states, "n_trials": len(trials), "best": best, "running": running, "failures": failures,
        "dataset": _dataset(spec),
    }


def _dataset(spec: StudySpec) -> dict[str, str] | None:
    from ..store.datasets import config_file

    file, sha256 = config_file(spec.base)
    return {"file": file, "sha256": sha256} if file else None


def format_status(s: dict[str, Any]) -> str:
    lines = [f"study {s['study']}  (sampler {s['sampler']}, pruner {s['pruner']}, spec {s['spec_digest']})",
             "objective: " + ", ".join(f"{d} {m}" for m, d in zip(s["metrics"], s["directions"])),
             f"budget: {s['budget']['used']}/{s['budget']['trials']} trials used"
             + (f", timeout {s['budget']['timeout_s']:g} s" if s["budget"]["timeout_s"] else ""),
             "trials: " + ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items())]
    if s.get("dataset"):
        lines.append(f"data: {s['dataset']['file']} (sha256 {s['dataset']['sha256']})")
    best = s["best"]
    if best:
        values = ", ".join(f"{m} = {v:.4g}" for m, v in best["values"].items())
        lines.append(f"best: trial {best['trial']}  {values}")
        for k, v in sorted(best["params"].items()):
            lines.append(f"    {k} = {v:.4g}" if isinstance(v, float) else f"    {k} = {v}")
    else:
        lines.append("best: no completed trial yet")
    if s["running"]:
        lines.append("running:")
        for r in s["running"]:
            epoch = f", epoch {r['last_epoch']}" if r["last_epoch"] is not None else ""
            lines.append(f"    trial {r['trial']}  worker {r['worker']}  age {r['age_s']:.0f} s{epoch}")
    if s["failures"]:
        lines.append("recent failures:")
        for f in s["failures"]:
            lines.append(f"    trial {f['trial']} {f['state'].lower()}: {f['reason']}")
    lines.append(f"what it answers (per choice, lr tolerance, failures): dlnn report {s['study']}  (writes reports/{s['study']}/report.html)")
    return "\n".join(lines)
