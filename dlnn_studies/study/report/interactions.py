"""The interaction answers: for each pair of settings in INTERACTIONS the study searched, does one's
effect depend on the other? Simple effects per cell and interaction contrasts, graded."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations

import dlnn_studies.study.report.evidence as ev
from .basis import Answer, Basis, comparison, ordered, ratio_text, trials_text, unit_of
from .data import StudyData


INTERACTIONS = (
    ("loss", "batch_size", "loss form × batch size (a summed loss grows with the batch, so its effective step does too)"),
    ("model.hidden", "model.depth", "width × depth"),
    ("scheduler.name", "scheduler.warmup_t", "scheduler × warm-up (epochs)"),
    ("model.activation", "model.form", "activation × form of L"),
)



def interaction_answers(d: StudyData, basis: Basis, sc: dict[int, float]) -> list[Answer]:
    """One answer per pair of INTERACTIONS the study searched with two or more values each: simple effects and interaction contrasts."""
    plans = []
    for a, b, title in INTERACTIONS:
        cells: dict[tuple, list[float]] = defaultdict(list)
        for r in d.judged:
            if a in r.flat and b in r.flat and r.number in sc:
                cells[(r.flat[a], r.flat[b])].append(sc[r.number])
        va, vb = ordered({k[0] for k in cells}), ordered({k[1] for k in cells})
        if len(va) >= 2 and len(vb) >= 2:
            plans.append((a, b, title, cells, va, vb))
    m = sum(math.comb(len(va), 2) * (len(vb) + math.comb(len(vb), 2)) for *_, va, vb in plans)
    answers = []
    for a, b, title, cells, va, vb in plans:
        claims = []
        settle = f"{{n}} more trials per cell of {a} × {b}"
        for a1, a2 in combinations(va, 2):
            for y in vb:
                if cells.get((a1, y)) and cells.get((a2, y)):
                    claims.append(comparison(basis, f"{a} at {b} = {y}: {a1} vs {a2}", title, a1, a2, cells[(a1, y)],
                                             cells[(a2, y)], m, settle, what=f" at {b} = {y}"))
            for y1, y2 in combinations(vb, 2):
                four = [cells.get(k, []) for k in ((a1, y1), (a2, y1), (a1, y2), (a2, y2))]
                if all(four):
                    claims.append(_interaction(basis, a, b, a1, a2, y1, y2, four, m, settle))
        answers.append(Answer(title, _interaction_summary(a, b, claims), tuple(claims)))
    return answers


def _interaction(basis: Basis, a: str, b: str, a1, a2, y1, y2, four, m: int, settle: str) -> ev.Claim:
    """Whether a1 vs a2 changes between b = y1 and y2 (`four`: the scores of the four cells)."""
    e = ev.interaction_difference(tuple(four), m)
    g, bound = ev.grade(e, min(len(c) for c in four), no_effect_max=ev.NO_EFFECT_MAX if basis.log else None)
    lo, hi = e.corrected
    if g == ev.NO_EFFECT:
        text = f"{a1} vs {a2} changes by no more than {ev.factor(bound)} between {b} = {y1} and {y2}"
    else:
        text = (f"{a1} vs {a2} depends on {b}: the ratio changes by {10 ** abs(e.estimate):.2g}× between {b} = {y1} and {y2} "
                f"({ratio_text(basis, lo, hi, e.estimate)})")
    more = "" if g in (ev.ESTABLISHED, ev.NO_EFFECT) else settle.format(n=trials_text(ev.more_trials(e, min(len(c) for c in four))))
    return ev.Claim(f"{a} × {b}: {a1} vs {a2}, {y1} vs {y2}", f"{a} × {b}", "interaction", text, g, e.estimate, lo, hi,
                    unit_of(basis), {f"{x}, {y}": len(c) for (x, y), c in zip(((a1, y1), (a2, y1), (a1, y2), (a2, y2)), four)},
                    more, bound=bound)


def _interaction_summary(a: str, b: str, claims: list[ev.Claim]) -> str:
    inter = [c for c in claims if c.kind == "interaction"]
    strong = [c for c in inter if c.grade == ev.ESTABLISHED]
    if strong:
        return f"an interaction: {'; '.join(c.statement for c in strong)}."
    weak = [c for c in inter if c.grade == ev.SUGGESTIVE]
    if weak:
        return f"a suggested interaction: {'; '.join(c.statement for c in weak)}."
    if inter and all(c.grade == ev.NO_EFFECT for c in inter):
        return f"no interaction larger than {ev.factor(max(c.bound or 0 for c in inter))} between {a} and {b}."
    return f"undetermined: too few trials per cell of {a} × {b} to tell."
