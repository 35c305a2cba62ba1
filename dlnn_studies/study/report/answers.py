"""The Answers: one graded statement per question a spec asks, generated from the trials.

Questions: every searched categorical setting (which choice), the learning rate per optimizer (its
band), d0 where drawn, each interaction the spec covers, which settings make trials diverge, and
where the winner is worse than a baseline. Each answer carries its claims (evidence.Claim); seeded
retrains of `dlnn verify --per SETTING` decide where they exist. Each kind of question has its module
(choices, lr_bands, d0, interactions, divergence, regressions; seeds and the shared basis beside them);
this one asks them all in order."""

from __future__ import annotations

import dlnn_studies.study.report.evidence as ev
from .basis import Answer, Basis, basis_of, scores
from .choices import choice_answers
from .d0 import d0_answer
from .data import StudyData
from .divergence import failure_answers
from .interactions import interaction_answers
from .lr_bands import Band, lr_answers
from .regressions import regression_answer


def answers(d: StudyData) -> tuple[Basis, list[Answer], list[Band]]:
    """The basis, every answer in the report's order, and the learning-rate bands (for their section)."""
    basis = basis_of(d)
    sc = scores(d, basis)
    out = choice_answers(d, basis, sc)
    bands, lr = lr_answers(d)
    out += lr
    d0 = d0_answer(d, sc)
    if d0:
        out.append(d0)
    out += interaction_answers(d, basis, sc)
    out += failure_answers(d)
    reg = regression_answer(d)
    if reg:
        out.append(reg)
    return basis, out, bands


def all_claims(answers_: list[Answer]) -> list[ev.Claim]:
    """Every claim of the answers, in order."""
    return [c for a in answers_ for c in a.claims]


def tally(claims: list[ev.Claim]) -> dict[str, int]:
    """Claims per grade (every grade listed)."""
    out = {g: 0 for g in ev.GRADES}
    for c in claims:
        out[c.grade] += 1
    return out
