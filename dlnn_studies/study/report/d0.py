"""The d0 answer: where the study draws D-Adaptation's (or Prodigy's) initial distance estimate, does
it matter? A rank correlation of log d0 with the score, graded."""

from __future__ import annotations

import math

import dlnn_studies.study.report.evidence as ev
from .basis import Answer, trials_text
from .data import StudyData


TREND_MAX = 0.3  # "no trend larger than |ρ|" only where the interval bounds the rank correlation within this


def d0_answer(d: StudyData, sc: dict[int, float]) -> Answer | None:
    """The rank correlation of log d0 with the score over the trials of optimizers that read d0 (None where d0 was not drawn)."""
    from dlnn_core.optim import OPTIMIZERS, reads

    rs = [r for r in d.judged if r.flat.get("optimizer.name") in OPTIMIZERS and reads(r.flat["optimizer.name"], "d0")
          and r.number in sc and r.flat.get("optimizer.d0")]
    drawn = any(q.key == "optimizer.d0" and q.kind != "fixed" for q in d.spec.space)
    if not drawn or not rs:
        return None
    names = ", ".join(sorted({r.flat["optimizer.name"] for r in rs}))
    x = [math.log10(r.flat["optimizer.d0"]) for r in rs]
    y = [sc[r.number] for r in rs]
    n = {"trials": len(rs)}
    if len(rs) < ev.MIN_N or len(set(x)) < 2:
        c = ev.Claim("d0", "d0", "trend", f"d0 ({names}): {len(rs)} scored trial(s) drew it: too few to see what it does",
                     ev.UNDETERMINED, n=n, settle=f"at least {ev.MIN_N} scored trials of {names}")
        return Answer("d0", c.statement, (c,))
    e = ev.spearman(x, y, 1)
    g, bound = ev.grade(e, len(rs), no_effect_max=TREND_MAX)
    lo, hi = e.corrected
    span = f"d0 ({names}, {len(rs)} scored trials, d0 {10 ** min(x):.1e}–{10 ** max(x):.1e})"
    rho = f"ρ = {e.estimate:+.2f}, {lo:+.2f} to {hi:+.2f}"
    if g == ev.NO_EFFECT:
        text = f"{span}: no trend larger than |ρ| = {bound:.2f} between log d0 and the score ({rho})"
    elif g in (ev.ESTABLISHED, ev.SUGGESTIVE):
        text = f"{span}: {'larger d0 scores worse' if e.estimate > 0 else 'larger d0 scores better'} (rank correlation {rho})"
    else:
        text = f"{span}: rank correlation of log d0 with the score {rho}: not resolved"
    settle = "" if g in (ev.ESTABLISHED, ev.NO_EFFECT) else f"{trials_text(ev.more_trials(e, len(rs), TREND_MAX))} more trials of {names}"
    c = ev.Claim("d0", "d0", "trend", text, g, e.estimate, lo, hi, "rank correlation", n, settle, bound=bound)
    return Answer("d0", text, (c,))
