"""The answer for each searched categorical setting: which choice, compared pairwise on the basis
(corrected for every comparison of the study), with seeded retrains deciding where they exist."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import combinations
from typing import Any

import numpy as np

import dlnn_studies.study.report.evidence as ev
from .basis import Answer, Basis, categorical_keys, comparison, declared_choices, ordered
from .data import Row, StudyData
from .seeds import seed_values, with_seeds


def choice_groups(d: StudyData, key: str, sc: dict[int, float], rows: list[Row] | None = None) -> dict[Any, list[float]]:
    """Choice of `key` -> the scores of the trials (judged ones, or `rows`) that drew it."""
    out: dict[Any, list[float]] = defaultdict(list)
    for r in rows if rows is not None else d.judged:
        if key in r.flat and r.number in sc:
            out[r.flat[key]].append(sc[r.number])
    return dict(out)


def choice_answers(d: StudyData, basis: Basis, sc: dict[int, float]) -> list[Answer]:
    """One answer per searched categorical setting: its choices compared pairwise, seeds first, and the ones never scored."""
    keys = categorical_keys(d)
    groups = {k: choice_groups(d, k, sc) for k in keys}
    m = sum(math.comb(len(g), 2) for g in groups.values())
    answers = []
    for key in keys:
        g = groups[key]
        settle = (f"{{n}} more trials of each, or a controlled comparison: `dlnn verify {d.name} --per {key} --seeds 5`, "
                  "then `dlnn report`")
        claims = [comparison(basis, f"{key}: {a} vs {b}", key, a, b, g[a], g[b], m, settle)
                  for a, b in combinations(ordered(g), 2)]
        claims = with_seeds(d, key, claims)
        missing = [c for c in declared_choices(d, key) if c not in g]
        for c in missing:
            n = sum(1 for r in d.rows if r.flat.get(key) == c)
            claims.append(ev.Claim(f"{key}: {c} tried", key, "coverage",
                                   f"{c}: {'no trial drew it' if n == 0 else f'{n} trial(s), none scored'} in {len(d.rows)} trials: "
                                   "the study says nothing about it", ev.UNDETERMINED, n={str(c): n},
                                   settle=f"enqueue it (a `[[baseline]]` with {key} = {c!r}, or more random start-up trials)"))
        answers.append(Answer(key, _choice_summary(d, basis, key, g, claims, missing), tuple(claims)))
    return answers


def _choice_summary(d: StudyData, basis: Basis, key: str, g: dict[Any, list[float]], claims: list[ev.Claim], missing: list) -> str:
    ranked = sorted((c for c in g if len(g[c]) >= ev.MIN_STAT), key=lambda c: float(ev.quartile(np.asarray(g[c]))))
    parts = []
    seeds = seed_values(d, key)
    if len(seeds) >= 2:
        seed_rank = sorted(seeds, key=lambda c: float(np.mean(seeds[c])))
        lo, hi = min(len(v) for v in seeds.values()), max(len(v) for v in seeds.values())
        parts.append(f"over {lo if lo == hi else f'{lo}–{hi}'} fresh seeds of each "
                     f"choice's best config, {seed_rank[0]} ranks first ({', '.join(map(str, seed_rank))})")
        resolved = [c for c in claims if c.source == "seeds" and c.grade in (ev.ESTABLISHED, ev.SUGGESTIVE) and lead_in(c, seed_rank[0])]
        if ranked and ranked[0] != seed_rank[0]:
            parts.append(f"the search ranked {ranked[0]} first; " + (
                "believe the seeds (a controlled comparison)" if any(c.grade == ev.ESTABLISHED for c in resolved) else
                "neither ranking is settled: no seeded difference from the first is established (more seeds would tell)"))
    if ranked:
        lead = ranked[0]
        parts.append(f"in the search, {lead} has the best good trials ({len(g[lead])} scored)")
        for label, grades in (("established", (ev.ESTABLISHED,)), ("suggestive", (ev.SUGGESTIVE,))):
            beaten = [_other(c, lead) for c in claims if c.kind == "comparison" and c.source == "search" and lead_in(c, lead)
                      and c.grade in grades and _better(c, lead)]
            if beaten:
                parts.append(f"{label}: {lead} beats {', '.join(map(str, beaten))}")
        same = [_other(c, lead) for c in claims if c.kind == "comparison" and c.source == "search" and lead_in(c, lead)
                and c.grade in (ev.NO_EFFECT, ev.UNDETERMINED)]
        if same:
            parts.append(f"not separated from {', '.join(map(str, same))}")
    else:
        parts.append(f"no choice has {ev.MIN_STAT} scored trials")
    if missing:
        parts.append(f"never scored: {', '.join(map(str, missing))}")
    return "; ".join(parts) + "."


def lead_in(c: ev.Claim, lead: Any) -> bool:
    return str(lead) in c.n


def _other(c: ev.Claim, lead: Any) -> str:
    return next(k for k in c.n if k != str(lead))


def _better(c: ev.Claim, lead: Any) -> bool:
    """Whether `lead` is the better side of comparison `c`: its effect is the first choice's (the
    first of `c.n`, as basis.comparison lists them) over the second's."""
    first = next(iter(c.n))
    return (c.effect or 0) < 0 if first == str(lead) else (c.effect or 0) > 0
