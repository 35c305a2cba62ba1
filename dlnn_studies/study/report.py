"""`dlnn report STUDY`: what a finished study answers, computed from the storage alone.

The report is a list of blocks (headings, paragraphs, tables, figures) built by one function per
section, then written twice from the same blocks: Markdown with PNG figures beside it, and one
self-contained HTML file with the figures embedded. It is also saved into the study, so the
dashboard shows it: the Markdown as the study's note and the figures as study artifacts.

Every section says why when it has nothing to show. Objective values are in the metric's own
units (the study stores log10 of error metrics; see records.py). Trials are sorted into outcomes:
complete, pruned (by the pruner), diverged (non-finite or exploding training, or out of memory),
failed (an error, or a worker that died), interrupted (stopped and re-queued), and unfinished.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import records
from .service import feasible, ranked_trials, stored_spec
from ..spec.schema import StudySpec
from ..store.storage import close_storage, open_storage
from .verify import Candidate, candidates, verify_name

OUTCOMES = ("complete", "pruned", "diverged", "failed")
TOLERANCE = 10.0  # the learning-rate band: where an optimizer stays within this factor of its own best
NOTE_FIGURE_PREFIX = "report-"

# ------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Row:
    """One trial as the report sees it; values in the metric's own units."""

    number: int
    outcome: str  # complete, pruned, diverged, failed, interrupted, unfinished
    flat: dict[str, Any]  # the full TrainConfig, dotted ({} when it was never built)
    metrics: dict[str, Any]
    value: float | None  # the (first) objective, complete trials only
    curve: dict[int, float]  # per-epoch validation error (the pruning metric)
    reason: str
    baseline: str | None
    verify_of: int | None  # verification retrains: the trial they retrain (-1 for a reference preset)
    reference: str | None = None  # verification retrains of a preset


@dataclass(frozen=True)
class StudyData:
    name: str
    spec: StudySpec
    metric: str  # the first objective
    direction: str
    rows: list[Row]
    best: list[int]  # trial numbers, best first (Pareto front first for several objectives)
    verify: list[Row] = field(default_factory=list)  # the child study `<name>-verify`, if any

    def by(self, outcome: str) -> list[Row]:
        return [r for r in self.rows if r.outcome == outcome]

    @property
    def judged(self) -> list[Row]:
        """Trials that ran to a verdict (interrupted and unfinished ones are not)."""
        return [r for r in self.rows if r.outcome in OUTCOMES]

    def row(self, number: int) -> Row:
        return next(r for r in self.rows if r.number == number)


def outcome(t: FrozenTrial) -> str:
    status = records.trial_status(t)
    if t.state == TrialState.COMPLETE:
        return "complete" if feasible(t) else "diverged"
    if t.state == TrialState.PRUNED and status == records.TIMEOUT:
        return "unfinished"  # stopped by the study's timeout: no verdict on its config
    if t.state == TrialState.PRUNED:
        return "diverged" if status in records.INFEASIBLE or not feasible(t) else "pruned"
    if t.state == TrialState.FAIL:
        return "interrupted" if status == records.INTERRUPTED else "failed"
    return "unfinished"


def rows_of(study: optuna.Study) -> list[Row]:
    """Every trial of a study as the report sees it."""
    scales = records.stored_scales(study)
    log_curve = scales[0] if scales else False
    rows = []
    for t in study.get_trials(deepcopy=False):
        kind = outcome(t)
        value = records.raw_values(scales, t)[0] if kind == "complete" and t.values else None
        if value is not None and not math.isfinite(value):
            kind, value = "diverged", None
        curve = {int(k): (10.0 ** v if log_curve else v) for k, v in t.intermediate_values.items() if math.isfinite(v)}
        try:
            flat = records.trial_flat(t)
        except Exception:  # a config from another version of the project: report the trial without it
            flat = {}
        rows.append(Row(t.number, kind, flat, records.trial_metrics(t), value, curve, t.user_attrs.get(records.REASON) or "",
                        t.user_attrs.get("baseline"), t.user_attrs.get("verify_of"), t.user_attrs.get("reference")))
    return rows


def load(url: str, name: str) -> StudyData:
    """Everything the report needs, read once from the storage."""
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        study = optuna.load_study(study_name=name, storage=storage)
        rows = rows_of(study)
        best = [t.number for t in ranked_trials(study)]
        verify: list[Row] = []
        child = verify_name(name)
        if child in {s.study_name for s in storage.get_all_studies()}:
            verify = rows_of(optuna.load_study(study_name=child, storage=storage))
    finally:
        close_storage(storage)
    return StudyData(name, spec, spec.metrics[0], spec.directions[0], rows, best, verify)


def robust_winner(storage, name: str, direction: str) -> Candidate | None:
    """The verified trial with the best mean over seeds (on an open storage), or None when
    STUDY-verify does not exist or has no finished retrain."""
    child = verify_name(name)
    if child not in {s.study_name for s in storage.get_all_studies()}:
        return None
    rows = rows_of(optuna.load_study(study_name=child, storage=storage))
    ranked = [c for c in candidates(rows, direction) if c.trial is not None]
    return ranked[0] if ranked and ranked[0].mean is not None else None


# ---------------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    kind: str  # h1, h2, p, table, fig
    text: str = ""
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    path: Path | None = None  # figures


def h2(text: str) -> Block:
    return Block("h2", text)


def p(text: str) -> Block:
    return Block("p", text)


def table(headers: list[str], rows: list[list[Any]]) -> Block:
    return Block("table", headers=tuple(headers), rows=tuple(tuple(cell(c) for c in r) for r in rows))


def cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "inf"
        return f"{v:.3g}"
    return str(v)


def fmt(v: float | None) -> str:
    return cell(v)


# ---------------------------------------------------------------------------------- figures


class Figures:
    """Writes matplotlib figures as PNGs into one folder and hands back blocks for them."""

    def __init__(self, folder: Path):
        import matplotlib

        matplotlib.use("Agg")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, fig, name: str, caption: str) -> Block:
        from matplotlib import pyplot as plt

        path = self.folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return Block("fig", caption, path=path)


def _major_ticks_only(ax) -> None:
    """Log axes spanning less than a decade label their minor ticks, which then overlap."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _plt():
    from matplotlib import pyplot as plt

    return plt


# --------------------------------------------------------------------------------- sections


def _best(values: list[float], d: StudyData) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return min(values) if d.direction == "minimize" else max(values)


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def describe_config(flat: dict[str, Any], keys: list[str], d: StudyData | None = None) -> str:
    """The given settings of a config; with `d`, conditional ones only where they apply (d0 only for D-Adaptation)."""
    inactive = {q.key for q in d.spec.space if q.parent and not q.active(flat.get(q.parent))} if d else set()
    parts = []
    for k in keys:
        if k in flat and k not in inactive:
            v = flat[k]
            parts.append(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}")
    return ", ".join(parts)


def searched_keys(d: StudyData) -> list[str]:
    return [p.key for p in d.spec.space if p.kind != "fixed"]


def categorical_keys(d: StudyData) -> list[str]:
    return [p.key for p in d.spec.space if p.kind == "categorical"]


def verdict(d: StudyData, figs: Figures, rollout_plot: Callable | None) -> list[Block]:
    out = [h2("Verdict")]
    counts = Counter(r.outcome for r in d.rows)
    out.append(p(f"{len(d.rows)} trials: " + ", ".join(f"{counts.get(o, 0)} {o}" for o in (*OUTCOMES, "interrupted", "unfinished")
                                                     if counts.get(o, 0) or o in OUTCOMES)
                 + f". Objective: {d.direction} {d.metric}" + (f" (and {', '.join(d.spec.metrics[1:])}: a Pareto study; "
                                                              "the report judges the first objective)" if len(d.spec.metrics) > 1 else "") + "."))
    if not d.best:
        out.append(p("No trial completed, so there is no best config yet. See Failures below for why trials did not finish."))
        return out
    best = d.row(d.best[0])
    keys = searched_keys(d)
    out.append(p(f"**Best: trial {best.number}**, {d.metric} = {fmt(best.value)}"
                 + (f" (baseline {best.baseline})" if best.baseline else "") + ": " + (describe_config(best.flat, keys, d) or "the base config") + "."))
    rule = best.metrics.get("ood_rule")
    if isinstance(rule, str):  # measured trajectories (data.file): say how the ood split was chosen
        out.append(p("Data: measured trajectories, no true system (no energy or true-dissipation metrics); ood split: "
                     + ("none." if rule == "none" else f"rule `{rule}`; ood trajectories: {best.metrics.get('ood_trajectories', 0):.0f}; "
                        f"their states leave the training range by {best.metrics.get('ood_range_excess', 0):.3g} of its width.")))
    baselines = [r for r in d.rows if r.baseline and r.number != best.number]
    if baselines:
        metrics = [m for m in best.metrics if isinstance(best.metrics.get(m), (int, float)) and m not in ("epochs",)]
        headers = ["metric", f"best (trial {best.number})"] + [f"{b.baseline} (trial {b.number}, {b.outcome})" for b in baselines] + \
                  [f"ratio best / {b.baseline}" for b in baselines]
        rows = []
        for m in metrics:
            vals = [b.metrics.get(m) for b in baselines]
            ratios = [(best.metrics[m] / v) if isinstance(v, (int, float)) and v not in (0,) and math.isfinite(v) else None for v in vals]
            rows.append([m, best.metrics[m], *vals, *ratios])
        out.append(p("Every stored metric of the best trial against the study's baselines (ratio < 1: the best is lower). "
                     "A diverged baseline has no final metrics."))
        out.append(table(headers, rows))
    elif best.baseline:
        out.append(p(f"The best trial is the baseline {best.baseline} itself: the search found nothing better, "
                     "and the study enqueued no other baseline to compare with."))
    else:
        out.append(p("The study enqueued no baseline to compare with (add `[[baseline]]` entries, e.g. the published recipe)."))
    if rollout_plot is not None:
        try:
            block = rollout_plot(best, baselines, figs)
        except Exception as exc:  # the report never fails on a picture
            block = p(f"No rollout plot: {type(exc).__name__}: {exc}")
        if block is not None:
            out.append(block)
    return out


def per_choice(d: StudyData, figs: Figures) -> list[Block]:
    out = [h2("Per choice")]
    keys = categorical_keys(d)
    if not keys:
        return out + [p("The study searched no categorical setting (optimizer, loss, activation, ...), so there is nothing to compare by choice.")]
    epoch = equal_fidelity_epoch(d)
    out.append(p("For every categorical setting: how its trials ended, its divergence rate (diverged / judged), the best and "
                 f"median final {d.metric} of completed trials, and the median validation error at epoch {epoch} "
                 "(the latest epoch most trials reached, pruned ones included: a comparison at equal fidelity)."
                 if epoch else "For every categorical setting: how its trials ended and its final values."))
    for key in keys:
        rows = []
        for choice, group in groups(d, key).items():
            n = Counter(r.outcome for r in group)
            judged = sum(n[o] for o in OUTCOMES)
            values = [r.value for r in group if r.outcome == "complete"]
            at = [r.curve.get(epoch) for r in group] if epoch else []
            rows.append([choice, len(group), n["complete"], n["pruned"], n["diverged"], n["failed"],
                         f"{100 * n['diverged'] / judged:.0f} %" if judged else None, _best(values, d), _median(values),
                         _median(at), sum(v is not None for v in at)])
        rows.sort(key=lambda r: (r[7] is None, r[7] if d.direction == "minimize" else -(r[7] or 0)))
        out.append(p(f"**{key}**" + ("" if all(r[2] for r in rows) else
                                   ": choices with no completed trial: " + ", ".join(str(r[0]) for r in rows if not r[2]))))
        out.append(table([key, "trials", "complete", "pruned", "diverged", "failed", "diverged %", f"best {d.metric}",
                          f"median {d.metric}", f"median at epoch {epoch}" if epoch else "median at equal epoch", "n at epoch"], rows))
    return out


def groups(d: StudyData, key: str) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = defaultdict(list)
    for r in d.judged:
        if key in r.flat:
            out[r.flat[key]].append(r)
    return dict(out)


def equal_fidelity_epoch(d: StudyData, share: float = 0.6) -> int | None:
    """The latest epoch that at least `share` of the judged trials reported a value for."""
    curves = [r.curve for r in d.judged if r.curve]
    if not curves:
        return None
    reached = Counter(e for c in curves for e in c)
    good = [e for e, n in reached.items() if n >= share * len(curves)]
    return max(good) if good else min(reached)


def lr_tolerance(d: StudyData, figs: Figures) -> list[Block]:
    from dlnn_core.optim import OPTIMIZERS

    out = [h2("Learning-rate tolerance per optimizer")]
    by_opt = defaultdict(list)
    for r in d.judged:
        if "optimizer.lr" in r.flat:
            by_opt[r.flat["optimizer.name"]].append(r)
    if not any(r.outcome == "complete" for rs in by_opt.values() for r in rs):
        return out + [p("No trial completed, so no learning rate can be judged yet.")]
    lrs = {r.flat["optimizer.lr"] for rs in by_opt.values() for r in rs}
    if len(lrs) < 2:
        return out + [p(f"Every trial used the same learning rate ({fmt(next(iter(lrs)))}): the study did not search it.")]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    rows = []
    top = max([r.value for rs in by_opt.values() for r in rs if r.value]
              + [min(r.curve.values()) for rs in by_opt.values() for r in rs if r.outcome == "pruned" and r.curve], default=1.0)
    for i, (opt, rs) in enumerate(sorted(by_opt.items())):
        done = [r for r in rs if r.outcome == "complete"]
        bad = [r for r in rs if r.outcome == "diverged"]
        color = f"C{i % 10}"
        ax.scatter([r.flat["optimizer.lr"] for r in done], [r.value for r in done], color=color, label=opt, s=22)
        cut = [r for r in rs if r.outcome == "pruned" and r.curve]  # where the pruner stopped them: hollow
        ax.scatter([r.flat["optimizer.lr"] for r in cut], [min(r.curve.values()) for r in cut], facecolors="none",
                   edgecolors=color, s=18, alpha=0.6, linewidths=0.8)
        ax.scatter([r.flat["optimizer.lr"] for r in bad], [top * 3] * len(bad), color=color, marker="x", s=30)
        best = _best([r.value for r in done], d)
        band = tolerance_band([(r.flat["optimizer.lr"], r.value) for r in done], best, d.direction)
        default = OPTIMIZERS[opt].default_lr if opt in OPTIMIZERS else None
        diverged_lrs = sorted(r.flat["optimizer.lr"] for r in bad)
        rows.append([opt, len(rs), len(done), len(bad), best, band[0] if band else None, band[1] if band else None,
                     f"{math.log10(band[1] / band[0]):.2f}" if band else None, default,
                     f"{diverged_lrs[0]:.2g}–{diverged_lrs[-1]:.2g}" if diverged_lrs else None])
    ax.set_xscale("log")
    ax.set_yscale("log")
    _major_ticks_only(ax)
    ax.set_xlabel("learning rate (for D-Adaptation / Prodigy: the multiplier of d)")
    ax.set_ylabel(d.metric)
    ax.set_title("objective vs learning rate (hollow: pruned, x at the top: diverged)")
    ax.legend(fontsize=7, ncol=2)
    out.append(p(f"The tolerance band is the learning-rate interval over which an optimizer's completed trials stay within "
                 f"{TOLERANCE:g}× of its own best {d.metric} (its width in decades: wider is more forgiving). "
                 "Pruned trials have no final value and are not in the band; the figure shows them hollow."))
    out.append(table(["optimizer", "trials", "complete", "diverged", f"best {d.metric}", "band low", "band high", "band decades",
                      "registry default lr", "diverged at lr"], rows))
    out.append(figs.save(fig, "lr_tolerance", "Final objective against learning rate, per optimizer (log axes); hollow "
                                              "markers are pruned trials at the best value they reached before the cut."))
    return out


def tolerance_band(points: list[tuple[float, float]], best: float | None, direction: str) -> tuple[float, float] | None:
    """(lowest lr, highest lr) of the points within TOLERANCE× of `best`; None without points."""
    if best is None:
        return None
    if direction == "minimize":
        ok = [lr for lr, v in points if v is not None and v <= TOLERANCE * best]
    else:
        ok = [lr for lr, v in points if v is not None and v >= best / TOLERANCE]
    return (min(ok), max(ok)) if ok else None


def dadaptation(d: StudyData, figs: Figures) -> list[Block]:
    from dlnn_core.optim import OPTIMIZERS, reads

    out = [h2("D-Adaptation and Prodigy: d0 and the lr multiplier")]
    rs = [r for r in d.judged if r.flat.get("optimizer.name") in OPTIMIZERS and reads(r.flat["optimizer.name"], "d0")]
    if not rs:
        return out + [p("No trial used D-Adaptation or Prodigy (their lr is a multiplier of an estimated step d that starts at d0).")]
    rows = []
    decades = defaultdict(list)
    for r in rs:
        decades[math.floor(math.log10(r.flat["optimizer.d0"]))].append(r)
    for dec, group in sorted(decades.items()):
        n = Counter(r.outcome for r in group)
        rows.append([f"1e{dec} ≤ d0 < 1e{dec + 1}", len(group), n["complete"], n["pruned"], n["diverged"],
                     f"{100 * n['diverged'] / len(group):.0f} %", _best([r.value for r in group], d), _median([r.value for r in group])])
    out.append(p(f"{len(rs)} trials used {', '.join(sorted({r.flat['optimizer.name'] for r in rs}))}. By decade of d0:"))
    out.append(table(["d0", "trials", "complete", "pruned", "diverged", "diverged %", f"best {d.metric}", f"median {d.metric}"], rows))
    if not any(r.outcome == "complete" for r in rs):
        return out + [p("None of them completed, so there is no final value to plot against d0 (see Failures and Pruning).")]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "optimizer.d0", "d0"), (axes[1], "optimizer.lr", "lr multiplier")):
        done = [r for r in rs if r.outcome == "complete"]
        bad = [r for r in rs if r.outcome == "diverged"]
        top = max((r.value for r in done), default=1.0)
        ax.scatter([r.flat[key] for r in done], [r.value for r in done], s=22, label="complete")
        ax.scatter([r.flat[key] for r in bad], [3 * top] * len(bad), marker="x", color="C3", label="diverged")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _major_ticks_only(ax)
        ax.set_xlabel(label)
        ax.set_ylabel(d.metric)
    axes[0].legend(fontsize=7)
    out.append(figs.save(fig, "dadaptation", "D-Adaptation / Prodigy: objective against d0 and the lr multiplier (x = diverged)."))
    return out


INTERACTIONS = (
    ("loss", "batch_size", "loss form × batch size (a summed loss grows with the batch, so its effective step does too)"),
    ("model.hidden", "model.depth", "width × depth"),
    ("scheduler.name", "scheduler.warmup_t", "scheduler × warm-up (epochs)"),
    ("model.activation", "model.form", "activation × form of L"),
)


def interactions(d: StudyData, figs: Figures) -> list[Block]:
    out = [h2("Interactions")]
    out.append(p(f"Median final {d.metric} of completed trials for each pair of values (trials in brackets); "
                 "a pair whose ranking flips between rows is an interaction."))
    for a, b, title in INTERACTIONS:
        va = {r.flat.get(a) for r in d.judged if r.flat}
        vb = {r.flat.get(b) for r in d.judged if r.flat}
        if len(va) < 2 and len(vb) < 2:
            shown = ", ".join(f"{k} = {cell(next(iter(v)))}" for k, v in ((a, va), (b, vb)) if len(v) == 1)
            out.append(p(f"**{title}**: not searched in this study ({shown or 'no trials'})."))
            continue
        cols = ordered(vb)
        rows = []
        for x in ordered(va):
            row = [x]
            for y in cols:
                vals = [r.value for r in d.judged if r.flat.get(a) == x and r.flat.get(b) == y and r.outcome == "complete"]
                n = sum(1 for r in d.judged if r.flat.get(a) == x and r.flat.get(b) == y)
                med = _median(vals)
                row.append(f"{fmt(med)} ({len(vals)}/{n})" if n else "")
            rows.append(row)
        out.append(p(f"**{title}** (rows {a}, columns {b}; in brackets: completed / all trials):"))
        out.append(table([f"{a} \\ {b}", *map(cell, cols)], rows))
    return out


def ordered(values) -> list:
    """Numbers ascending, then everything else by its text."""
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    return sorted(values, key=lambda v: (0, v, "") if number(v) else (1, 0, str(v)))


def features(d: StudyData) -> tuple[list[str], list[tuple[dict[str, Any], float]]]:
    """Importance features of completed trials: every categorical setting, the learning rate as
    log10(lr / the optimizer's default) for all optimizers alike, and every numeric setting that
    every completed trial has (conditional ones such as d0 are left out); the target is log10 of
    the objective for error metrics."""
    from dlnn_core.optim import OPTIMIZERS

    done = [r for r in d.judged if r.outcome == "complete" and r.flat and r.value is not None]
    log_target = records.is_log_scaled(d.metric)
    keys = [q.key for q in d.spec.space if q.kind != "fixed" and q.only_for is None and q.key != "optimizer.lr"]
    data = []
    for r in done:
        x = {}
        for k in keys:
            if k in r.flat:
                x[k] = r.flat[k]
        if any(p.key == "optimizer.lr" and p.kind != "fixed" for p in d.spec.space):
            x["log10(lr / default lr)"] = math.log10(r.flat["optimizer.lr"] / OPTIMIZERS[r.flat["optimizer.name"]].default_lr)
        y = math.log10(max(r.value, 1e-300)) if log_target else r.value
        data.append((x, y))
    names = sorted({k for x, _ in data for k in x})
    names = [k for k in names if all(k in x for x, _ in data) and len({repr(x[k]) for x, _ in data}) > 1]
    return names, data


def importances(d: StudyData, figs: Figures) -> list[Block]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = [h2("Importances")]
    names, data = features(d)
    if len(data) < 4 or not names:
        return out + [p(f"Importances need at least 4 completed trials and a searched setting; this study has {len(data)} "
                        f"completed and {len(names)} usable settings.")]
    dists = {}
    for k in names:
        values = [x[k] for x, _ in data]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lo, hi = float(min(values)), float(max(values))
            dists[k] = FloatDistribution(lo, hi if hi > lo else lo + 1)
        else:
            dists[k] = CategoricalDistribution(sorted({v for v in values}, key=str))
    study = optuna.create_study(direction=d.direction)
    for x, y in data:
        params = {k: (float(x[k]) if isinstance(dists[k], FloatDistribution) else x[k]) for k in names}
        study.add_trial(optuna.create_trial(params=params, distributions=dists, value=y))
    results = {}
    evaluators = {"PED-ANOVA": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
                  "fANOVA": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)}
    notes = []
    for label, make in evaluators.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[label] = optuna.importance.get_param_importances(study, evaluator=make(), normalize=True)
        except Exception as exc:
            notes.append(f"{label} could not be computed: {type(exc).__name__}: {exc}")
    if not results:
        return out + [p("; ".join(notes))]
    order = sorted(names, key=lambda k: -max(r.get(k, 0.0) for r in results.values()))
    out.append(p(f"On {len(data)} completed trials, target {'log10 ' if records.is_log_scaled(d.metric) else ''}{d.metric}. "
                 "The learning rate enters as one feature for all optimizers, log10(lr / the optimizer's registry default). "
                 "Settings drawn only for some trials (d0) are left out: importance needs every trial to have them. "
                 "Completed trials only: a setting that makes trials diverge or get pruned shows in Per choice and Failures."
                 + (" " + " ".join(notes) if notes else "")))
    out.append(table(["setting", *results], [[k, *(results[lab].get(k, 0.0) for lab in results)] for k in order]))
    return out


CAUSES = (
    ("out of memory", ("out of memory",)),
    ("singular ∂²L/∂q̇² (non-finite q̈)", ("singular", "hessian", "condition")),
    ("NaN / inf loss", ("nan", "inf", "non-finite", "not finite")),
    ("loss exploded", ("exploded", "1e4", "times its best", "d >")),
    ("invalid config", ("invalid config",)),
    ("worker lost", ("heartbeat", "worker lost")),
)


def cause(reason: str) -> str:
    text = reason.lower()
    for label, words in CAUSES:
        if any(w in text for w in words):
            return label
    return "error: " + reason.split(":")[0][:60] if reason else "no reason recorded (worker lost)"


def failures(d: StudyData, figs: Figures) -> list[Block]:
    from dlnn_core.optim import OPTIMIZERS

    out = [h2("Failures")]
    bad = [r for r in d.rows if r.outcome in ("diverged", "failed")]
    if not bad:
        return out + [p(f"No trial diverged or failed ({len(d.judged)} judged).")]
    out.append(p(f"{len(bad)} of {len(d.judged)} judged trials diverged or failed. By cause, with where in the space they were "
                 "(the most common choices among them, and their learning rate relative to the optimizer's default):"))
    by_cause = defaultdict(list)
    for r in bad:
        by_cause[cause(r.reason)].append(r)
    rows = []
    keys = categorical_keys(d)
    for label, rs in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        where = []
        for k in keys:
            values = Counter(r.flat.get(k) for r in rs if r.flat)
            if values:
                v, n = values.most_common(1)[0]
                where.append(f"{k} = {v} ({n})")
        rel = [r.flat["optimizer.lr"] / OPTIMIZERS[r.flat["optimizer.name"]].default_lr for r in rs
               if r.flat.get("optimizer.name") in OPTIMIZERS]
        rows.append([label, len(rs), ", ".join(where) or "–", _median(rel), f"trial {rs[0].number}: {rs[0].reason[:120]}"])
    out.append(table(["cause", "trials", "most common choices", "median lr / default", "example"], rows))
    rel_bins = defaultdict(Counter)
    for r in d.judged:
        if r.flat.get("optimizer.name") in OPTIMIZERS:
            rel = r.flat["optimizer.lr"] / OPTIMIZERS[r.flat["optimizer.name"]].default_lr
            b = "< 0.3× default" if rel < 0.3 else "0.3–3× default" if rel <= 3 else "> 3× default"
            rel_bins[b][r.outcome] += 1
    if rel_bins:
        out.append(p("Divergence by learning rate relative to the optimizer's default:"))
        out.append(table(["lr", "trials", "diverged", "diverged %"],
                         [[b, sum(c.values()), c["diverged"], f"{100 * c['diverged'] / max(1, sum(c.values())):.0f} %"]
                          for b, c in sorted(rel_bins.items())]))
    return out


def pruning(d: StudyData, figs: Figures) -> list[Block]:
    out = [h2("Pruning")]
    pruned = d.by("pruned")
    if not pruned:
        return out + [p(f"The {d.spec.pruner} pruner stopped no trial.")]
    at = Counter(max(r.curve) if r.curve else 0 for r in pruned)
    epochs = d.spec.base.epochs
    ran = sum(max(r.curve) if r.curve else 0 for r in d.judged)
    full = epochs * len(d.judged)
    out.append(p(f"The {d.spec.pruner} pruner stopped {len(pruned)} of {len(d.judged)} judged trials; the study ran {ran} of the "
                 f"{full} epochs its judged trials would have run unpruned ({100 * (1 - ran / max(full, 1)):.0f} % saved). "
                 "Whether it stopped trials that would have won is measured by `benchmarks/pruning.py`, which reruns them."))
    out.append(table(["pruned at epoch", "trials"], [[e, n] for e, n in sorted(at.items())]))
    return out


def robust(d: StudyData, figs: Figures) -> list[Block]:
    out = [h2("Robust winners (fresh seeds)")]
    if not d.verify:
        return out + [p(f"Not verified yet: the best single draw of a search is optimistically biased. Run "
                        f"`dlnn verify {d.name} --top 3 --seeds 3` to retrain the best configs with fresh seeds.")]
    ranked = candidates(d.verify, d.direction)
    if not ranked:
        return out + [p(f"The verification study {d.name}-verify has no finished trial yet.")]
    out.append(p(f"The best configs retrained with fresh seeds (study {d.name}-verify): {d.metric} as mean ± std over seeds, "
                 "ranked by the mean; a reference preset is retrained on the same data, epochs and seeds. The best-ranked "
                 "trial is the robust winner that `dlnn export` marks."))
    rows = []
    for c in ranked:
        row = d.row(c.trial) if c.trial is not None and any(r.number == c.trial for r in d.rows) else None
        rows.append([c.label if c.trial is not None else f"{c.label} (reference preset)", fmt(row.value if row else None), f"{fmt(c.mean)} ± {fmt(c.std)}", c.n_ok, c.n_diverged,
                     f"{fmt(c.rollout_mean)} ± {fmt(c.rollout_std)}",
                     describe_config(row.flat, categorical_keys(d), d) if row else "the preset's recipe on this study's data and epochs"])
    out.append(table(["candidate", f"search draw {d.metric}", f"{d.metric} over seeds", "seeds ok", "seeds diverged",
                      "test rollout error over seeds", "choices"], rows))
    return out


SECTIONS = (per_choice, lr_tolerance, dadaptation, interactions, importances, failures, pruning, robust)


def build(d: StudyData, figs: Figures, rollout_plot: Callable | None = None) -> list[Block]:
    blocks = [Block("h1", f"Study {d.name}: what it answers")]
    if d.spec.description:
        blocks.append(p(d.spec.description))
    blocks += verdict(d, figs, rollout_plot)
    for section in SECTIONS:
        try:
            blocks += section(d, figs)
        except Exception as exc:  # one broken section must not hide the others' answers
            blocks += [h2(section.__name__.replace("_", " ").capitalize()),
                       p(f"This section could not be computed: {type(exc).__name__}: {exc}")]
    return blocks


# ------------------------------------------------------------------------------- rendering


def to_markdown(blocks: list[Block], figure_url: Callable[[Path], str]) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "table":
            out.append("| " + " | ".join(b.headers) + " |")
            out[-1] += "\n|" + "|".join("---" for _ in b.headers) + "|"
            for r in b.rows:
                out[-1] += "\n| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
        elif b.kind == "fig":
            out.append(f"![{b.text}]({figure_url(b.path)})\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in HTML (the only inline marks the sections use)."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "fig":
            data = base64.b64encode(b.path.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}"
             "th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f0f0f0}"
             "img{max-width:100%}figcaption{font-style:italic;font-size:13px}h2{margin-top:1.6em;border-bottom:1px solid #ddd}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


# ---------------------------------------------------------------------------------- headline


def headline(d: StudyData) -> str:
    """The terminal's short answer: each categorical choice with its trial counts and best value."""
    lines = []
    for key in categorical_keys(d):
        lines.append(f"{key}:")
        rows = []
        for choice, group in groups(d, key).items():
            n = Counter(r.outcome for r in group)
            rows.append((_best([r.value for r in group], d), choice, n))
        rows.sort(key=lambda r: (r[0] is None, r[0] if (r[0] is None or d.direction == "minimize") else -r[0]))
        for best, choice, n in rows:
            lines.append(f"    {str(choice):<14} best {fmt(best):>9}   complete {n['complete']:>3}  pruned {n['pruned']:>3}  "
                         f"diverged {n['diverged']:>3}  failed {n['failed']:>3}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ write


@dataclass(frozen=True)
class Written:
    markdown: Path
    html: Path
    headline: str
    note_saved: bool


def report(url: str, name: str, out: str | Path = "reports", *, artifacts: str | Path | None = None, save_to_study: bool = True,
           rollout_plot: bool = True) -> Written:
    """Write out/<study>/report.md (+ figures/) and report.html; save the note and figures into the study."""
    from ..spec.names import study_folder

    d = load(url, name)
    folder = study_folder(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    figs = Figures(folder / "figures")
    plotter = _rollout_plotter(url, name, artifacts) if rollout_plot and artifacts else None
    blocks = build(d, figs, plotter)
    md = folder / "report.md"
    md.write_text(to_markdown(blocks, lambda path: f"figures/{path.name}"))
    page = folder / "report.html"
    page.write_text(to_html(blocks, f"{name}: study report"))
    saved = False
    if save_to_study:
        saved = save_into_study(url, name, blocks, artifacts)
    return Written(md, page, headline(d), saved)


def save_into_study(url: str, name: str, blocks: list[Block], artifacts: str | Path | None) -> bool:
    """The report as the study's dashboard note; figures as study artifacts when a store is given
    (uploaded once per content: a figure already stored under the same name is reused)."""
    import hashlib

    from optuna_dashboard import save_note

    from ..store.storage import artifact_store

    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        urls: dict[Path, str] = {}
        if artifacts:
            store = artifact_store(artifacts)
            stored = {m.filename: m.artifact_id for m in optuna.artifacts.get_all_artifact_meta(study, storage=storage)}
            for b in blocks:
                if b.kind != "fig":
                    continue
                digest = hashlib.sha256(b.path.read_bytes()).hexdigest()[:12]
                filename = f"{NOTE_FIGURE_PREFIX}{b.path.stem}-{digest}.png"
                artifact_id = stored.get(filename)
                if artifact_id is None:
                    tmp = b.path.with_name(filename)
                    tmp.write_bytes(b.path.read_bytes())
                    try:
                        artifact_id = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(tmp), study_or_trial=study,
                                                                       storage=storage, mimetype="image/png")
                    finally:
                        tmp.unlink(missing_ok=True)
                urls[b.path] = f"/artifacts/{study._study_id}/{artifact_id}"
        text = to_markdown(blocks, lambda path: urls.get(path, f"figures/{path.name}"))
        save_note(study, text)
        return True
    finally:
        close_storage(storage)


def _rollout_plotter(url: str, name: str, artifacts: str | Path) -> Callable:
    """Rollouts of the best and the baselines from their checkpoints in the artifact store."""

    def plot(best: Row, baselines: list[Row], figs: Figures) -> Block | None:
        import tempfile

        from .plots import rollouts_overlay
        from ..store.storage import artifact_store

        store = artifact_store(artifacts)
        storage = open_storage(url)
        try:
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
                    return p("No rollout plot: no checkpoint of the best trial or a baseline is in the artifact store.")
                fig = rollouts_overlay(checkpoints)
                return figs.save(fig, "rollouts", "Held-out rollouts: the truth (solid) against the best config and the "
                                                  "baselines that finished (dashed), from the same initial states.")
        finally:
            close_storage(storage)

    return plot
