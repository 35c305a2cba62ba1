"""`dlnn launch`: create a study once (schema included), keep the spec on it and enqueue its baselines.

Relaunching the same spec is a no-op; a changed spec is refused unless --update, and a spec whose data
names a file has those bytes published into the artifact store, and their hash recorded in the stored
spec, before the study exists. `--from OLD` enqueues the old study's best configs first, and a refine
study gets its seeds copied in as finished trials (`seed_trials`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from . import records
from ..errors import UsageError
from ..spec.names import check_name
from ..spec.baselines import make_baseline, recipe
from ..spec.schema import StudySpec, spec_digest
from ..store.optuna_private import constraint_key
from ..store.storage import close_storage, open_storage
from ..store.urls import redact
from ..spec import definition
from .service import CONSTRAINT, DEFINITION_ATTR, DIGEST_ATTR, SPEC_ATTR, find_study, ranked_trials

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
        spec = _pinned(spec, sha)
    return spec, DataPin(file, sha, local, store)


def _pinned(spec: StudySpec, sha256: str) -> StudySpec:
    """The compiled spec with `data.file_sha256` set, in its configs and its stored copy; the spec is
    not compiled again (that would read and hash the data file a second time)."""
    pin = {"data.file_sha256": sha256}
    from ..store import datasets

    return replace(spec, base=spec.base.with_flat(pin), raw=datasets.pin_raw(spec.raw, sha256),
                   baselines=tuple(replace(b, config=b.config.with_flat(pin)) for b in spec.baselines))


def _renamed(spec: StudySpec, name: str) -> StudySpec:
    """The compiled spec under another study name (--name): the name and its stored copy change."""
    check_name(name, "--name")
    raw = json.loads(json.dumps(spec.raw))
    raw.setdefault("study", {})["name"] = name
    return replace(spec, name=name, raw=raw)


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
        spec = _renamed(spec, name)
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
    study.set_user_attr(DEFINITION_ATTR, definition.to_record(spec))
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
    started = _started(storage, storage.get_study_id_from_name(name))
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
    study.set_user_attr(DEFINITION_ATTR, definition.to_record(spec))
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


def seed_trials(study: optuna.Study, spec: StudySpec, seeds: list[FrozenTrial], origin: str) -> int:
    """Copy finished trials into the new study (values, config, metrics); params that fit the new
    space keep their distribution there, so the dashboard plots them beside the grid's trials."""
    params_by_name = {p.key: p for p in spec.space if p.kind != "fixed"}
    for t in seeds:
        flat = records.trial_flat(t)
        metrics = records.trial_metrics(t)
        params, dists = {}, {}
        for key, p in params_by_name.items():
            value = flat.get(key)
            if value is None:
                continue
            if p.kind == "int":
                dist = IntDistribution(min(int(p.low), int(value)), max(int(p.high), int(value)), log=p.log)
            else:
                dist = FloatDistribution(min(p.low, value), max(p.high, value), log=p.log)
            params[key], dists[key] = value, dist
        user_attrs = {k: v for k, v in t.user_attrs.items() if k not in (records.REASON, "baseline", "overrides")}
        user_attrs.update(seeded_from=f"{origin}#{t.number}", status=records.OK)
        system_attrs = {k: t.system_attrs[k] for k in (records.CONFIG, records.METRICS, records.WORKER) if k in t.system_attrs}
        values = [records.to_stored(m, metrics[m]) if m in metrics else v for m, v in zip(spec.metrics, t.values)]
        study.add_trial(optuna.create_trial(
            state=TrialState.COMPLETE, values=values, params=params, distributions=dists, user_attrs=user_attrs,
            system_attrs={**system_attrs, constraint_key(CONSTRAINT): 0.0}, intermediate_values=t.intermediate_values))
    return len(seeds)


def next_steps(name: str, url: str | None, artifacts: str | Path | None = None) -> str:
    """The commands that follow a launch; `--artifacts` where the store is not the default directory."""
    from ..store.urls import DEFAULT_ARTIFACTS

    storage = f" --storage {redact(url)}" if url and url != "sqlite:///dlnn.db" else ""
    store = f" --artifacts {artifacts}" if artifacts and str(artifacts) != DEFAULT_ARTIFACTS else ""
    return (f"  add workers (any number, on any machine that reaches the storage):  dlnn work {name}{storage}{store}\n"
            f"  watch:      dlnn status {name}{storage}\n"
            f"  dashboard:  dlnn dashboard{storage}{store}   (http://127.0.0.1:8080)\n"
            f"  export:     dlnn export {name}{storage}{store} --top 5")
