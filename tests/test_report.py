"""`dlnn report` and `dlnn verify` on studies with known answers, written straight into storage
(SQLite and PostgreSQL), plus the pruning benchmark's counting on known curves."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.trial import TrialState
from report_support import SPACE, _add, _study
from service_support import fake_fit, pg_url, storage_url, tiny_spec, write_spec  # noqa: F401 (fixtures)

from dlnn_studies.cli import main as cli
from dlnn_studies.study.report import load, report, tolerance_band
from dlnn_studies.study.launch import launch
from dlnn_studies.spec.schema import load_spec
from dlnn_studies.store.urls import normalize_url
from dlnn_studies.study.verify import candidates, verify
from dlnn_studies.study.worker import run_worker


def test_report_states_the_known_answers(storage_url, tmp_path):
    """adam is 10× better than sgd everywhere; adam's lr band spans exactly the points within 10× of
    its best; l1_sum is better than mse at batch 32 and worse at 128 (an interaction); sgd diverges
    at high lr. The report says all of it, and the headline ranks adam first."""
    study = _study(storage_url, tmp_path)
    for i, lr in enumerate([1e-4, 3e-4, 1e-3, 3e-3, 1e-2]):
        rel = 1.5 * abs(math.log10(lr / 1e-3))  # adam's best at 1e-3; 31× worse one decade away
        for loss, batch, f in (("mse", 32, 2.0), ("l1_sum", 32, 1.0), ("mse", 128, 1.0), ("l1_sum", 128, 2.0)):
            _add(study, opt="adam", lr=lr, loss=loss, batch=batch, value=1e-4 * f * 10 ** rel)
            _add(study, opt="sgd", lr=lr * 10, loss=loss, batch=batch, value=1e-3 * f * 10 ** rel)
    for lr in (0.05, 0.08):
        _add(study, opt="sgd", lr=lr, state=TrialState.PRUNED, status="diverged", reason="diverged at epoch 2: training loss is nan",
             curve={1: 0.0})
    written = report(storage_url, "known", tmp_path / "reports", save_to_study=False)
    text = written.markdown.read_text()
    # Per choice: adam first, best values 1e-4 vs 1e-3.
    lines = [line for line in text.splitlines() if line.startswith("| adam |") or line.startswith("| sgd |")]
    assert lines[0].startswith("| adam | 20 | 20 | 0 | 0 | 0 | 0 % | 0.0001 |")
    assert lines[1].startswith("| sgd | 22 | 20 | 0 | 2 | 0 | 9 % | 0.001 |")
    claim = next(c for c in written.record.claims if c.id == "optimizer.name: adam vs sgd")
    assert claim.grade == "established" and claim.effect == pytest.approx(-1.0, abs=0.05)  # 10× lower, graded as such
    assert "adam has the best good trials" in written.headline
    # LR tolerance: within 10× of the best for |log10(lr / 1e-3)| < 1 with the factor-2 cells: 3e-4 .. 3e-3.
    d = load(storage_url, "known")
    adam = [(r.flat["optimizer.lr"], r.value) for r in d.rows if r.flat["optimizer.name"] == "adam"]
    assert tolerance_band(adam, 1e-4, "minimize") == (pytest.approx(3e-4), pytest.approx(3e-3))
    assert "| adam | 20 | 20 | 0 | 0.0001 | 0.0003 | 0.003 | 1.00 | closed | closed | 0 |" in text
    # The interaction: l1_sum wins at batch 32, mse at 128 (medians over lr in each cell).
    table = text.split("(rows loss, columns batch_size)")[1].splitlines()
    row32 = next(line for line in table if line.startswith("| mse |"))
    row_l1 = next(line for line in table if line.startswith("| l1_sum |"))
    med = lambda cell: float(cell.split()[0])  # noqa: E731
    mse32, mse128 = (med(c) for c in row32.split("|")[2:4])
    l1_32, l1_128 = (med(c) for c in row_l1.split("|")[2:4])
    assert l1_32 < mse32 and mse128 < l1_128
    # Failures: both sgd divergences, by the worker's verdict, at high lr.
    assert "| diverged (non-finite or exploding loss or objective) | 2 | optimizer.name = sgd (2)" in text
    # Importances: one lr feature for both optimizers, one method with its bootstrap range.
    assert "| log10(lr / default lr) |" in text and "fANOVA" in text and "| setting | importance | 10 % | 90 % |" in text
    html = written.html.read_text()
    assert html.startswith("<!doctype html>") and "data:image/png;base64," in html and "Learning-rate tolerance" in html


def test_report_of_an_empty_and_an_all_diverged_study(storage_url, tmp_path):
    _study(storage_url, tmp_path, name="empty")
    text = report(storage_url, "empty", tmp_path / "r", save_to_study=False).markdown.read_text()
    for heading in ("Answers", "Verdict", "Per choice", "Learning-rate tolerance", "D-Adaptation", "Interactions", "Importances", "Failures",
                    "Pruning", "Robust winners"):
        assert f"## {heading}" in text  # a section with nothing to show stays, saying why
    assert "No trial completed" in text and "No trial diverged or failed (0 judged)" in text

    study = _study(storage_url, tmp_path, name="broken")
    for lr in (1e-4, 1e-3, 1e-2):
        _add(study, lr=lr, state=TrialState.PRUNED, status="diverged", reason="diverged at epoch 1: non-finite q̈ (singular Hessian)",
             curve={})
    _add(study, state=TrialState.FAIL, status="error", reason="RuntimeError: boom")
    text = report(storage_url, "broken", tmp_path / "r", save_to_study=False).markdown.read_text()
    assert "4 trials: 0 complete, 0 pruned, 3 diverged, 1 failed" in text
    assert "| diverged (non-finite or exploding loss or objective) | 3 |" in text and "| error (the config or the code raised) | 1 |" in text
    assert "| adam | 4 | 0 | 0 | 3 | 1 | 75 % |" in text


def test_verdict_when_the_best_trial_is_a_baseline(tmp_path):
    """The search found nothing better than the enqueued recipe: the verdict says so, rather than
    claiming that no baseline was enqueued; with a better trial, the recipe is compared."""
    url = f"sqlite:///{tmp_path / 'b.db'}"
    study = _study(url, tmp_path, name="recipe")
    _add(study, value=1e-4, baseline="published")
    _add(study, opt="sgd", value=1e-3)
    text = report(url, "recipe", tmp_path / "r", save_to_study=False).markdown.read_text()
    assert "The best trial is the baseline published itself" in text and "enqueued no baseline" not in text
    _add(study, value=1e-5)
    text = report(url, "recipe", tmp_path / "r", save_to_study=False).markdown.read_text()
    assert "| val_rel_mse | 1e-05 | 0.0001 | 0.1 |" in text


def test_report_of_a_multi_objective_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    extra = ""
    text = tiny_spec(name="pareto", trials=20, space=SPACE, extra=extra).replace(
        "[study]", '[objective]\nmetrics = ["val_rel_mse", "wall_time_s"]\n[study]').replace(
        '[pruner]\nname = "none"', '[pruner]\nname = "none"')
    launch(load_spec(write_spec(tmp_path, text, "p.toml")), url, log=lambda m: None)
    study = optuna.load_study(study_name="pareto", storage=normalize_url(url))
    assert study.metric_names == ["log10(val_rel_mse)", "wall_time_s"]
    _add(study, value=1e-3, values=[-3.0, 5.0])
    _add(study, opt="sgd", value=1e-2, values=[-2.0, 1.0])
    out = report(url, "pareto", tmp_path / "r", save_to_study=False).markdown.read_text()
    assert "a Pareto study; the report judges the first objective" in out and "**Best: trial 0**" in out


def _wsgi_get(app, path: str) -> tuple[str, bytes]:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    if "?" in path:
        environ["PATH_INFO"], environ["QUERY_STRING"] = path.split("?", 1)
    setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO()
    status = {}
    body = b"".join(app(environ, lambda s, headers, exc=None: status.setdefault("s", s)))
    return status["s"], body


def test_the_dashboard_serves_the_report_note_and_figures(tmp_path):
    import optuna_dashboard

    url = f"sqlite:///{tmp_path / 'd.db'}"
    study = _study(url, tmp_path, name="shown")
    for lr in (3e-4, 1e-3, 3e-3):
        _add(study, lr=lr, value=1e-3 * lr / 1e-4)
    artifacts = tmp_path / "artifacts"
    written = report(url, "shown", tmp_path / "r", artifacts=artifacts)
    assert written.note_saved
    report(url, "shown", tmp_path / "r", artifacts=artifacts)  # a second report reuses the same figure artifacts
    app = optuna_dashboard.wsgi(normalize_url(url), artifact_store=optuna.artifacts.FileSystemArtifactStore(str(artifacts)))
    status, body = _wsgi_get(app, f"/api/studies/{study._study_id}?after=0")
    assert status.startswith("200")
    detail = json.loads(body)
    assert "## Per choice" in detail["note"]["body"] and "Learning-rate tolerance" in detail["note"]["body"]
    figures = [a for a in detail["artifacts"] if a["filename"].startswith("report-")]
    assert sorted(a["filename"].split("-")[1] for a in figures) == ["history", "lr_tolerance"]  # each figure uploaded once
    # The report's own views on the study page: importance is left out (3 trials are too few), lr and history are there.
    assert {g["id"] for g in detail["plotly_graph_objects"]} == {"dlnn-lr", "dlnn-history"}
    assert "learning rate" in next(g["graph_object"] for g in detail["plotly_graph_objects"] if g["id"] == "dlnn-lr")
    assert "The report's own views" in detail["note"]["body"]
    link = f"/artifacts/{study._study_id}/{figures[0]['artifact_id']}"
    assert link in detail["note"]["body"]
    status, png = _wsgi_get(app, link)
    assert status.startswith("200") and png.startswith(b"\x89PNG")


def test_verify_retrains_the_best_with_fresh_seeds_and_export_marks_the_winner(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'v.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=5))), url, log=lambda m: None)
    run_worker(url, "tiny", fit_fn=fake_fit(), install_signals=False, artifacts=None, log=lambda m: None, timeout=120)
    child, n = verify(url, "tiny", top=2, seeds=2, references=("structured_adam",), log=lambda m: None)
    assert (child, n) == ("tiny-verify", 6)
    assert verify(url, "tiny", top=2, seeds=2, references=("structured_adam",), log=lambda m: None) == (child, 0)  # idempotent
    seen = []

    def fit(config, report=None, out_dir=None, metrics=None):  # the seed changes the result a little; prunable trials would be pruned
        seen.append((config.seed, config.optimizer.name, config.model.hidden))
        result = fake_fit()(config, report, out_dir)
        result.metrics["val_rel_mse"] *= 1 + config.seed / 1e4
        return result

    run_worker(url, child, fit_fn=fit, install_signals=False, artifacts=None, log=lambda m: None, timeout=120)
    assert sorted(s for s, *_ in seen) == [1000, 1000, 1000, 1001, 1001, 1001]
    assert ("structured_adam" in {t.user_attrs.get("reference") for t in optuna.load_study(study_name=child, storage=url).trials})
    d = load(url, "tiny")
    ranked = candidates(d.verify, d.direction)
    assert len(ranked) == 3 and all(c.n_ok == 2 and c.std is not None and c.std > 0 for c in ranked)
    winner = next(c for c in ranked if c.trial is not None)
    text = report(url, "tiny", tmp_path / "r", save_to_study=False).markdown.read_text()
    assert "structured_adam (reference preset)" in text and f"| trial {winner.trial} |" in text
    assert cli.main(["export", "tiny", "--top", "1", "--storage", url, "--out", str(tmp_path / "e"), "--format", "json"]) == 0
    metas = {json.loads(p.read_text())["trial"]: json.loads(p.read_text()) for p in (tmp_path / "e" / "tiny").glob("*.meta.json")}
    assert metas[winner.trial]["robust_winner"] is True and metas[winner.trial]["over_seeds"]["seeds_ok"] == 2


def _pruning_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pruning.py"
    spec = importlib.util.spec_from_file_location("pruning_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pruning_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_pruning_audit_counts_false_kills_and_saved_epochs():
    bench = _pruning_benchmark()
    Curve = bench.Curve
    curves = [Curve(0, {1: 1.0, 2: 0.5, 3: 0.3, 4: 0.1}),  # the best: final 0.1
              Curve(1, {1: 2.0, 2: 1.5, 3: 0.5, 4: 0.15}),  # a late bloomer: within 2× of the best
              Curve(2, {1: 3.0, 2: 3.0, 3: 3.0, 4: 3.0}),  # hopeless
              Curve(3, {1: 5.0, 2: 5.0, 3: 5.0, 4: 5.0}, prunable=False)]  # a baseline: never pruned
    audit = bench.count(curves, {1: 2, 2: 1}, epochs=4, factor=2.0)
    assert (audit.pruned, audit.false_kills, audit.judged) == (2, 1, 4)
    assert audit.epochs_run == 4 + 2 + 1 + 4 and audit.epochs_full == 16 and audit.saved == pytest.approx(5 / 16)
    # A median pruner after one start-up trial, no warm-up: trials 1 and 2 sit above the best's curve at epoch 1.
    stopped = bench.replay(curves, lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0), epochs=4)
    assert stopped == {1: 1, 2: 1}  # the baseline (trial 3) is worse still but never stopped
