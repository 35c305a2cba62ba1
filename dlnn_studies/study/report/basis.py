"""What the report's comparisons compare (`Basis`: one epoch of the validation curve, or the final
objective), each trial's score on it, the `Answer` record, and the claim of one pairwise comparison
that the choice and interaction answers share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dlnn_studies.study.report.evidence as ev
from .data import StudyData
from .. import records


@dataclass(frozen=True)
class Basis:
    """What the comparisons compare: the validation curve at one epoch that most trials reached
    (pruned ones included, so a choice whose trials were cut is not judged on its survivors), or
    the final objective of completed trials where the study has no such curve."""

    metric: str
    epoch: int | None
    log: bool
    sign: float  # 1: lower is better; -1: higher is better (scores are negated)

    @property
    def text(self) -> str:
        unit = f"log10 {self.metric}" if self.log else self.metric
        if self.epoch is not None:
            return f"{unit} at epoch {self.epoch} (the latest epoch most trials reached; pruned trials included, diverged ones count as worst)"
        return f"final {unit} (completed trials; diverged ones count as worst)"


@dataclass(frozen=True)
class Answer:
    question: str
    summary: str
    claims: tuple[ev.Claim, ...]


def equal_fidelity_epoch(d: StudyData, share: float = 0.6) -> int | None:
    """The latest epoch that at least `share` of the judged trials reported a value for."""
    from collections import Counter

    curves = [r.curve for r in d.judged if r.curve]
    if not curves:
        return None
    reached = Counter(e for c in curves for e in c)
    good = [e for e, n in reached.items() if n >= share * len(curves)]
    return max(good) if good else min(reached)


def basis_of(d: StudyData) -> Basis:
    log = records.is_log_scaled(d.metric)
    sign = 1.0 if d.direction == "minimize" else -1.0
    epoch = equal_fidelity_epoch(d) if d.metric == d.curve_metric else None
    return Basis(d.metric, epoch, log, sign)


def scores(d: StudyData, basis: Basis) -> dict[int, float]:
    """Trial number -> score (lower is better) for every judged trial the basis can score; diverged
    trials get a score worse than any other (one decade, or one unit, past the worst)."""
    out: dict[int, float] = {}
    bad = []
    for r in d.judged:
        if r.outcome == "diverged":
            bad.append(r.number)
            continue
        v = r.curve.get(basis.epoch) if basis.epoch is not None else (r.value if r.outcome == "complete" else None)
        if v is None or not math.isfinite(v) or (basis.log and v <= 0):
            continue
        out[r.number] = basis.sign * (math.log10(v) if basis.log else v)
    worst = max(out.values(), default=0.0) + 1.0
    out.update({n: worst for n in bad})
    return out


def categorical_keys(d: StudyData) -> list[str]:
    return [q.key for q in d.spec.space if q.kind == "categorical"]


def declared_choices(d: StudyData, key: str) -> list[Any]:
    q = next(q for q in d.spec.space if q.key == key)
    return list(getattr(q, "choices", None) or [])


def ratio_text(basis: Basis, lo: float, hi: float, estimate: float | None = None) -> str:
    """An effect's interval as text. With `estimate`, oriented like the stated factor (the better side's
    "X× lower" for a negative estimate reads 10^-hi..10^-lo); without, as the first over the second."""
    if estimate is not None and estimate < 0:
        lo, hi = -hi, -lo
    if basis.log:
        return f"{10 ** lo:.2g}–{10 ** hi:.2g}×"
    return f"{lo:+.3g} to {hi:+.3g}"


def effect_text(basis: Basis, e: float) -> str:
    if basis.log:
        return f"{ev.factor(e)} {'lower' if (e < 0) == (basis.sign > 0) else 'higher'}"
    return f"{abs(e):.3g} {'lower' if (e < 0) == (basis.sign > 0) else 'higher'}"


def trials_text(n: int) -> str:
    """"about N more trials" for a settle hint; past a thousand, say that the search is the wrong tool."""
    return f"about {n}" if n <= 1000 else "over 1,000 (a controlled comparison is cheaper)"


def unit_of(basis: Basis) -> str:
    return "log10 ratio" if basis.log else "difference"


def comparison(basis: Basis, cid: str, question: str, a: Any, b: Any, xa: list[float], xb: list[float], m: int,
               settle: str, what: str = "") -> ev.Claim:
    """The claim that `a`'s good trials (scores `xa`) beat `b`'s (`xb`), or do not, graded over `m`
    comparisons; `settle` says what would decide it (with {n}, the trials needed). The claim's `n`
    lists a's count first, then b's: the order the summaries read."""
    if min(len(xa), len(xb)) < ev.MIN_STAT:  # a quartile of one or two values is no statistic
        return ev.Claim(cid, question, "comparison", f"{a} vs {b}{what}: too few scored trials to compare ({len(xa)} and {len(xb)})",
                        ev.UNDETERMINED, unit=unit_of(basis), n={str(a): len(xa), str(b): len(xb)},
                        settle=f"at least {ev.MIN_N} scored trials of each")
    e = ev.quartile_difference(xa, xb, m)
    g, bound = ev.grade(e, min(len(xa), len(xb)), no_effect_max=ev.NO_EFFECT_MAX if basis.log else None)
    better, worse = (a, b) if e.estimate < 0 else (b, a)
    lo, hi = e.corrected
    if g == ev.NO_EFFECT:
        text = f"{a} and {b}{what}: no difference larger than {ev.factor(bound)} ({a} / {b}: {ratio_text(basis, lo, hi)})"
    elif e.estimate == 0:
        text = f"{a} and {b}{what}: the same score ({a} / {b}: {ratio_text(basis, lo, hi)})"
    elif g in (ev.ESTABLISHED, ev.SUGGESTIVE):
        text = f"{better} beats {worse}{what}: good trials {effect_text(basis, -abs(e.estimate))} ({ratio_text(basis, lo, hi, e.estimate)})"
    else:
        text = (f"{a} vs {b}{what}: {better}'s good trials {effect_text(basis, -abs(e.estimate))} "
                f"({ratio_text(basis, lo, hi, e.estimate)}): not resolved")
    more = "" if g in (ev.ESTABLISHED, ev.NO_EFFECT) else settle.format(n=trials_text(ev.more_trials(e, min(len(xa), len(xb)))))
    return ev.Claim(cid, question, "comparison", text, g, e.estimate, lo, hi, unit_of(basis), {str(a): len(xa), str(b): len(xb)},
                    more, bound=bound)


def ordered(values) -> list:
    """Choices in a stable order: numbers by value, then strings by name."""
    return sorted(values, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))
