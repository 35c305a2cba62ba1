"""`dlnn export STUDY`: the K best configs as files `dlnn train` accepts, each with a sidecar of
its metrics and provenance (study, trial number, spec digest, sampler; nothing that depends on
where the storage lives), plus a summary table (Markdown and CSV) and the study's spec."""

from __future__ import annotations

import csv
import datetime
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from dlnn_core.errors import shorten

from . import records
from ..errors import UsageError
from ..spec.names import study_folder
from .service import DIGEST_ATTR, SPEC_ATTR, ranked_trials, stored_spec
from ..store.storage import close_storage, open_storage

FORMATS = ("yaml", "json")
SUMMARY_METRICS = ("val_rel_mse", "val_rel_mse_median", "test_rel_mse", "ood_rel_mse", "rollout_error", "energy_error", "wall_time_s")


@dataclass(frozen=True)
class Exported:
    rank: int
    trial: int
    config_path: Path
    meta_path: Path
    values: dict[str, float]
    metrics: dict[str, Any]
    data_file: str | None = None  # the dataset file the config trained on, pinned by data_sha
    data_sha: str | None = None


def _dump(data: dict, path: Path, fmt: str, header: str = "") -> None:
    if fmt == "json":
        path.write_text(json.dumps(data, indent=2) + "\n")
    else:
        import yaml

        path.write_text(header + yaml.safe_dump(data, sort_keys=False))


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    items: list[Exported]
    table: str  # the summary table, for the terminal
    datasets: dict[str, str] = field(default_factory=dict)  # sha256 -> data.file of the configs that pin a file
    store: str | None = None  # the artifact store that holds them (--artifacts), checked
    notes: tuple[str, ...] = ()

    def retrain(self, item: Exported) -> str:
        return retrain_command(item.config_path, item.data_sha, self.store)


def retrain_command(config_path: Path, data_sha: str | None, store: str | None) -> str:
    """The command that retrains an exported config, run where `dlnn export` ran (the path as export wrote
    it, relative to that directory unless --out was absolute), with the store that holds its dataset."""
    flag = f" --artifacts {shlex.quote(store)}" if data_sha and store else ""
    return f"dlnn train {shlex.quote(str(config_path))}{flag}"


def export(url: str, name: str, *, top: int = 5, out: str | Path = "exports", fmt: str = "yaml", per: str | None = None,
           artifacts: str | None = None) -> ExportResult:
    """Write out/<study>/rankNN-trialNNNN.<fmt> (the config) and .meta.<fmt> (metrics and provenance);
    a stored name that is no valid study name gets a safe folder name, always inside `out`.
    With `per` (a dotted setting such as optimizer.name): the `top` best of each of its values.
    A config that trained on a dataset file carries its name and sha256 (`data.file`,
    `data.file_sha256`), so `dlnn train` finds those exact bytes or names them; with `artifacts`,
    the store is checked to hold them and named in the retrain command."""
    from dlnn_core.config import TrainConfig

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if top < 1:
        raise UsageError(f"--top {top}: expected at least 1")
    if per is not None and per not in TrainConfig().to_flat():
        raise UsageError(f"--per {per!r}: not a setting; e.g. optimizer.name, model.form, scheduler.name")
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        study = optuna.load_study(study_name=name, storage=storage)
        ranked = all_ranked = ranked_trials(study)
        scales = records.stored_scales(study)
        if per is None:
            ranked = ranked[:top]
        else:
            groups: dict[str, list] = {}
            for t in ranked:  # groups keep the order of their best trial
                groups.setdefault(str(records.trial_flat(t)[per]), []).append(t)
            ranked = [t for group in groups.values() for t in group[:top]]
        digest = study.user_attrs.get(DIGEST_ATTR)
        raw_spec = study.user_attrs.get(SPEC_ATTR)
        n_trials = len(study.get_trials(deepcopy=False))
        from .report import robust_winner

        winner = robust_winner(storage, name, spec.directions[0])
    finally:
        close_storage(storage)
    if not ranked:
        raise UsageError(f"study {shorten(repr(name))} has no completed feasible trial to export yet (see `dlnn status {shorten(name)}`)")
    if winner is not None and winner.trial not in {t.number for t in ranked}:  # the robust winner is always exported
        ranked += [t for t in all_ranked if t.number == winner.trial]

    folder = study_folder(out, name)  # inside `out` whatever the stored name says
    folder.mkdir(parents=True, exist_ok=True)
    about = StudyFacts(name, spec, scales, digest, n_trials, winner, artifacts, fmt)
    exported = [_write_trial(folder, about, rank, t) for rank, t in enumerate(ranked, start=1)]
    pinned = {e.data_sha: e.data_file for e in exported if e.data_sha}
    (folder / "spec.json").write_text(json.dumps(raw_spec, indent=2) + "\n")
    text = _summary(folder, name, spec.metrics, exported, winner.trial if winner else None)
    return ExportResult(folder, exported, text, pinned, artifacts, _check_datasets(pinned, artifacts))


@dataclass(frozen=True)
class StudyFacts:
    """What every exported trial of one study shares: its name, spec and provenance, and the export's options."""

    name: str
    spec: Any
    scales: Any
    digest: str | None
    n_trials: int
    winner: Any
    artifacts: str | None
    fmt: str


def _write_trial(folder: Path, about: StudyFacts, rank: int, t: FrozenTrial) -> Exported:
    """One trial's config (portable: device auto) with its retrain command, and its .meta file."""
    from ..store import datasets as ds
    from dlnn_core.config import TrainConfig

    name, spec, winner = about.name, about.spec, about.winner
    config = TrainConfig.from_dict(records.trial_config(t)).with_flat({"device": "auto"})  # portable: any machine
    stem = f"rank{rank:02d}-trial{t.number:04d}"
    config_path = folder / f"{stem}.{about.fmt}"
    meta_path = folder / f"{stem}.meta.{about.fmt}"
    values = dict(zip(spec.metrics, records.raw_values(about.scales, t)))
    metrics = records.trial_metrics(t)
    data_file, data_sha = ds.config_file(config)
    retrain = retrain_command(config_path, data_sha, about.artifacts)
    header = (f"# {name} trial {t.number} (rank {rank}): " + ", ".join(f"{m} = {v:.4g}" for m, v in values.items())
              + (f"\n# dataset: {data_file} (sha256 {data_sha}); `dlnn train` fetches it by hash with --artifacts STORE, "
                 "or uses that file only if its hash matches" if data_sha else "")
              + f"\n# retrain (from where `dlnn export` ran): {retrain}\n")
    _dump(config.to_dict(), config_path, about.fmt, header)
    worker = records.trial_worker(t)
    meta = {
        "study": name,
        "trial": t.number,
        "rank": rank,
        "objective": {m: {"direction": d, "value": v} for (m, d), v in zip(zip(spec.metrics, spec.directions), values.values())},
        "metrics": metrics,
        "params": t.params,
        "provenance": {
            "spec_digest": about.digest,
            "sampler": spec.sampler,
            "pruner": spec.pruner,
            "trials_in_study": about.n_trials,
            "baseline": t.user_attrs.get("baseline"),
            "seeded_from": t.user_attrs.get("seeded_from"),
            "trained_on": t.user_attrs.get("device"),
            "host": worker.get("host"),
            "completed": t.datetime_complete.isoformat() if t.datetime_complete else None,
            "wall_time_s": metrics.get("wall_time_s"),
            "versions": worker.get("versions", {}),
            "exported": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        "config_file": config_path.name,
    }
    if data_sha:
        meta["dataset"] = {"file": data_file, "sha256": data_sha}
    if winner is not None:  # `dlnn verify` retrained the best configs with fresh seeds
        meta["robust_winner"] = t.number == winner.trial
        if t.number == winner.trial:
            meta["over_seeds"] = {"mean": winner.mean, "std": winner.std, "seeds_ok": winner.n_ok, "seeds_diverged": winner.n_diverged}
    _dump(meta, meta_path, about.fmt)
    return Exported(rank, t.number, config_path, meta_path, values, metrics, data_file, data_sha)


def _check_datasets(pinned: dict[str, str], artifacts: str | None) -> tuple[str, ...]:
    """Notes for the terminal: where the pinned datasets are (or that they are not in the store)."""
    if not pinned:
        return ()
    from ..store import datasets as ds
    from ..store.artifacts import exists, open_store

    if artifacts is None:
        return tuple(f"dataset {file} (sha256 {ds.short(sha)}…): retrain with --artifacts STORE (the study's store), "
                     "or with that exact file in place" for sha, file in pinned.items())
    store = open_store(artifacts)
    return tuple(f"dataset {file} (sha256 {ds.short(sha)}…) " + ("is in " if exists(store, ds.dataset_key(sha)) else "is NOT in ")
                 + artifacts for sha, file in pinned.items())


def _summary(folder: Path, name: str, objective: tuple[str, ...], exported: list[Exported], robust: int | None) -> str:
    columns = list(objective) + [m for m in SUMMARY_METRICS if m not in objective]
    rows = []
    for e in exported:
        cfg = json.loads(json.dumps(_load(e.config_path)))
        row = {"rank": e.rank, "trial": e.trial, "optimizer": cfg["optimizer"]["name"], "lr": cfg["optimizer"]["lr"],
               "scheduler": cfg["scheduler"]["name"], "model": f"{cfg['model']['kind']}/{cfg['model']['form']}",
               "hidden": cfg["model"]["hidden"], "depth": cfg["model"]["depth"], "activation": cfg["model"]["activation"],
               "loss": cfg["loss"], "batch": cfg["batch_size"]}
        for m in columns:
            row[m] = e.values.get(m, e.metrics.get(m))
        if robust is not None:
            row["robust"] = "winner" if e.trial == robust else ""
        row["config"] = e.config_path.name
        rows.append(row)
    keys = list(rows[0])
    with open(folder / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "summary.md").write_text(f"# {name}: best {len(rows)} trials\n\n" + table(rows, keys, markdown=True) + "\n")
    return table(rows, [k for k in keys if k != "config"])


def _load(path: Path) -> dict:
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def table(rows: list[dict], keys: list[str], markdown: bool = False) -> str:
    cells = [[_cell(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    if markdown:
        line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
        return "\n".join([line(keys), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(keys), *map(line, cells)])
