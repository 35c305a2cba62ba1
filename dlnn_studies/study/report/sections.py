"""The report's sections, computed from the trials into record items (record.py): text, tables of
raw values, claims and figure data. Nothing here draws or formats a number for display except
inside sentences; every section says why when it has nothing to show."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any

import dlnn_studies.study.report.evidence as ev
from .answers import all_claims, tally
from .basis import Answer, Basis, categorical_keys, declared_choices, ordered, scores
from .divergence import lr_rel
from .interactions import INTERACTIONS
from .lr_bands import TOLERANCE, Band, best_value, lr_rows
from .data import OUTCOMES, Row, StudyData, counts
from .record import Claims, Figure, Section, Text, table
from ..verify import candidates


def median(values: list[float]) -> float | None:
    """The median of at least evidence.MIN_STAT finite values, else None (a median of two is their mean, not a finding)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if len(values) >= ev.MIN_STAT else None


def best_of(values: list[float], d: StudyData) -> float | None:
    return best_value(values, d.direction)


def searched_keys(d: StudyData) -> list[str]:
    return [q.key for q in d.spec.space if q.kind != "fixed"]


def describe_config(flat: dict[str, Any], keys: list[str], d: StudyData | None = None) -> str:
    """The given settings of a config; with `d`, conditional ones only where they apply (d0 only for D-Adaptation)."""
    inactive = {q.key for q in d.spec.space if q.parent and not q.active(flat.get(q.parent))} if d else set()
    parts = []
    for k in keys:
        if k in flat and k not in inactive:
            v = flat[k]
            parts.append(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}")
    return ", ".join(parts)


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# -------------------------------------------------------------------------------- answers


def answers_section(d: StudyData, basis: Basis, answers: list[Answer]) -> Section:
    claims = all_claims(answers)
    t = tally(claims)
    items: list[Any] = [Text(ev.GRADE_RULES.format(basis=basis.text)),
                        Text(f"{len(claims)} claims: {t[ev.ESTABLISHED]} established, {t[ev.SUGGESTIVE]} suggestive, "
                             f"{t[ev.NO_EFFECT]} no effect larger than a stated bound, {t[ev.UNDETERMINED]} undetermined. "
                             f"Judged trials: {len(d.judged)} of {len(d.rows)}; scored on the basis above: "
                             f"{len(scores(d, basis))}.")]
    if not answers:
        items.append(Text("The study asks no question this report can grade yet (no searched setting, or no judged trial)."))
    for a in answers:
        if len(a.claims) == 1 and a.claims[0].statement == a.summary:  # one claim: one line, with its grade
            c = a.claims[0]
            items.append(Text(f"**{a.question}**: {c.statement.rstrip('.')}. Grade: **{c.label}**"
                              + (f" ({c.source}: {', '.join(f'{k} {v}' for k, v in c.n.items())})" if c.n else "")
                              + (f"; to settle it: {c.settle}" if c.settle else "") + "."))
            continue
        items.append(Text(f"**{a.question}**: {a.summary}"))
        if a.claims:
            items.append(Claims(a.claims))
    return Section("Answers", tuple(items))


# -------------------------------------------------------------------------------- verdict


def verdict(d: StudyData, answers: list[Answer], rollouts: dict | None) -> Section:
    c = counts(d.rows)
    items: list[Any] = [Text(f"{len(d.rows)} trials: " + ", ".join(f"{c.get(o, 0)} {o}" for o in (*OUTCOMES, "interrupted", "unfinished")
                                                              if c.get(o, 0) or o in OUTCOMES)
                             + f". Objective: {d.direction} {d.metric}" + (f" (and {', '.join(d.spec.metrics[1:])}: a Pareto study; "
                                                                       "the report judges the first objective)" if len(d.spec.metrics) > 1 else "") + ".")]
    if not d.best:
        items.append(Text("No trial completed, so there is no best config yet. See Failures below for why trials did not finish."))
        return Section("Verdict", tuple(items))
    best = d.row(d.best[0])
    keys = searched_keys(d)
    items.append(Text(f"**Best: trial {best.number}**, {d.metric} = {fmt(best.value)} (one draw: see Robust winners for the same "
                      "config over fresh seeds)" + (f" (baseline {best.baseline})" if best.baseline else "") + ": "
                      + (describe_config(best.flat, keys, d) or "the base config") + "."))
    rule = best.metrics.get("ood_rule")
    if isinstance(rule, str):  # measured trajectories (data.file): say how the ood split was chosen
        items.append(Text("Data: measured trajectories, no true system (no energy or true-dissipation metrics); ood split: "
                          + ("none." if rule == "none" else f"rule `{rule}`; ood trajectories: {best.metrics.get('ood_trajectories', 0):.0f}; "
                             f"their states leave the training range by {best.metrics.get('ood_range_excess', 0):.3g} of its width.")))
    reg = next((a for a in answers if a.question == "winner vs baselines"), None)
    if reg is not None:
        items.append(Text(f"**Where the winner is worse**: {reg.summary}" + _largest_regressions(reg.claims)))
    baselines = [r for r in d.rows if r.baseline and r.number != best.number]
    if baselines:
        metrics = [m for m in best.metrics if isinstance(best.metrics.get(m), (int, float)) and m != "epochs"]
        headers = ["metric", f"best (trial {best.number})"] + [f"{b.baseline} (trial {b.number}, {b.outcome})" for b in baselines] + \
                  [f"ratio best / {b.baseline}" for b in baselines]
        rows = []
        for m in metrics:
            vals = [b.metrics.get(m) for b in baselines]
            ratios = [(best.metrics[m] / v) if isinstance(v, (int, float)) and v != 0 and math.isfinite(v) else None for v in vals]
            rows.append([m, best.metrics[m], *vals, *ratios])
        items.append(Text("Every stored metric of the best trial against the study's baselines (ratio < 1: the best is lower), "
                          "one draw each. A diverged baseline has no final metrics."))
        items.append(table(headers, rows))
    elif best.baseline:
        items.append(Text(f"The best trial is the baseline {best.baseline} itself: the search found nothing better, "
                          "and the study enqueued no other baseline to compare with."))
    else:
        items.append(Text("The study enqueued no baseline to compare with (add `[[baseline]]` entries, e.g. the published recipe)."))
    items.append(history(d))
    if rollouts is not None:
        if "error" in rollouts:
            items.append(Text(f"No rollout figure: {rollouts['error']}"))
        else:
            items.append(Figure("rollouts", "Held-out test rollouts: each model's state error against the truth over time "
                                            "(log axis; line: mean over trajectories, band: min–max), from the same initial states.", rollouts))
    return Section("Verdict", tuple(items))


SHOWN_REGRESSIONS = 3  # the verdict names the largest few; Answers has every one, graded


def _largest_regressions(claims: tuple[ev.Claim, ...]) -> str:
    """The largest of the winner's regressions as sentences (by the size of the log ratio, where the
    metric has one), and where the others are: a study with many metrics and baselines has dozens."""
    if not claims:
        return ""
    largest = sorted(claims, key=lambda c: -abs(c.effect or 0.0))[:SHOWN_REGRESSIONS]
    text = " " + " ".join(f"{c.statement[0].upper()}{c.statement[1:]}." for c in largest)
    if len(claims) > len(largest):
        text += (f" These are the largest {len(largest)} of {len(claims)} such comparisons; every one, graded, is under "
                 "Answers (winner vs baselines), and the table below has every metric's ratio.")
    return text


def history(d: StudyData) -> Figure:
    """Every judged trial by number: completed at its final value, pruned at the best value before the cut, diverged marked."""
    points = []
    for r in d.judged:
        value = r.value if r.outcome == "complete" else (min(r.curve.values()) if r.curve and r.outcome == "pruned" else None)
        points.append([r.number, value, r.outcome])
    return Figure("history", f"Every judged trial by number: completed at its final {d.metric}, pruned hollow at the best value "
                             "before the cut, diverged and failed as x at the top (log axis).", {"metric": d.metric, "points": points})


# ----------------------------------------------------------------------------- per choice


def per_choice(d: StudyData, basis: Basis) -> Section:
    keys = categorical_keys(d)
    if not keys:
        return Section("Per choice", (Text("The study searched no categorical setting (optimizer, loss, activation, ...), "
                                           "so there is nothing to compare by choice."),))
    epoch = basis.epoch
    items: list[Any] = [Text(f"For every categorical setting: how its trials ended, its divergence rate (diverged / judged), the best "
                             f"and median final {d.metric} of completed trials (a median only from {ev.MIN_STAT} or more), and the "
                             + (f"median validation error at epoch {epoch} (pruned trials included: equal fidelity)." if epoch else
                                "median final value."))]
    for key in keys:
        rows = []
        groups: dict[Any, list[Row]] = defaultdict(list)
        for r in d.judged:
            if key in r.flat:
                groups[r.flat[key]].append(r)
        for choice in declared_choices(d, key):
            groups.setdefault(choice, [])
        for choice, group in groups.items():
            n = Counter(r.outcome for r in group)
            judged = sum(n[o] for o in OUTCOMES)
            values = [r.value for r in group if r.outcome == "complete"]
            at = [r.curve.get(epoch) for r in group] if epoch else []
            rows.append([choice, len(group), n["complete"], n["pruned"], n["diverged"], n["failed"],
                         100 * n["diverged"] / judged if judged else None, best_of(values, d), median(values),
                         median(at), sum(v is not None for v in at)])
        rows.sort(key=lambda r: (r[7] is None, (r[7] or 0) if d.direction == "minimize" else -(r[7] or 0)))
        empty = [str(r[0]) for r in rows if not r[2]]
        items.append(Text(f"**{key}**" + (f": no completed trial for {', '.join(empty)}" if empty else "")))
        items.append(table([key, "trials", "complete", "pruned", "diverged", "failed", "diverged %", f"best {d.metric}",
                            f"median {d.metric}", f"median at epoch {epoch}" if epoch else "median at equal epoch", "n at epoch"], rows))
    return Section("Per choice", tuple(items))


# ------------------------------------------------------------------------------ lr bands


def lr_section(d: StudyData, bands: list[Band]) -> Section:
    title = "Learning-rate tolerance per optimizer"
    by = lr_rows(d)
    if not any(r.outcome == "complete" for rs in by.values() for r in rs):
        return Section(title, (Text("No trial completed, so no learning rate can be judged yet."),))
    if not bands:
        lrs = {r.flat["optimizer.lr"] for rs in by.values() for r in rs}
        return Section(title, (Text(f"Every trial used the same learning rate ({fmt(next(iter(lrs)))}): the study did not search it."),))
    rows = []
    for b in bands:
        width = (f"{'≥ ' if (b.low_open or b.high_open) else ''}{b.decades:.2f}" if b.decades is not None else
                 ("never learned" if not b.learned and b.complete else None))
        rows.append([b.optimizer, b.trials, b.complete, b.diverged, b.best, b.low, b.high, width,
                     "open" if b.low_open else ("closed" if b.low else None), "open" if b.high_open else ("closed" if b.high else None),
                     len(b.diverged_inside), b.default])
    items = [Text(f"The band is the learning-rate interval over which an optimizer's completed trials stay within "
                  f"{TOLERANCE:g}× of its own best {d.metric}, drawn only for an optimizer that learned (better than half of "
                  f"predicting zero) and from at least {ev.MIN_STAT} completed trials. An edge is *open* where no trial beyond it left the "
                  "band (diverged, completed outside it, or pruned while even its best value before the cut was outside it): the "
                  "width is then a lower bound (≥). Diverged trials inside the band are counted: the band is where good "
                  "results were seen, not where the optimizer is safe."),
             table(["optimizer", "trials", "complete", "diverged", f"best {d.metric}", "band low", "band high", "band decades",
                    "low edge", "high edge", "diverged inside", "registry default lr"], rows)]
    panels = []
    for b in bands:
        rs = by[b.optimizer]
        panels.append({"optimizer": b.optimizer, "default": b.default, "range": list(b.lr_range) if b.lr_range else None,
                       "band": [b.low, b.high] if b.low else None,
                       "complete": [[r.flat["optimizer.lr"], r.value] for r in rs if r.outcome == "complete" and r.value is not None],
                       "pruned": [[r.flat["optimizer.lr"], min(r.curve.values())] for r in rs if r.outcome == "pruned" and r.curve],
                       "diverged": [r.flat["optimizer.lr"] for r in rs if r.outcome == "diverged"]})
    items.append(Figure("lr_tolerance", "Final objective against learning rate, one panel per optimizer on its own lr axis (log axes). "
                                        "Filled: completed; hollow: pruned (the best value reached before the cut); x at the top: "
                                        "diverged; shaded: the band; dotted: the searched range.",
                        {"metric": d.metric, "panels": panels}))
    return Section(title, tuple(items))


# ---------------------------------------------------------------------------- d-adaptation


def dadaptation(d: StudyData) -> Section:
    from dlnn_core.optim import OPTIMIZERS, reads

    title = "D-Adaptation and Prodigy: d0 and the lr multiplier"
    rs = [r for r in d.judged if r.flat.get("optimizer.name") in OPTIMIZERS and reads(r.flat["optimizer.name"], "d0")]
    if not rs:
        return Section(title, (Text("No trial used D-Adaptation or Prodigy (their lr is a multiplier of an estimated step d that starts at d0)."),))
    rows = []
    decades = defaultdict(list)
    for r in rs:
        decades[math.floor(math.log10(r.flat["optimizer.d0"]))].append(r)
    for dec, group in sorted(decades.items()):
        n = Counter(r.outcome for r in group)
        values = [r.value for r in group if r.outcome == "complete"]
        rows.append([f"1e{dec} ≤ d0 < 1e{dec + 1}", len(group), n["complete"], n["pruned"], n["diverged"],
                     100 * n["diverged"] / len(group), best_of(values, d), median(values)])
    items: list[Any] = [Text(f"{len(rs)} trials used {', '.join(sorted({r.flat['optimizer.name'] for r in rs}))}. By decade of d0 "
                             f"(medians from {ev.MIN_STAT} or more completed trials):"),
                        table(["d0", "trials", "complete", "pruned", "diverged", "diverged %", f"best {d.metric}", f"median {d.metric}"], rows)]
    points = {o: [[r.flat["optimizer.d0"], r.flat["optimizer.lr"], v] for r in rs if r.outcome == o
                  for v in [r.value if o == "complete" else (min(r.curve.values()) if r.curve else None)] if v is not None]
              for o in ("complete", "pruned")}
    points["diverged"] = [[r.flat["optimizer.d0"], r.flat["optimizer.lr"]] for r in rs if r.outcome == "diverged"]
    items.append(Figure("dadaptation", "D-Adaptation / Prodigy: objective against d0 and against the lr multiplier (log axes). Filled: "
                                       "completed; hollow: pruned (best value before the cut); x at the top: diverged.",
                        {"metric": d.metric, **points}))
    return Section(title, tuple(items))


# ---------------------------------------------------------------------------- interactions


def interactions(d: StudyData) -> Section:
    items: list[Any] = [Text(f"Median final {d.metric} of completed trials for each pair of values (completed / all trials in "
                             f"brackets; no median from fewer than {ev.MIN_STAT}); the Answers grade whether a ranking flips.")]
    for a, b, title in INTERACTIONS:
        va = {r.flat.get(a) for r in d.judged if r.flat}
        vb = {r.flat.get(b) for r in d.judged if r.flat}
        if len(va) < 2 and len(vb) < 2:
            shown = ", ".join(f"{k} = {fmt(next(iter(v)))}" for k, v in ((a, va), (b, vb)) if len(v) == 1)
            items.append(Text(f"**{title}**: not searched in this study ({shown or 'no trials'})."))
            continue
        cols = ordered(vb)
        rows = []
        for x in ordered(va):
            row: list[Any] = [x]
            for y in cols:
                cell = [r for r in d.judged if r.flat.get(a) == x and r.flat.get(b) == y]
                vals = [r.value for r in cell if r.outcome == "complete"]
                row.append(f"{fmt(median(vals))} ({len(vals)}/{len(cell)})" if cell else "")
            rows.append(row)
        items.append(Text(f"**{title}** (rows {a}, columns {b}):"))
        items.append(table([f"{a} \\ {b}", *map(fmt, cols)], rows))
    return Section("Interactions", tuple(items))


# -------------------------------------------------------------------------------- failures


def failures(d: StudyData) -> Section:
    bad = [r for r in d.rows if r.outcome in ("diverged", "failed")]
    if not bad:
        return Section("Failures", (Text(f"No trial diverged or failed ({len(d.judged)} judged)."),))
    items: list[Any] = [Text(f"{len(bad)} of {len(d.judged)} judged trials diverged or failed. By cause (the worker's recorded verdict), "
                             "with where in the space they were (the most common choices among them, and their learning rate "
                             "relative to the optimizer's default); the Answers grade which settings diverge more often:")]
    by_cause = defaultdict(list)
    for r in bad:
        by_cause[r.cause].append(r)
    rows = []
    keys = categorical_keys(d)
    for label, rs in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
        where = []
        for k in keys:
            values = Counter(r.flat.get(k) for r in rs if r.flat)
            if values:
                v, n = values.most_common(1)[0]
                where.append(f"{k} = {v} ({n})")
        rel = [x for x in (lr_rel(r.flat) for r in rs) if x is not None]
        rows.append([label, len(rs), ", ".join(where) or "–", median(rel), f"trial {rs[0].number}: {rs[0].reason[:120]}"])
    items.append(table(["cause", "trials", "most common choices", "median lr / default", "example"], rows))
    bins = defaultdict(Counter)
    for r in d.judged:
        rel = lr_rel(r.flat)
        if rel is not None:
            b = "< 0.3× default" if rel < 0.3 else "0.3–3× default" if rel <= 3 else "> 3× default"
            bins[b][r.outcome] += 1
    if bins:
        items.append(Text("Divergence by learning rate relative to the optimizer's default:"))
        items.append(table(["lr", "trials", "diverged", "diverged %"],
                           [[b, sum(c.values()), c["diverged"], 100 * c["diverged"] / max(1, sum(c.values()))] for b, c in sorted(bins.items())]))
    return Section("Failures", tuple(items))


def pruning(d: StudyData) -> Section:
    pruned = d.by("pruned")
    if not pruned:
        return Section("Pruning", (Text(f"The {d.spec.pruner} pruner stopped no trial."),))
    at = Counter(max(r.curve) if r.curve else 0 for r in pruned)
    epochs = d.spec.base.epochs
    ran = sum(max(r.curve) if r.curve else 0 for r in d.judged)
    full = epochs * len(d.judged)
    return Section("Pruning", (
        Text(f"The {d.spec.pruner} pruner stopped {len(pruned)} of {len(d.judged)} judged trials; the study ran {ran} of the "
             f"{full} epochs its judged trials would have run unpruned ({100 * (1 - ran / max(full, 1)):.0f} % saved). "
             "Whether it stopped trials that would have won is measured by `benchmarks/pruning.py`, which reruns them."),
        table(["pruned at epoch", "trials"], [[e, n] for e, n in sorted(at.items())])))


# ------------------------------------------------------------------------------------ seeds


def robust(d: StudyData) -> Section:
    title = "Robust winners (fresh seeds)"
    if not d.verify:
        return Section(title, (Text(f"Not verified yet: the best single draw of a search is optimistically biased. Run "
                                    f"`dlnn verify {d.name} --top 3 --seeds 3` to retrain the best configs with fresh seeds."),))
    ranked = candidates(d.verify, d.direction)
    if not ranked:
        return Section(title, (Text(f"The verification study {d.name}-verify has no finished trial yet."),))
    rows = []
    for c in ranked:
        row = d.row(c.trial) if d.has(c.trial) else None
        rows.append([c.label if c.trial is not None else f"{c.label} (reference preset)", row.value if row else None, c.mean, c.std,
                     c.n_ok, c.n_diverged, c.rollout_mean, c.rollout_std,
                     describe_config(row.flat, categorical_keys(d), d) if row else "the preset's recipe on this study's data and epochs"])
    items: list[Any] = [Text(f"The best configs retrained with fresh seeds (study {d.name}-verify): {d.metric} as mean ± std over seeds, "
                             "ranked by the mean; a reference preset is retrained on the same data, epochs and seeds. The best-ranked "
                             "trial is the robust winner that `dlnn export` marks.")]
    top = ranked[0]
    if top.trial is not None and d.has(top.trial) and top.mean and d.row(top.trial).value:
        ratio = top.mean / d.row(top.trial).value
        items.append(Text(f"The robust winner's mean over {top.n_ok} seeds is {ratio:.2g}× its search draw "
                          + ("(the draw was lucky: expect the mean)." if ratio > 1.2 else "(the draw was typical).")))
    items.append(table(["candidate", f"search draw {d.metric}", f"{d.metric} mean over seeds", "std", "seeds ok", "seeds diverged",
                        "test rollout error mean", "std", "choices"], rows))
    return Section(title, tuple(items))


def seeded(d: StudyData) -> Section | None:
    if not d.per:
        return None
    items: list[Any] = [Text("Controlled comparisons (`dlnn verify --per`): the best config of each choice, with its own tuned "
                             f"learning rate, retrained with fresh seeds. {d.metric} as mean ± std over seeds; the Answers compare "
                             "them with Welch intervals on log values and prefer them to the search's draws.")]
    for key, rows in d.per.items():
        by: dict[Any, list[Row]] = defaultdict(list)
        for r in rows:
            by[r.choice].append(r)
        out = []
        for choice, rs in by.items():
            vals = [r.value for r in rs if r.outcome == "complete" and r.value is not None]
            trial = rs[0].verify_of
            out.append([choice, trial, d.row(trial).value if d.has(trial) else None, len(vals), sum(r.outcome == "diverged" for r in rs),
                        statistics.fmean(vals) if vals else None, statistics.stdev(vals) if len(vals) > 1 else None])
        sign = 1 if d.direction == "minimize" else -1
        out.sort(key=lambda r: (r[5] is None, sign * (r[5] or 0)))
        items.append(Text(f"**{key}** (study {d.name}-per-{key}):"))
        items.append(table([key, "trial", f"search draw {d.metric}", "seeds ok", "seeds diverged", "mean", "std"], out))
    return Section("Seeded comparisons", tuple(items))
