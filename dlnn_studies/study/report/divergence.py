"""The divergence answers: which choices (and whether a learning rate far above the optimizer's
default) make trials diverge more often than the rest, as graded rate differences."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import dlnn_studies.study.report.evidence as ev
from .basis import Answer, categorical_keys, ordered
from .data import StudyData


LR_HIGH = 3.0  # "a high learning rate": above this multiple of the optimizer's default


def lr_rel(flat: dict[str, Any]) -> float | None:
    """The trial's lr over its optimizer's default (dlnn_core.optim.relative_lr); None without an optimizer the registry knows."""
    from dlnn_core.optim import OPTIMIZERS, relative_lr

    name = flat.get("optimizer.name")
    return relative_lr(name, flat.get("optimizer.lr")) if name in OPTIMIZERS else None


def failure_answers(d: StudyData) -> list[Answer]:
    """Per categorical setting (and for a high learning rate): do trials diverge more often with it than without?"""
    judged = d.judged
    if not judged:
        return []
    tests = []
    for key in categorical_keys(d):
        rows = [r for r in judged if key in r.flat]
        if not any(r.outcome == "diverged" for r in rows):
            continue
        choices = ordered({r.flat[key] for r in rows})
        rate = lambda c: sum(r.outcome == "diverged" for r in rows if r.flat[key] == c) / max(1, sum(r.flat[key] == c for r in rows))  # noqa: E731
        if len(choices) == 2:  # "a vs the rest" and "b vs the rest" are one test: keep the more divergent side
            choices = [max(choices, key=rate)]
        for c in choices:
            if len(choices) > 2 and rate(c) == 0:
                continue
            inside = [r for r in rows if r.flat[key] == c]
            rest = [r for r in rows if r.flat[key] != c]
            if inside and rest:
                tests.append((key, f"{key} = {c}", inside, rest, "the other choices"))
    rel = [(r, lr_rel(r.flat)) for r in judged]
    high = [r for r, x in rel if x is not None and x > LR_HIGH]
    low = [r for r, x in rel if x is not None and x <= LR_HIGH]
    if high and low and any(r.outcome == "diverged" for r in judged):
        tests.append(("learning rate", f"lr > {LR_HIGH:g}× the optimizer's default", high, low, f"lr ≤ {LR_HIGH:g}×"))
    m = len(tests)
    by_question: dict[str, list[tuple[str, ev.Claim]]] = defaultdict(list)  # (label, claim)
    for key, label, inside, rest, other in tests:
        k1, n1 = sum(r.outcome == "diverged" for r in inside), len(inside)
        k2, n2 = sum(r.outcome == "diverged" for r in rest), len(rest)
        e = ev.rate_difference(k1, n1, k2, n2, m)
        g, bound = ev.grade(e, min(n1, n2), no_effect_max=0.10)
        lo, hi = e.corrected
        if g == ev.NO_EFFECT:
            text = f"{label}: diverges no more than {100 * bound:.0f} points more or less often than {other} ({k1}/{n1} vs {k2}/{n2})"
        else:
            text = (f"{label}: {k1}/{n1} diverged ({100 * k1 / n1:.0f} %) against {k2}/{n2} ({100 * k2 / n2:.0f} %) for {other} "
                    f"(difference {100 * lo:+.0f} to {100 * hi:+.0f} points)")
        settle = "" if g in (ev.ESTABLISHED, ev.NO_EFFECT) else f"more trials with {label}"
        by_question[key].append((label, ev.Claim(f"diverges: {label}", f"divergence: {key}", "rate", text, g, e.estimate, lo, hi,
                                                 "rate difference", {"inside": n1, "rest": n2}, settle, bound=bound)))
    out = []
    for key, labelled in by_question.items():
        claims = [c for _, c in labelled]
        worse = [label for label, c in labelled if c.grade == ev.ESTABLISHED and (c.effect or 0) > 0]
        summary = (f"{', '.join(worse)} {'diverges' if len(worse) == 1 else 'diverge'} more often than the rest (established)." if worse
                   else "no choice is established to diverge more often than the rest.")
        out.append(Answer(f"divergence: {key}", summary, tuple(claims)))
    return out
