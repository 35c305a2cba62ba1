"""`dlnn report STUDY`: what a finished study answers, and how sure, computed from the storage alone.

One pass reads the storage into rows (data.py), grades the answers (answers.py, which asks each kind
of question's module, with the statistics of evidence.py) and computes every section (sections.py;
importance.py the fANOVA one) into a plain record (record.py); renderers then write it as Markdown
with PNG figures (figures.py draws them from the record's data), as one self-contained HTML page,
and as the study's dashboard note. `--json` prints the record itself;
`--against` compares the claims of two reports (compare.py).

Objective values are in the metric's own units (the study stores log10 of error metrics; see
records.py). Trials are sorted into outcomes from the worker's recorded verdict: complete, pruned,
diverged (non-finite or exploding, or out of memory), failed (an error, or a worker that died),
interrupted (stopped and re-queued) and unfinished.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

import dlnn_studies.study.report.compare as cmp
import dlnn_studies.study.report.importance as importance
import dlnn_studies.study.report.render as render
import dlnn_studies.study.report.sections as sections
from .answers import all_claims, answers, tally
from .basis import scores
from .data import Row, StudyData, load, robust_winner
from .figures import draw
from .lr_bands import TOLERANCE, tolerance_band
from .record import Figure, Record, Section, claims_from_json
from ...store.storage import close_storage, open_storage

NOTE_FIGURE_PREFIX = "report-"

__all__ = ["Row", "StudyData", "TOLERANCE", "build_record", "load", "report", "robust_winner", "tolerance_band", "against"]


def build_record(d: StudyData, rollouts: dict | None = None, log: Callable[[str], None] = lambda m: None) -> Record:
    """Every number and claim of the report, from the rows alone (`rollouts`: the held-out rollout errors of the
    best and the baselines, from plots.rollout_errors, when checkpoints were at hand)."""
    log("grading the answers")
    basis, graded, bands = answers(d)
    sc = scores(d, basis)
    parts: list[Section | None] = [sections.answers_section(d, basis, graded), sections.verdict(d, graded, rollouts)]
    steps = (("per choice", lambda: sections.per_choice(d, basis)), ("learning rates", lambda: sections.lr_section(d, bands)),
             ("d0", lambda: sections.dadaptation(d)), ("interactions", lambda: sections.interactions(d)),
             ("importances (fANOVA with bootstrap)", lambda: importance.importances(d, basis, sc)),
             ("failures", lambda: sections.failures(d)), ("pruning", lambda: sections.pruning(d)),
             ("seeded retrains", lambda: sections.robust(d)), ("controlled comparisons", lambda: sections.seeded(d)))
    for label, step in steps:
        log(label)
        try:
            parts.append(step())
        except Exception as exc:  # one broken section must not hide the others' answers
            parts.append(Section(label.capitalize(), (sections.Text(f"This section could not be computed: {type(exc).__name__}: {exc}"),)))
    claims = all_claims(graded)
    return Record(d.name, d.spec.description or "", basis.text, tally(claims), tuple(s for s in parts if s is not None), tuple(claims))


@dataclass(frozen=True)
class Written:
    markdown: Path
    html: Path
    headline: str
    note_saved: bool
    record: Record


def report(url: str, name: str, out: str | Path = "reports", *, artifacts: str | Path | None = None, save_to_study: bool = True,
           rollout_plot: bool = True, log: Callable[[str], None] = lambda m: None) -> Written:
    """Write out/<study>/report.md (+ figures/) and report.html; save the note and figures into the study.
    The storage is opened once for all of it; `log` hears each step."""
    from ...spec.names import study_folder

    folder = study_folder(out, name)
    storage = open_storage(url)
    try:
        log(f"reading study {name!r}")
        d = load(storage, name)
        rollouts = None
        if rollout_plot and artifacts and d.best:
            log("rolling out the best config and the baselines from their checkpoints")
            rollouts = _rollout_errors(storage, name, d, artifacts)
        record = build_record(d, rollouts, log)
        log("drawing figures and writing the report")
        folder.mkdir(parents=True, exist_ok=True)
        paths = {f.name: draw(f, folder / "figures") for s in record.sections for f in s.items if isinstance(f, Figure)}
        md = folder / "report.md"
        md.write_text(render.to_markdown(record, lambda f: f"figures/{paths[f.name].name}"))
        page = folder / "report.html"
        page.write_text(render.to_html(record, lambda f: paths[f.name], f"{name}: study report"))
        saved = False
        if save_to_study:
            log("saving the report into the study (dashboard note)")
            saved = _save_into_study(storage, name, record, paths, artifacts)
    finally:
        close_storage(storage)
    return Written(md, page, render.headline(record), saved, record)


def record_of(url: str, name: str) -> Record:
    """The record alone (no files, no rollouts): what `dlnn report --json` prints."""
    storage = open_storage(url)
    try:
        return build_record(load(storage, name))
    finally:
        close_storage(storage)


def against(record: Record, other: str, url: str) -> cmp.Comparison:
    """Compare a record's claims with another report's: `other` is a JSON file from `dlnn report --json`,
    or a study name in storage `url`."""
    path = Path(other)
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        return cmp.compare(record.study, list(record.claims), data.get("study", other), claims_from_json(data))
    theirs = record_of(url, other)
    a_name, b_name = record.study, theirs.study
    if a_name == b_name:
        a_name, b_name = f"{a_name} (A)", f"{b_name} (B)"
    return cmp.compare(a_name, list(record.claims), b_name, list(theirs.claims))


def _save_into_study(storage, name: str, record: Record, paths: dict[str, Path], artifacts: str | Path | None) -> bool:
    """The report as the study's dashboard note; figures as study artifacts when a store is given
    (uploaded once per content: a figure already stored under the same name is reused)."""
    from optuna_dashboard import save_note

    from ...store.storage import artifact_store

    study = optuna.load_study(study_name=name, storage=storage)
    urls: dict[str, str] = {}
    if artifacts:
        store = artifact_store(artifacts)
        stored = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study, storage=storage)}
        for key, path in paths.items():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            filename = f"{NOTE_FIGURE_PREFIX}{path.stem}-{digest}.png"
            artifact_id = stored.get(filename)
            if artifact_id is None:
                tmp = path.with_name(filename)
                tmp.write_bytes(path.read_bytes())
                try:
                    artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(tmp), study_or_trial=study,
                                                                   storage=storage, mimetype="image/png")
                finally:
                    tmp.unlink(missing_ok=True)
            urls[key] = f"/artifacts/{storage.get_study_id_from_name(name)}/{artifact_id}"
    from .dashboard import save_views

    views = save_views(study, record)
    note = render.to_markdown(record, lambda f: urls.get(f.name, f"figures/{paths[f.name].name}"))
    if views:
        note = note.replace("\n## Answers", "\n*The report's own views (importance with its range, the objective against the actual "
                            "learning rate, the history with diverged trials) are on this page below; the dashboard's built-in "
                            "Importance and parameter panels use other inputs (completed trials only, d0 from the few trials that "
                            "drew it, `lr_position`) and can disagree with them.*\n\n## Answers", 1)
    save_note(study, note)
    return True


def _rollout_errors(storage, name: str, d: StudyData, artifacts: str | Path) -> dict:
    """Held-out rollout errors over time of the best and the baselines from their checkpoints in the artifact store."""
    from ..plots import rollout_errors
    from ...store.storage import artifact_store

    best = d.row(d.best[0])
    baselines = [r for r in d.rows if r.baseline and r.number != best.number]
    try:
        store = artifact_store(artifacts)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoints = {}
            for label, row in [(f"best (trial {best.number})", best)] + [(f"{b.baseline} (trial {b.number})", b) for b in baselines]:
                metas = [m for m in optuna.artifacts.get_all_artifact_meta(trials[row.number], storage=storage) if m.filename == "model.pt"]
                if not metas:
                    continue
                path = Path(tmp) / f"{row.number}.pt"
                optuna.artifacts.download_artifact(artifact_store=store, file_path=str(path), artifact_id=metas[-1].artifact_id)
                checkpoints[label] = path
            if not checkpoints:
                return {"error": "no checkpoint of the best trial or a baseline is in the artifact store."}
            return rollout_errors(checkpoints)
    except Exception as exc:  # the report never fails on a picture
        return {"error": f"{type(exc).__name__}: {exc}"}
