"""`dlnn report A --against B`: every claim of two reports side by side, matched by claim id, and
whether they agree. The proof that a study's answers survive a rerun: no claim established in one
may be contradicted in the other (evidence.contradicts)."""

from __future__ import annotations

from dataclasses import dataclass

import dlnn_studies.study.report.evidence as ev

AGREE, CONTRADICTS, DIFFERS, ONLY_A, ONLY_B = "agree", "CONTRADICTS", "grade differs", "only in A", "only in B"


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    rows: tuple[tuple[str, str, str, str, str], ...]  # claim id, question, grade in A, grade in B, verdict
    tallies: tuple[dict[str, int], dict[str, int]]

    @property
    def contradictions(self) -> int:
        return sum(r[4] == CONTRADICTS for r in self.rows)

    @property
    def established_contradicted(self) -> int:
        return sum(r[4] == CONTRADICTS and ev.ESTABLISHED in (r[2], r[3]) for r in self.rows)


def verdict_of(a: ev.Claim | None, b: ev.Claim | None) -> str:
    if a is None:
        return ONLY_B
    if b is None:
        return ONLY_A
    if ev.contradicts(a, b):
        return CONTRADICTS
    same_sign = a.effect is None or b.effect is None or (a.effect > 0) == (b.effect > 0) or a.grade not in (ev.ESTABLISHED, ev.SUGGESTIVE)
    return AGREE if a.grade == b.grade and same_sign else DIFFERS


def compare(a_name: str, a: list[ev.Claim], b_name: str, b: list[ev.Claim]) -> Comparison:
    ia, ib = {c.id: c for c in a}, {c.id: c for c in b}
    ids = list(ia) + [i for i in ib if i not in ia]
    rows = []
    for i in ids:
        ca, cb = ia.get(i), ib.get(i)
        q = (ca or cb).question
        rows.append((i, q, ca.label if ca else "–", cb.label if cb else "–", verdict_of(ca, cb)))

    def tally(cs: list[ev.Claim]) -> dict[str, int]:
        out = {g: 0 for g in ev.GRADES}
        for c in cs:
            out[c.grade] += 1
        return out

    return Comparison(a_name, b_name, tuple(rows), (tally(a), tally(b)))


def to_markdown(c: Comparison) -> str:
    ta, tb = c.tallies
    agree = sum(r[4] == AGREE for r in c.rows)
    lines = [f"# {c.a} against {c.b}: do the answers survive a rerun?", "",
             f"- {c.a}: {sum(ta.values())} claims, {ta[ev.ESTABLISHED]} established, {ta[ev.SUGGESTIVE]} suggestive, "
             f"{ta[ev.NO_EFFECT]} no effect larger than a bound, {ta[ev.UNDETERMINED]} undetermined.",
             f"- {c.b}: {sum(tb.values())} claims, {tb[ev.ESTABLISHED]} established, {tb[ev.SUGGESTIVE]} suggestive, "
             f"{tb[ev.NO_EFFECT]} no effect larger than a bound, {tb[ev.UNDETERMINED]} undetermined.",
             f"- Matched by claim: {agree} agree, {sum(r[4] == DIFFERS for r in c.rows)} differ in grade without contradicting, "
             f"{c.contradictions} contradict ({c.established_contradicted} of them involve an established claim), "
             f"{sum(r[4] in (ONLY_A, ONLY_B) for r in c.rows)} appear in one run only.", "",
             "A contradiction is an established or suggestive effect of the opposite sign, a bound of \"no effect larger than X\" "
             "that an established effect exceeds, or two graded learning-rate bands whose widths cannot both hold. \"Grade differs\" "
             "is one run sure and the other not (an undetermined claim asserts nothing): no contradiction.", "",
             f"| claim | question | {c.a} | {c.b} | verdict |", "|---|---|---|---|---|"]
    for r in c.rows:
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in r) + " |")
    return "\n".join(lines) + "\n"
