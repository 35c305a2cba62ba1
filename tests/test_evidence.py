"""The report's graded claims on studies with known structure, written straight into storage: a real
effect is established, a null effect is bounded by the right X, an optimizer that never learned gets
no band, a band cut by the searched range is a lower bound, thin cells get no median, an untried
choice is named, the winner's regression is stated, seeds decide, and two reruns are compared."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from report_support import _add, _study
from service_support import fake_fit, tiny_spec, write_spec

from dlnn_core.optim import OPTIMIZERS
from dlnn_studies.cli import main as cli
from dlnn_studies.study.launch import launch
from dlnn_studies.study.report import against, build_record, load, record_of, report
from dlnn_studies.study.report import evidence as ev
from dlnn_studies.study.report.compare import CONTRADICTS, compare
from dlnn_studies.study.verify import per_name, verify_per
from dlnn_studies.study.worker import run_worker
from dlnn_studies.spec.schema import load_spec


def _claim(record, cid):
    return next(c for c in record.claims if c.id == cid)


def _two_optimizers(study, seed: int, adam: float = 1e-4, sgd: float = 1e-3, n: int = 24):
    """adam's trials scatter (0.15 decades) around `adam`, sgd's around `sgd`; loss and batch size have no effect."""
    rng = np.random.default_rng(seed)
    for opt, centre in (("adam", adam), ("sgd", sgd)):
        low = OPTIMIZERS[opt].default_lr
        for i in range(n):
            _add(study, opt=opt, lr=low * 10 ** rng.uniform(-0.3, 0.3), loss=("mse", "l1_sum")[i % 2], batch=(32, 128)[(i // 2) % 2],
                 value=centre * 10 ** rng.normal(0, 0.15))


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'e.db'}"


def test_a_real_effect_is_established_and_a_null_effect_is_bounded(url, tmp_path):
    _two_optimizers(_study(url, tmp_path), seed=1)
    record = record_of(url, "known")
    real = _claim(record, "optimizer.name: adam vs sgd")
    assert real.grade == ev.ESTABLISHED and real.effect == pytest.approx(-1.0, abs=0.2) and real.high < 0
    null = _claim(record, "loss: l1_sum vs mse")
    assert null.grade == ev.NO_EFFECT
    assert null.low < 0 < null.high  # the truth (no effect) lies inside
    assert null.bound == pytest.approx(max(abs(null.low), abs(null.high))) and null.bound <= ev.NO_EFFECT_MAX
    assert null.label == f"no effect larger than {ev.factor(null.bound)}"
    assert {c.id for c in record.claims if c.kind == "comparison" and c.question in ("optimizer.name", "loss", "batch_size")} == {
        "optimizer.name: adam vs sgd", "loss: l1_sum vs mse", "batch_size: 32 vs 128"}


def test_an_optimizer_that_never_learned_gets_no_band_and_is_said_so(url, tmp_path):
    study = _study(url, tmp_path)
    _two_optimizers(study, seed=2, adam=1e-4, sgd=0.95)  # sgd: no better than predicting zero (relative MSE 1)
    d = load(url, "known")
    record = build_record(d)
    claim = _claim(record, "lr band: sgd")
    assert claim.kind == "learned" and "never learned" in claim.statement and "no band" in claim.statement
    lr = next(s for s in record.sections if s.title.startswith("Learning-rate"))
    rows = {r[0]: r for item in lr.items if hasattr(item, "rows") for r in item.rows}
    assert rows["sgd"][5] is None and rows["sgd"][7] == "never learned"  # no band low, no width
    panels = {p["optimizer"]: p for item in lr.items if hasattr(item, "data") for p in item.data["panels"]}
    assert panels["sgd"]["band"] is None and panels["adam"]["band"] is not None


def test_a_band_cut_by_the_searched_range_is_a_lower_bound(url, tmp_path):
    study = _study(url, tmp_path)
    low, high = OPTIMIZERS["adam"].lr_range
    for i in range(12):  # best at the floor of the searched range, worse as lr grows: nothing below the band was tried
        lr = low * 10 ** (i / 11 * math.log10(high / low))
        _add(study, opt="adam", lr=lr, value=1e-4 * 10 ** (1.2 * math.log10(lr / low)))
    record = record_of(url, "known")
    claim = _claim(record, "lr band: adam")
    assert "≥" in claim.statement and "lower bound" in claim.statement and f"starts at {low:.2g}" in claim.statement
    assert claim.grade != ev.ESTABLISHED
    md = report(url, "known", tmp_path / "r", save_to_study=False).markdown.read_text()
    assert "| open | closed |" in md


def test_thin_cells_get_no_median_and_an_untried_choice_is_named(url, tmp_path):
    study = _study(url, tmp_path)
    for lr, loss, batch in ((1e-3, "mse", 32), (2e-3, "mse", 32), (1e-3, "l1_sum", 128), (2e-3, "l1_sum", 128), (3e-3, "l1_sum", 128)):
        _add(study, opt="adam", lr=lr, loss=loss, batch=batch, value=1e-4 * lr / 1e-3)
    written = report(url, "known", tmp_path / "r", save_to_study=False)
    md = written.markdown.read_text()
    table = md.split("(rows loss, columns batch_size)")[1]
    assert "| mse | – (2/2) |" in table  # two values: no median
    assert "| l1_sum |  | 0.0002 (3/3) |" in table
    tried = _claim(written.record, "optimizer.name: sgd tried")
    assert tried.grade == ev.UNDETERMINED and "no trial drew it" in tried.statement
    assert "never scored: sgd" in written.headline  # the run's output names it too
    per = md.split("**optimizer.name**")[-1]
    assert "| sgd | 0 | 0 |" in per


def test_the_winners_regression_against_a_baseline_is_stated(url, tmp_path):
    study = _study(url, tmp_path)
    _add(study, opt="adam", lr=1e-3, value=5e-4, baseline="structured_adam", metrics={"ood_rel_mse": 0.005})
    _add(study, opt="adam", lr=2e-3, value=1e-4, metrics={"ood_rel_mse": 0.0104})
    written = report(url, "known", tmp_path / "r", save_to_study=False)
    md = written.markdown.read_text()
    verdict = md.split("## Verdict")[1].split("## ")[0]
    assert "**Where the winner is worse**" in verdict and "on ood_rel_mse: 0.0104 against 0.005 (2.08×; one draw each)" in verdict
    claim = _claim(written.record, "winner worse: ood_rel_mse vs structured_adam")
    assert claim.grade == ev.UNDETERMINED and "verify" in claim.settle
    assert "test_rollout_error vs" not in " ".join(c.id for c in written.record.claims)  # where it is better: no claim


def test_the_verdict_names_the_largest_regressions_and_points_to_the_rest(url, tmp_path):
    """Many metrics worse than a baseline: the verdict states the largest three, by their ratio, and
    says where every one is graded; the Answers table still lists them all."""
    study = _study(url, tmp_path)
    worse = {"ood_rel_mse": 2.0, "test_rel_mse": 50.0, "val_rel_mse_median": 1.1, "test_rollout_error": 8.0, "ood_energy_error": 3.0}
    _add(study, opt="adam", lr=1e-3, value=5e-4, baseline="structured_adam", metrics={m: 0.01 for m in worse})
    _add(study, opt="adam", lr=2e-3, value=1e-4, metrics={m: 0.01 * r for m, r in worse.items()})
    written = report(url, "known", tmp_path / "r", save_to_study=False)
    md = written.markdown.read_text()
    verdict = md.split("## Verdict")[1].split("## ")[0]
    stated = [m for m in worse if f" on {m}: " in verdict]
    assert sorted(stated) == sorted(["test_rel_mse", "test_rollout_error", "ood_energy_error"])  # 50×, 8×, 3×
    assert "the largest 3 of 5 such comparisons" in verdict
    answers = md.split("## Verdict")[0]
    assert all(f"worse than structured_adam (trial 0) on {m}: " in answers for m in worse)


def test_two_reruns_agree_and_a_flipped_study_contradicts(tmp_path, capsys):
    a, b, c = (f"sqlite:///{tmp_path / f'{x}.db'}" for x in "abc")
    _two_optimizers(_study(a, tmp_path), seed=10)
    _two_optimizers(_study(b, tmp_path), seed=11)
    _two_optimizers(_study(c, tmp_path), seed=12, adam=1e-3, sgd=1e-4)
    ra = record_of(a, "known")
    same = against(ra, "known", b)
    assert same.established_contradicted == 0 and any(r[4] == "agree" and r[2] == ev.ESTABLISHED for r in same.rows)
    flipped = against(ra, "known", c)
    row = next(r for r in flipped.rows if r[0] == "optimizer.name: adam vs sgd")
    assert row[2] == row[3] == ev.ESTABLISHED and row[4] == CONTRADICTS and flipped.established_contradicted >= 1
    # The CLI: --json prints the record, and --against reads it back from the file.
    assert cli.main(["report", "known", "--storage", c, "--json"]) == 0
    out = tmp_path / "c.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.main(["report", "known", "--storage", c, "--json"])
    out.write_text(buf.getvalue())
    data = json.loads(out.read_text())
    assert data["format"] == 1 and any(x["id"] == "optimizer.name: adam vs sgd" for x in data["claims"])
    capsys.readouterr()
    assert cli.main(["report", "known", "--storage", a, "--out", str(tmp_path / "r"), "--no-save", "--against", str(out)]) == 0
    said = capsys.readouterr()
    assert "reading study 'known' ..." in said.err and "grading the answers ..." in said.err  # it says what it is doing
    assert "1 contradiction(s)" in said.out or "contradiction(s) (1 involving" in said.out
    text = (tmp_path / "r" / "known" / "against-c.md").read_text()
    assert "| optimizer.name: adam vs sgd | optimizer.name | established | established | CONTRADICTS |" in text
    assert compare("x", [], "y", []).contradictions == 0


def test_verify_per_retrains_each_choices_best_and_the_seeds_decide(tmp_path):
    """`dlnn verify --per optimizer.name`: the best trial of each optimizer, retrained with fresh seeds
    through a real worker; the Answers then carry the seeds' comparison and prefer it."""
    url = f"sqlite:///{tmp_path / 'v.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=8))), url, log=lambda m: None)
    run_worker(url, "tiny", fit_fn=fake_fit(), install_signals=False, artifacts=None, log=lambda m: None, timeout=120)
    study = optuna.load_study(study_name="tiny", storage=url)
    if len({t.params.get("optimizer.name") for t in study.trials if t.state == TrialState.COMPLETE}) < 2:
        pytest.skip("the sampler drew one optimizer only")  # pragma: no cover (seeded TPE start-up draws both)
    child, n = verify_per(url, "tiny", "optimizer.name", seeds=3, log=lambda m: None)
    assert child == per_name("tiny", "optimizer.name") and n == 6
    assert verify_per(url, "tiny", "optimizer.name", seeds=3, log=lambda m: None) == (child, 0)  # idempotent

    def fit(config, report=None, out_dir=None, metrics=None):  # rmsprop is 4× worse over seeds, whatever the search drew
        result = fake_fit()(config, report, out_dir)
        result.metrics["val_rel_mse"] = (1e-3 if config.optimizer.name == "adam" else 4e-3) * (1 + (config.seed - 1000) / 50)
        return result

    run_worker(url, child, fit_fn=fit, install_signals=False, artifacts=None, log=lambda m: None, timeout=120)
    record = record_of(url, "tiny")
    seeds = [c for c in record.claims if c.source == "seeds"]
    assert len(seeds) == 1 and seeds[0].id == "seeds: optimizer.name: adam vs rmsprop" and seeds[0].effect < 0
    assert seeds[0].grade == ev.ESTABLISHED  # 4× with a spread of a few percent over 3 seeds
    assert "ranks first (adam, rmsprop)" in record.sections[0].items[2].text
    with pytest.raises(Exception, match="not a categorical setting"):
        verify_per(url, "tiny", "model.hidden", seeds=3, log=lambda m: None)


def test_what_contradicts_what():
    """Opposite graded effects contradict; an undetermined claim asserts nothing; a band whose edge is open
    (width a lower bound) contradicts only a band narrower than that bound."""
    def c(kind, grade, effect, low, high, bound=None):
        return ev.Claim("x", "q", kind, "", grade, effect, low, high, bound=bound)

    assert ev.contradicts(c("comparison", ev.ESTABLISHED, -1.0, -1.5, -0.5), c("comparison", ev.SUGGESTIVE, 0.4, 0.1, 0.7))
    assert not ev.contradicts(c("comparison", ev.ESTABLISHED, -1.0, -1.5, -0.5), c("comparison", ev.UNDETERMINED, 0.4, -0.3, 1.1))
    assert ev.contradicts(c("comparison", ev.ESTABLISHED, -1.0, -1.5, -0.6), c("comparison", ev.NO_EFFECT, 0.0, -0.3, 0.3, bound=0.3))
    closed = c("band", ev.ESTABLISHED, 0.7, 0.35, 0.69)
    assert not ev.contradicts(closed, c("band", ev.UNDETERMINED, 0.2, 0.0, 0.24))  # undetermined: no claim
    assert not ev.contradicts(closed, c("band", ev.SUGGESTIVE, 0.3, 0.2, None))  # ≥ 0.2 decades is consistent with 0.35–0.69
    assert ev.contradicts(closed, c("band", ev.SUGGESTIVE, 1.5, 1.2, None))  # ≥ 1.2 decades is not
    assert ev.contradicts(closed, c("band", ev.SUGGESTIVE, 0.2, 0.1, 0.25))
