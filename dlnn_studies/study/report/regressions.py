"""The winner-vs-baselines answer: every stored metric on which the study's winner is worse than a
completed baseline, decided by seeded retrains of both where they exist."""

from __future__ import annotations

import math

import dlnn_studies.study.report.evidence as ev
from .basis import Answer
from .data import StudyData


def regression_answer(d: StudyData) -> Answer | None:
    """Every stored metric on which the winner is worse than a completed baseline, in words."""
    from dlnn_core.metrics import METRICS

    if not d.best:
        return None
    best = d.row(d.best[0])
    baselines = [r for r in d.rows if r.baseline and r.number != best.number and r.outcome == "complete"]
    claims, worse_on = [], set()
    for base in baselines:
        for name, info in METRICS.items():
            if info.source == "run" or name not in best.metrics or name not in base.metrics:
                continue
            w, b = best.metrics[name], base.metrics[name]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (w, b)):
                continue
            worse = (w > b) if info.direction == "minimize" else (w < b)
            if not worse:
                continue
            worse_on.add(name)
            seeds = _seeded(d, best.number, base.number, name)
            ratio = w / b if b else math.inf
            if seeds is not None:
                e = ev.welch_difference(*seeds, 1)
                g, bound = ev.grade(e, min(len(s) for s in seeds), need=2, no_effect_max=ev.NO_EFFECT_MAX)
                lo, hi = e.corrected
                how = f"over fresh seeds {10 ** e.estimate:.2g}× ({10 ** lo:.2g}–{10 ** hi:.2g}×)"
            else:
                g, bound, lo, hi = ev.UNDETERMINED, None, None, None
                how = "one draw each"
            claims.append(ev.Claim(f"winner worse: {name} vs {base.baseline}", "winner vs baselines", "regression",
                                   f"the winner (trial {best.number}) is worse than {base.baseline} (trial {base.number}) on {name}: "
                                   f"{w:.3g} against {b:.3g} ({ratio:.3g}×; {how})", g,
                                   math.log10(ratio) if ratio > 0 and math.isfinite(ratio) and info.log_scale else None, lo, hi,
                                   "log10 ratio", {"winner": 1, base.baseline: 1}, "" if seeds else
                                   f"retrain both with fresh seeds (`dlnn verify {d.name} --top 3 --seeds 3` covers the winner)",
                                   source="seeds" if seeds else "search", bound=bound))
    if not baselines:
        return None
    if not claims:
        return Answer("winner vs baselines", f"the winner (trial {best.number}) is no worse than "
                      f"{', '.join(b.baseline for b in baselines)} on any stored metric (one draw each).", ())
    names = ", ".join(sorted(worse_on))
    return Answer("winner vs baselines", f"the winner (trial {best.number}) is worse than a baseline on: {names}.", tuple(claims))


def _seeded(d: StudyData, winner: int, baseline: int, metric: str) -> tuple[list[float], list[float]] | None:
    """log10 `metric` of the seeded retrains of the winner and of the baseline, where both have two or more."""
    def values(trial: int) -> list[float]:
        return [math.log10(r.metrics[metric]) for r in d.verify if r.verify_of == trial and r.outcome == "complete"
                and isinstance(r.metrics.get(metric), (int, float)) and r.metrics[metric] > 0]

    w, b = values(winner), values(baseline)
    return (w, b) if len(w) >= 2 and len(b) >= 2 else None
