"""How sure a claim is: the statistics behind every graded statement of a report.

Every comparison is of scores where lower is better (log10 of an error metric, or its negation
for a metric to maximize). A choice's score is the lower quartile of its trials' scores (its good
trials, robust to a few lucky or failed ones); an effect is the difference of two such quartiles
(log10 of a ratio), with a bootstrap interval over trials. Intervals for "established" are
Bonferroni-corrected over every claim of its kind in the report, so that a rerun of the same spec
should not contradict one; "suggestive" uses the uncorrected 90 % interval. GRADE_RULES says this in
words for the report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

ESTABLISHED, SUGGESTIVE, UNDETERMINED, NO_EFFECT = "established", "suggestive", "undetermined", "no effect larger than"
GRADES = (ESTABLISHED, SUGGESTIVE, NO_EFFECT, UNDETERMINED)
QUANTILE = 0.25  # a choice's score: the lower quartile of its trials' scores
MIN_N = 5  # fewer trials in a group: the claim is undetermined, whatever its interval
MIN_STAT = 3  # no median, quartile or band from fewer values than this
LEVEL = 0.95  # the family-wise level of established claims (Bonferroni over the claims of one kind)
SUGGESTIVE_LEVEL = 0.90
NO_EFFECT_MAX = math.log10(3.0)  # "no effect larger than X" only where X ≤ 3×; a wider interval is undetermined
BOOTSTRAP = 2000
SEED = 0  # bootstrap draws are seeded: the same study gives the same report

GRADE_RULES = (
    "**How to read the grades.** Each answer compares choices on their *good* trials: a choice's score is the lower "
    f"quartile of its trials' {{basis}}, and an effect is the ratio of two such scores, with a {BOOTSTRAP}-draw bootstrap interval over "
    f"trials. **Established**: the interval, widened for the number of claims of its kind (Bonferroni, {LEVEL:.0%} over all of them), "
    f"excludes no effect, each side has at least {MIN_N} trials, and no seeded retrain (`dlnn verify --per`) contradicts it. "
    f"**Suggestive**: only the uncorrected {SUGGESTIVE_LEVEL:.0%} interval excludes no effect (expect some of these to flip in a rerun). "
    f"**No effect larger than X**: the corrected interval contains no effect and rules out anything beyond X (X ≤ 3×); "
    "X is the smallest effect this study could have seen, not a proof of none. **Undetermined**: too few trials or too wide an "
    "interval; the claim says what would settle it. Where seeded retrains exist they decide: a controlled comparison "
    "(each choice's best config, fresh seeds) outranks a comparison across a search's draws. A learning-rate band is "
    f"established when trials close both its edges and it rests on at least {2 * MIN_N} completed trials, suggestive from {MIN_N} "
    "with one edge closed; an open edge makes its width a lower bound. No median, quartile or band is "
    f"computed from fewer than {MIN_STAT} values."
)


@dataclass(frozen=True)
class Claim:
    """One graded statement. `effect`, `low` and `high` are in `unit` (for comparisons log10 of the
    ratio first / second, negative: the first is better); `n` holds the sample sizes behind it."""

    id: str  # stable across runs of one spec: how `dlnn report A --against B` matches claims
    question: str  # the question it answers, e.g. "optimizer.name" or "lr band: adam"
    kind: str  # comparison, band, trend, rate, regression
    statement: str
    grade: str
    effect: float | None = None
    low: float | None = None
    high: float | None = None
    unit: str = ""
    n: dict = field(default_factory=dict)
    settle: str = ""  # what would settle an undetermined claim, with the command
    source: str = "search"  # search (the study's trials) or seeds (retrains of STUDY-verify)
    bound: float | None = None  # for "no effect larger than": X, in `unit`

    @property
    def label(self) -> str:
        if self.grade == NO_EFFECT and self.bound is not None:
            return f"no effect larger than {factor(self.bound)}" if self.unit == "log10 ratio" else f"no effect larger than {self.bound:.2g}"
        return self.grade


def factor(log_ratio: float) -> str:
    """A log10 ratio as a readable factor: 0.3 -> "2×", 0.004 -> "1.01×"."""
    x = 10 ** abs(log_ratio)
    return f"{x:.3g}×" if x < 10 else f"{x:.2g}×"


def levels(m: int) -> tuple[float, float]:
    """(corrected, suggestive) two-sided interval levels for one of m claims."""
    return 1.0 - (1.0 - LEVEL) / max(1, m), SUGGESTIVE_LEVEL


def quartile(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.quantile(x, QUANTILE, axis=axis, method="inverted_cdf")


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def resample(x: Sequence[float], rng: np.random.Generator, b: int = BOOTSTRAP) -> np.ndarray:
    """[b, len(x)] bootstrap resamples of x."""
    x = np.asarray(x, dtype=float)
    return x[rng.integers(0, len(x), size=(b, len(x)))]


def interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    return float(np.quantile(samples, a)), float(np.quantile(samples, 1.0 - a))


@dataclass(frozen=True)
class Effect:
    """A statistic, its bootstrap draws and its two intervals."""

    estimate: float
    corrected: tuple[float, float]
    uncorrected: tuple[float, float]


def effect_of(estimate: float, draws: np.ndarray, m: int) -> Effect:
    corrected, suggestive = levels(m)
    return Effect(estimate, interval(draws, corrected), interval(draws, suggestive))


def quartile_difference(a: Sequence[float], b: Sequence[float], m: int) -> Effect:
    """quartile(a) − quartile(b) with bootstrap intervals (a and b resampled independently)."""
    rng = _rng()
    draws = quartile(resample(a, rng)) - quartile(resample(b, rng))
    return effect_of(float(quartile(np.asarray(a)) - quartile(np.asarray(b))), draws, m)


def interaction_difference(cells: tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]], m: int) -> Effect:
    """(q(a1,b1) − q(a2,b1)) − (q(a1,b2) − q(a2,b2)): how much the effect of a changes between b1 and b2."""
    rng = _rng()
    q = [quartile(resample(c, rng)) for c in cells]
    e = [float(quartile(np.asarray(c))) for c in cells]
    return effect_of((e[0] - e[1]) - (e[2] - e[3]), (q[0] - q[1]) - (q[2] - q[3]), m)


def spearman(x: Sequence[float], y: Sequence[float], m: int) -> Effect:
    """Spearman's rank correlation with a bootstrap interval over (x, y) pairs."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, float), np.asarray(y, float)

    def rho(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        rx = np.apply_along_axis(rankdata, -1, xs)
        ry = np.apply_along_axis(rankdata, -1, ys)
        rx = rx - rx.mean(-1, keepdims=True)
        ry = ry - ry.mean(-1, keepdims=True)
        den = np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))
        return np.where(den > 0, (rx * ry).sum(-1) / np.where(den > 0, den, 1.0), 0.0)

    idx = _rng().integers(0, len(x), size=(BOOTSTRAP, len(x)))
    return effect_of(float(rho(x[None], y[None])[0]), rho(x[idx], y[idx]), m)


def rate_difference(k1: int, n1: int, k2: int, n2: int, m: int) -> Effect:
    """k1/n1 − k2/n2 with Newcombe's hybrid score intervals (well-behaved at 0 and 1, unlike a bootstrap)."""
    from scipy.stats import norm

    def wilson(k: int, n: int, z: float) -> tuple[float, float]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half

    def newcombe(level: float) -> tuple[float, float]:
        z = float(norm.ppf(1 - (1 - level) / 2))
        (l1, u1), (l2, u2) = wilson(k1, n1, z), wilson(k2, n2, z)
        p1, p2 = k1 / n1, k2 / n2
        d = p1 - p2
        return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))

    corrected, suggestive = levels(m)
    return Effect(k1 / n1 - k2 / n2, newcombe(corrected), newcombe(suggestive))


def welch_difference(a: Sequence[float], b: Sequence[float], m: int) -> Effect:
    """mean(a) − mean(b) with Welch t intervals: for a few seeds, where a bootstrap has too few distinct draws."""
    from scipy.stats import t as student

    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    d = float(a.mean() - b.mean())
    if se == 0:
        return Effect(d, (d, d), (d, d))
    dof = (va + vb) ** 2 / ((va ** 2 / (len(a) - 1) if len(a) > 1 else 0) + (vb ** 2 / (len(b) - 1) if len(b) > 1 else 0) or 1e-300)
    corrected, suggestive = levels(m)

    def ci(level: float) -> tuple[float, float]:
        h = float(student.ppf(1 - (1 - level) / 2, dof)) * se
        return d - h, d + h

    return Effect(d, ci(corrected), ci(suggestive))


def grade(e: Effect, n_min: int, *, need: int = MIN_N, no_effect_max: float | None = NO_EFFECT_MAX) -> tuple[str, float | None]:
    """(grade, bound): the grade of an effect whose smaller group has n_min values; bound is X for "no effect larger than X"."""
    lo, hi = e.corrected
    if n_min < need:
        return UNDETERMINED, None
    if lo > 0 or hi < 0:
        return ESTABLISHED, None
    slo, shi = e.uncorrected
    if slo > 0 or shi < 0:
        return SUGGESTIVE, None
    bound = max(abs(lo), abs(hi))
    if no_effect_max is not None and bound <= no_effect_max:
        return NO_EFFECT, bound
    return UNDETERMINED, None


def more_trials(e: Effect, n: int, bound_max: float = NO_EFFECT_MAX) -> int:
    """About how many more trials per side would settle an effect (the interval's width ∝ 1/√n): enough
    for the corrected interval to exclude no effect, or to bound it within NO_EFFECT_MAX, whichever is fewer."""
    lo, hi = e.corrected
    half = (hi - lo) / 2
    if half <= 0:
        return max(MIN_N - n, 1)
    needs = []
    if abs(e.estimate) > 0:
        needs.append(n * (half / abs(e.estimate)) ** 2)
    if abs(e.estimate) < bound_max:
        needs.append(n * (half / (bound_max - abs(e.estimate))) ** 2)
    need = min(needs) if needs else float(n)
    return max(MIN_N - n, math.ceil(need - n), 1)


def contradicts(a: Claim, b: Claim) -> bool:
    """Whether claim b (a rerun's) contradicts claim a. Established or suggestive effects of opposite
    sign contradict; a "no effect larger than X" contradicts an established effect whose interval lies
    beyond X; two graded bands contradict when their width intervals do not overlap (one established), an
    open-edged band's width counting as a lower bound. An undetermined claim asserts nothing, so contradicts nothing."""
    graded = (ESTABLISHED, SUGGESTIVE)
    if a.effect is None or b.effect is None:
        return False
    if a.kind in ("comparison", "interaction", "rate", "trend", "regression"):
        if a.grade in graded and b.grade in graded and (a.effect > 0) != (b.effect > 0):
            return True
        for x, y in ((a, b), (b, a)):
            if x.grade == ESTABLISHED and y.grade == NO_EFFECT and y.bound is not None and x.low is not None and x.high is not None:
                if min(abs(x.low), abs(x.high)) > y.bound and (x.low > 0 or x.high < 0):
                    return True
        return False
    if a.kind == "band" and b.kind == "band" and a.grade in graded and b.grade in graded and (a.grade == ESTABLISHED or b.grade == ESTABLISHED):
        if None in (a.low, b.low):
            return False
        a_high = math.inf if a.high is None else a.high  # an open-edged band's width is a lower bound: no upper end
        b_high = math.inf if b.high is None else b.high
        return a_high < b.low or b_high < a.low
    return False


def with_grade(c: Claim, grade_: str, why: str) -> Claim:
    return replace(c, grade=grade_, statement=f"{c.statement} {why}".strip())
