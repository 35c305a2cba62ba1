"""The Answers: one graded statement per question a spec asks, generated from the trials.

Questions: every searched categorical setting (which choice), the learning rate per optimizer (its
band), d0 where drawn, each interaction the spec covers, which settings make trials diverge, and
where the winner is worse than a baseline. Each answer carries its claims (evidence.Claim); seeded
retrains of `dlnn verify --per SETTING` decide where they exist.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

import dlnn_studies.study.report.evidence as ev
from .data import Row, StudyData
from .. import records

TOLERANCE = 10.0  # the learning-rate band: where an optimizer stays within this factor of its own best
LR_HIGH = 3.0  # "a high learning rate": above this multiple of the optimizer's default
SAME_LR = 0.1  # completed trials whose learning rates span less than this many decades give no band
SEEDS_PREFIX = "seeds: "  # the id of a seeded comparison: the search's claim id behind it
TREND_MAX = 0.3  # "no trend larger than |ρ|" only where the interval bounds the rank correlation within this
INTERACTIONS = (
    ("loss", "batch_size", "loss form × batch size (a summed loss grows with the batch, so its effective step does too)"),
    ("model.hidden", "model.depth", "width × depth"),
    ("scheduler.name", "scheduler.warmup_t", "scheduler × warm-up (epochs)"),
    ("model.activation", "model.form", "activation × form of L"),
)


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


def _unit(basis: Basis) -> str:
    return "log10 ratio" if basis.log else "difference"


def _comparison(basis: Basis, cid: str, question: str, a: Any, b: Any, xa: list[float], xb: list[float], m: int,
                settle: str, what: str = "") -> ev.Claim:
    if min(len(xa), len(xb)) < ev.MIN_STAT:  # a quartile of one or two values is no statistic
        return ev.Claim(cid, question, "comparison", f"{a} vs {b}{what}: too few scored trials to compare ({len(xa)} and {len(xb)})",
                        ev.UNDETERMINED, unit=_unit(basis), n={str(a): len(xa), str(b): len(xb)},
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
    return ev.Claim(cid, question, "comparison", text, g, e.estimate, lo, hi, _unit(basis), {str(a): len(xa), str(b): len(xb)},
                    more, bound=bound)


# ------------------------------------------------------------------------------ categorical


def choice_groups(d: StudyData, key: str, sc: dict[int, float], rows: list[Row] | None = None) -> dict[Any, list[float]]:
    out: dict[Any, list[float]] = defaultdict(list)
    for r in rows if rows is not None else d.judged:
        if key in r.flat and r.number in sc:
            out[r.flat[key]].append(sc[r.number])
    return dict(out)


def ordered(values) -> list:
    return sorted(values, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))


def choice_answers(d: StudyData, basis: Basis, sc: dict[int, float]) -> list[Answer]:
    keys = categorical_keys(d)
    groups = {k: choice_groups(d, k, sc) for k in keys}
    m = sum(math.comb(len(g), 2) for g in groups.values())
    answers = []
    for key in keys:
        g = groups[key]
        settle = (f"{{n}} more trials of each, or a controlled comparison: `dlnn verify {d.name} --per {key} --seeds 5`, "
                  "then `dlnn report`")
        claims = [_comparison(basis, f"{key}: {a} vs {b}", key, a, b, g[a], g[b], m, settle)
                  for a, b in combinations(ordered(g), 2)]
        claims = _with_seeds(d, key, claims)
        missing = [c for c in declared_choices(d, key) if c not in g]
        for c in missing:
            n = sum(1 for r in d.rows if r.flat.get(key) == c)
            claims.append(ev.Claim(f"{key}: {c} tried", key, "coverage",
                                   f"{c}: {'no trial drew it' if n == 0 else f'{n} trial(s), none scored'} in {len(d.rows)} trials: "
                                   "the study says nothing about it", ev.UNDETERMINED, n={str(c): n},
                                   settle=f"enqueue it (a `[[baseline]]` with {key} = {c!r}, or more random start-up trials)"))
        answers.append(Answer(key, _choice_summary(d, basis, key, g, claims, missing), tuple(claims)))
    return answers


def _with_seeds(d: StudyData, key: str, claims: list[ev.Claim]) -> list[ev.Claim]:
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
        out.append(ev.Claim(f"{SEEDS_PREFIX}{key}: {a} vs {b}", key, "comparison", text, g, e.estimate, lo, hi, _unit(basis),
                            {str(a): len(vals[a]), str(b): len(vals[b])}, settle, source="seeds", bound=bound))
    return out


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
    first = c.id.split(": ", 1)[1].split(" vs ")[0]
    return (c.effect or 0) < 0 if first == str(lead) else (c.effect or 0) > 0


# -------------------------------------------------------------------------- learning rate


def tolerance_band(points: list[tuple[float, float]], best: float | None, direction: str) -> tuple[float, float] | None:
    """(lowest lr, highest lr) of the points within TOLERANCE× of `best`; None without points."""
    if best is None:
        return None
    if direction == "minimize":
        ok = [lr for lr, v in points if v is not None and v <= TOLERANCE * best]
    else:
        ok = [lr for lr, v in points if v is not None and v >= best / TOLERANCE]
    return (min(ok), max(ok)) if ok else None


def best_value(values: list[float], direction: str) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return min(values) if direction == "minimize" else max(values)


def learned(d: StudyData, best: float | None) -> bool:
    """Whether a best value is better than a model that learned nothing (half the metric's no-skill value)."""
    from dlnn_core.metrics import METRICS

    info = METRICS.get(d.metric)
    if best is None:
        return False
    if info is None or info.no_skill is None:
        return True
    return best <= 0.5 * info.no_skill if d.direction == "minimize" else best >= 2 * info.no_skill


@dataclass(frozen=True)
class Band:
    """One optimizer's learning-rate band, with what bounds it."""

    optimizer: str
    trials: int
    complete: int
    diverged: int
    best: float | None
    learned: bool
    low: float | None
    high: float | None
    low_open: bool  # no trial below the band left it: the true band may reach further
    high_open: bool
    default: float | None
    lr_range: tuple[float, float] | None
    diverged_inside: tuple[float, ...]  # learning rates of diverged trials inside the band
    tried: tuple[float, float] | None

    @property
    def decades(self) -> float | None:
        return math.log10(self.high / self.low) if self.low and self.high else None


def lr_rows(d: StudyData) -> dict[str, list[Row]]:
    by: dict[str, list[Row]] = defaultdict(list)
    for r in d.judged:
        if "optimizer.lr" in r.flat:
            by[r.flat["optimizer.name"]].append(r)
    return dict(sorted(by.items()))


def searched_lr_range(d: StudyData, opt: str) -> tuple[float, float] | None:
    """The lr range the study searched for `opt`, as launched (its definition), or None when lr was not searched."""
    q = next((q for q in d.spec.space if q.key == "optimizer.lr" and q.kind != "fixed"), None)
    if q is None:
        return None
    if q.per_optimizer:
        r = q.per_choice.get(opt)
        return (float(r[0]), float(r[1])) if r else None
    return (float(q.low), float(q.high)) if q.low is not None and q.high is not None else None


def band_of(d: StudyData, opt: str, rs: list[Row]) -> Band:
    from dlnn_core.optim import OPTIMIZERS

    done = [r for r in rs if r.outcome == "complete" and r.value is not None]
    bad = [r for r in rs if r.outcome == "diverged"]
    best = best_value([r.value for r in done], d.direction)
    ok = learned(d, best)
    band = tolerance_band([(r.flat["optimizer.lr"], r.value) for r in done], best, d.direction) if ok and len(done) >= ev.MIN_STAT else None
    lo, hi = band if band else (None, None)

    def outside(r: Row) -> bool:
        """Whether a trial shows the optimizer out of its band at that lr: diverged, completed outside it, or
        pruned while even its best value before the cut was outside it."""
        if r.outcome == "diverged":
            return True
        v = r.value if r.outcome == "complete" else (min(r.curve.values()) if r.outcome == "pruned" and r.curve else None)
        return v is not None and tolerance_band([(1.0, v)], best, d.direction) is None

    lrs = [r.flat["optimizer.lr"] for r in rs]
    info = OPTIMIZERS.get(opt)
    return Band(opt, len(rs), len(done), len(bad), best, ok, lo, hi,
                lo is not None and not any(outside(r) and r.flat["optimizer.lr"] < lo for r in rs),
                hi is not None and not any(outside(r) and r.flat["optimizer.lr"] > hi for r in rs),
                info.default_lr if info else None, searched_lr_range(d, opt),
                tuple(sorted(r.flat["optimizer.lr"] for r in bad if lo is not None and lo <= r.flat["optimizer.lr"] <= hi)),
                (min(lrs), max(lrs)) if lrs else None)


def band_claim(d: StudyData, b: Band, rs: list[Row], m: int) -> ev.Claim:
    cid, q = f"lr band: {b.optimizer}", f"learning rate: {b.optimizer}"
    n = {"complete": b.complete, "trials": b.trials}
    tried = f"lr {b.tried[0]:.2g}–{b.tried[1]:.2g}" if b.tried else "no lr"
    if b.complete == 0:
        return ev.Claim(cid, q, "band", f"{b.optimizer}: no completed trial ({b.trials} judged, {tried}): no band",
                        ev.UNDETERMINED, n=n, settle=f"completed trials of {b.optimizer}: `dlnn refine {d.name}` or more trials")
    if not b.learned:
        g = ev.ESTABLISHED if b.trials >= ev.MIN_N else ev.UNDETERMINED
        default = f" (its registry default {b.default:.2g})" if b.default else ""
        return ev.Claim(cid, q, "learned", f"{b.optimizer} never learned: its best {d.metric} is {b.best:.3g}, no better than "
                        f"predicting zero; it has no band. It tried {tried}{default}", g, n=n,
                        settle="" if g == ev.ESTABLISHED else f"at least {ev.MIN_N} trials of {b.optimizer}")
    if b.low is None:
        return ev.Claim(cid, q, "band", f"{b.optimizer}: {b.complete} completed trial(s): too few for a band (fewer than {ev.MIN_STAT})",
                        ev.UNDETERMINED, n=n, settle=f"at least {ev.MIN_STAT} completed trials of {b.optimizer}")
    done = [(r.flat["optimizer.lr"], r.value) for r in rs if r.outcome == "complete" and r.value is not None]
    lrs = [lr for lr, _ in done]
    if math.log10(max(lrs) / min(lrs)) < SAME_LR:
        return ev.Claim(cid, q, "band", f"{b.optimizer}: its {b.complete} completed trials share one learning rate (about {lrs[0]:.2g}): "
                        "no band", ev.UNDETERMINED, n=n, settle=f"completed trials of {b.optimizer} at other learning rates")
    rng = np.random.default_rng(ev.SEED)
    widths = []
    for idx in rng.integers(0, len(done), size=(500, len(done))):
        pts = [done[i] for i in idx]
        band = tolerance_band(pts, best_value([v for _, v in pts], d.direction), d.direction)
        widths.append(math.log10(band[1] / band[0]) if band else 0.0)
    corrected, _ = ev.levels(m)
    lo_w, hi_w = ev.interval(np.asarray(widths), corrected)
    opened = [side for side, is_open in (("low", b.low_open), ("high", b.high_open)) if is_open]
    edge = ""
    if opened:
        cut = []
        for side in opened:
            limit = b.lr_range[0 if side == "low" else 1] if b.lr_range else None
            at = b.low if side == "low" else b.high
            near = limit is not None and abs(math.log10(at / limit)) < 0.25
            cut.append(f"{'below' if side == 'low' else 'above'} {at:.2g} no trial left it"
                       + (f" (the searched range {'starts' if side == 'low' else 'ends'} at {limit:.2g})" if near else ""))
        edge = f"; a lower bound: {' and '.join(cut)}"
    inside = (f"; {len(b.diverged_inside)} trial(s) inside the band diverged (lr {', '.join(f'{x:.2g}' for x in b.diverged_inside)}): "
              "the band is where good results were seen, not where the optimizer is safe") if b.diverged_inside else ""
    text = (f"{b.optimizer} stays within {TOLERANCE:g}× of its best from lr {b.low:.2g} to {b.high:.2g}: "
            f"{'≥ ' if opened else ''}{b.decades:.2f} decades (bootstrap {lo_w:.2f}–{hi_w:.2f}; {b.complete} completed){edge}{inside}")
    if not opened and b.complete >= 2 * ev.MIN_N:
        g = ev.ESTABLISHED
    elif b.complete >= ev.MIN_N and len(opened) < 2:
        g = ev.SUGGESTIVE
    else:
        g = ev.UNDETERMINED
    settle = "" if g == ev.ESTABLISHED else (f"trials of {b.optimizer} beyond the open edge(s): widen its lr range in the spec"
                                              if opened else f"about {2 * ev.MIN_N - b.complete} more completed trials of {b.optimizer}")
    return ev.Claim(cid, q, "band", text, g, b.decades, lo_w, None if opened else hi_w, "decades", n, settle)


def lr_answers(d: StudyData) -> tuple[list[Band], list[Answer]]:
    by = lr_rows(d)
    if len({r.flat["optimizer.lr"] for rs in by.values() for r in rs}) < 2:
        return [], []
    bands = [band_of(d, opt, rs) for opt, rs in by.items()]
    m = sum(1 for b in bands if b.low is not None)
    answers = []
    for b in bands:
        c = band_claim(d, b, by[b.optimizer], max(1, m))
        answers.append(Answer(c.question, c.statement, (c,)))
    return bands, answers


# -------------------------------------------------------------------------------------- d0


def d0_answer(d: StudyData, sc: dict[int, float]) -> Answer | None:
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


# ----------------------------------------------------------------------------- interactions


def interaction_answers(d: StudyData, basis: Basis, sc: dict[int, float]) -> list[Answer]:
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
                    claims.append(_comparison(basis, f"{a} at {b} = {y}: {a1} vs {a2}", title, a1, a2, cells[(a1, y)],
                                              cells[(a2, y)], m, settle, what=f" at {b} = {y}"))
            for y1, y2 in combinations(vb, 2):
                four = [cells.get(k, []) for k in ((a1, y1), (a2, y1), (a1, y2), (a2, y2))]
                if all(four):
                    claims.append(_interaction(basis, a, b, a1, a2, y1, y2, four, m, settle))
        answers.append(Answer(title, _interaction_summary(a, b, claims), tuple(claims)))
    return answers


def _interaction(basis: Basis, a: str, b: str, a1, a2, y1, y2, four, m: int, settle: str) -> ev.Claim:
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
                    _unit(basis), {f"{x}, {y}": len(c) for (x, y), c in zip(((a1, y1), (a2, y1), (a1, y2), (a2, y2)), four)},
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


# --------------------------------------------------------------------------------- failures


def lr_rel(flat: dict[str, Any]) -> float | None:
    """The trial's lr over its optimizer's default (dlnn_core.optim.relative_lr); None without an optimizer the registry knows."""
    from dlnn_core.optim import OPTIMIZERS, relative_lr

    name = flat.get("optimizer.name")
    return relative_lr(name, flat.get("optimizer.lr")) if name in OPTIMIZERS else None


def failure_answers(d: StudyData) -> list[Answer]:
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
    by_question: dict[str, list[ev.Claim]] = defaultdict(list)
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
        by_question[key].append(ev.Claim(f"diverges: {label}", f"divergence: {key}", "rate", text, g, e.estimate, lo, hi,
                                         "rate difference", {"inside": n1, "rest": n2}, settle, bound=bound))
    out = []
    for key, claims in by_question.items():
        worse = [c.statement.split(":")[0] for c in claims if c.grade == ev.ESTABLISHED and (c.effect or 0) > 0]
        summary = (f"{', '.join(worse)} {'diverges' if len(worse) == 1 else 'diverge'} more often than the rest (established)." if worse
                   else "no choice is established to diverge more often than the rest.")
        out.append(Answer(f"divergence: {key}", summary, tuple(claims)))
    return out


# ------------------------------------------------------------------------------ regressions


def regression_answer(d: StudyData) -> Answer | None:
    """Every stored metric on which the winner is worse than a completed baseline, in words."""
    from dlnn_core.metrics import METRICS

    if not d.best:
        return None
    best = d.row(d.best[0])
    baselines = [r for r in d.rows if r.baseline and r.number != best.number and r.outcome == "complete"]
    claims = []
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
    names = ", ".join(sorted({c.id.split(": ", 1)[1].split(" vs ")[0] for c in claims}))
    return Answer("winner vs baselines", f"the winner (trial {best.number}) is worse than a baseline on: {names}.", tuple(claims))


def _seeded(d: StudyData, winner: int, baseline: int, metric: str) -> tuple[list[float], list[float]] | None:
    def values(trial: int) -> list[float]:
        return [math.log10(r.metrics[metric]) for r in d.verify if r.verify_of == trial and r.outcome == "complete"
                and isinstance(r.metrics.get(metric), (int, float)) and r.metrics[metric] > 0]

    w, b = values(winner), values(baseline)
    return (w, b) if len(w) >= 2 and len(b) >= 2 else None


# ------------------------------------------------------------------------------------- all


def answers(d: StudyData) -> tuple[Basis, list[Answer], list[Band]]:
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
    return [c for a in answers_ for c in a.claims]


def tally(claims: list[ev.Claim]) -> dict[str, int]:
    out = {g: 0 for g in ev.GRADES}
    for c in claims:
        out[c.grade] += 1
    return out

