"""The learning-rate answers: per optimizer, the band of learning rates within TOLERANCE× of its best
completed trial, what bounds each edge (a trial that left it, or the searched range), and how sure."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

import dlnn_studies.study.report.evidence as ev
from .basis import Answer
from .data import Row, StudyData


TOLERANCE = 10.0  # the learning-rate band: where an optimizer stays within this factor of its own best
SAME_LR = 0.1  # completed trials whose learning rates span less than this many decades give no band


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
    """The best finite value by `direction`, or None."""
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
    """Optimizer -> its judged trials that record a learning rate, by optimizer name."""
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
    """The band of `opt` from its trials `rs`: the lrs within TOLERANCE× of its best, and whether trials bound each edge."""
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
    """The band as a graded claim: its width in decades with a bootstrap interval, its open edges, and what would settle it."""
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
    """Every optimizer's band and its answer (none unless the study drew at least two learning rates)."""
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
