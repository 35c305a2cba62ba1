"""Seeded retrains (`dlnn verify --per SETTING`) as evidence: each choice's objective over fresh seeds,
their pairwise claims, and the search's claims those contradict downgraded (a controlled comparison
outranks a search's draws)."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations
from typing import Any

import dlnn_studies.study.report.evidence as ev
from .basis import Basis, effect_text, ordered, ratio_text, unit_of
from .data import StudyData
from .. import records


SEEDS_PREFIX = "seeds: "  # the id of a seeded comparison: the search's claim id behind it


def seed_values(d: StudyData, key: str) -> dict[Any, list[float]]:
    """Per choice, the objective (log10 for error metrics, negated when maximized) of each seeded retrain that completed."""
    log = records.is_log_scaled(d.metric)
    sign = 1.0 if d.direction == "minimize" else -1.0
    out: dict[Any, list[float]] = defaultdict(list)
    for r in d.per.get(key, []):
        if r.choice is not None and r.outcome == "complete" and r.value is not None and (r.value > 0 or not log):
            out[r.choice].append(sign * (math.log10(r.value) if log else r.value))
    return dict(out)


def seed_claims(d: StudyData, key: str) -> list[ev.Claim]:
    """The pairwise comparisons of the choices of `key` over their seeded retrains (Welch on log10 values)."""
    vals = {c: v for c, v in seed_values(d, key).items() if len(v) >= 2}
    if len(vals) < 2:
        return []
    basis = Basis(d.metric, None, records.is_log_scaled(d.metric), 1.0 if d.direction == "minimize" else -1.0)
    m = math.comb(len(vals), 2)
    out = []
    for a, b in combinations(ordered(vals), 2):
        e = ev.welch_difference(vals[a], vals[b], m)
        g, bound = ev.grade(e, min(len(vals[a]), len(vals[b])), need=2, no_effect_max=ev.NO_EFFECT_MAX if basis.log else None)
        lo, hi = e.corrected
        better, worse = (a, b) if e.estimate < 0 else (b, a)
        mean = "mean of log10" if basis.log else "mean"
        if g == ev.NO_EFFECT:
            text = f"over fresh seeds, {a} and {b}: no difference larger than {ev.factor(bound)} ({a} / {b}: {ratio_text(basis, lo, hi)})"
        elif g in (ev.ESTABLISHED, ev.SUGGESTIVE):
            text = f"over fresh seeds, {better} beats {worse}: {effect_text(basis, -abs(e.estimate))} ({mean}; {ratio_text(basis, lo, hi, e.estimate)})"
        else:
            text = (f"over fresh seeds, {a} vs {b}: {better}'s {effect_text(basis, -abs(e.estimate))} ({mean}; "
                    f"{ratio_text(basis, lo, hi, e.estimate)}): not resolved")
        n = max(len(vals[a]), len(vals[b]))
        settle = "" if g in (ev.ESTABLISHED, ev.NO_EFFECT) else (
            f"more seeds: `optuna delete-study --study-name {d.name}-per-{key}` (with the storage), then "
            f"`dlnn verify {d.name} --per {key} --seeds {2 * n}`")
        out.append(ev.Claim(f"{SEEDS_PREFIX}{key}: {a} vs {b}", key, "comparison", text, g, e.estimate, lo, hi, unit_of(basis),
                            {str(a): len(vals[a]), str(b): len(vals[b])}, settle, source="seeds", bound=bound))
    return out


def with_seeds(d: StudyData, key: str, claims: list[ev.Claim]) -> list[ev.Claim]:
    """Seeded retrains (`dlnn verify --per key`) of each choice's best config: their comparisons, and
    the search's claims they contradict downgraded, since a controlled comparison outranks a search's draws."""
    seeds = seed_claims(d, key)
    if not seeds:
        return claims
    by_id = {c.id.removeprefix(SEEDS_PREFIX): c for c in seeds}
    out = []
    for c in claims:
        s = by_id.get(c.id)
        if s is not None and ev.contradicts(s, c):
            c = ev.with_grade(c, ev.UNDETERMINED, f"(the seeded retrains contradict this: {s.label}; believe the seeds)")
        out.append(c)
    return seeds + out
