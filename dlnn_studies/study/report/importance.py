"""The report's Importances section: which searched settings explain the score, by Optuna's fANOVA
on the scored trials (the learning rate as one feature relative to each optimizer's default), with a
bootstrap interval so that overlapping importances are not read as an order."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import numpy as np

import dlnn_studies.study.report.evidence as ev
from .basis import Basis
from .data import StudyData
from .divergence import lr_rel
from .record import Section, Text, table


IMPORTANCE_RESAMPLES = 8
IMPORTANCE_TREES = 16  # fANOVA's forest per fit (Optuna's default is 64): the resamples give the spread, not more trees


def features(d: StudyData, sc: dict[int, float]) -> tuple[list[str], list[tuple[dict[str, Any], float]]]:
    """Importance features of scored trials: every categorical setting, the learning rate as
    log10(lr / the optimizer's default) for all optimizers alike, and every numeric setting that every
    scored trial has (conditional ones such as d0 are left out: the Answers grade d0 among its own trials)."""
    keys = [q.key for q in d.spec.space if q.kind != "fixed" and q.only_for is None and q.key != "optimizer.lr"]
    lr_searched = any(q.key == "optimizer.lr" and q.kind != "fixed" for q in d.spec.space)
    data = []
    for r in d.judged:
        if r.number not in sc or not r.flat:
            continue
        x = {k: r.flat[k] for k in keys if k in r.flat}
        rel = lr_rel(r.flat)
        if lr_searched and rel:
            x["log10(lr / default lr)"] = math.log10(rel)
        data.append((x, sc[r.number]))
    names = sorted({k for x, _ in data for k in x})
    names = [k for k in names if all(k in x for x, _ in data) and len({repr(x[k]) for x, _ in data}) > 1]
    return names, data


def _fanova(names: list[str], data: list[tuple[dict[str, Any], float]]) -> dict[str, float]:
    """Optuna's fANOVA importances of `names` over `data` (features, score), in a throwaway in-memory study."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists = {}
    for k in names:
        values = [x[k] for x, _ in data]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            lo, hi = float(min(values)), float(max(values))
            dists[k] = FloatDistribution(lo, hi if hi > lo else lo + 1)
        else:
            dists[k] = CategoricalDistribution(sorted({v for v in values}, key=str))
    study = optuna.create_study()
    for x, y in data:
        params = {k: (float(x[k]) if isinstance(dists[k], FloatDistribution) else x[k]) for k in names}
        study.add_trial(optuna.create_trial(params=params, distributions=dists, value=y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(n_trees=IMPORTANCE_TREES, seed=0), normalize=True)


def importances(d: StudyData, basis: Basis, sc: dict[int, float]) -> Section:
    """The Importances section: fANOVA on the scored trials, with a bootstrap interval per setting."""
    names, data = features(d, sc)
    if len(data) < 2 * ev.MIN_N or not names:
        return Section("Importances", (Text(f"Importances need at least {2 * ev.MIN_N} scored trials and a searched setting; this study has "
                                            f"{len(data)} scored and {len(names)} usable settings."),))
    rng = np.random.default_rng(ev.SEED)
    draws: dict[str, list[float]] = defaultdict(list)
    try:
        full = _fanova(names, data)
        for _ in range(IMPORTANCE_RESAMPLES):
            sample = [data[i] for i in rng.integers(0, len(data), len(data))]
            usable = [k for k in names if len({repr(x[k]) for x, _ in sample}) > 1]
            got = _fanova(usable, sample) if usable else {}
            for k in names:
                draws[k].append(got.get(k, 0.0))
    except Exception as exc:
        return Section("Importances", (Text(f"fANOVA could not be computed: {type(exc).__name__}: {exc}"),))
    order = sorted(names, key=lambda k: -full.get(k, 0.0))
    rows = [[k, full.get(k, 0.0), float(np.quantile(draws[k], 0.1)), float(np.quantile(draws[k], 0.9))] for k in order]
    text = (f"fANOVA (Optuna's, {IMPORTANCE_TREES} trees, seed 0) on {len(data)} scored trials, target: {basis.text}, so pruned and diverged trials count. "
            f"The interval is the 10–90 % range over {IMPORTANCE_RESAMPLES} bootstrap resamples of the trials: importances whose "
            "ranges overlap are not ordered by this study. The learning rate enters as one feature for all optimizers, "
            "log10(lr / the optimizer's registry default); d0 is graded in the Answers among the trials that drew it. "
            "One method only: PED-ANOVA (which asks what separates the top trials from the rest) and fANOVA (what explains the "
            "variance of all) answer different questions and disagreed on earlier studies; the Answers' effects are what to act on. "
            "optuna-dashboard's own Importance panel computes fANOVA on completed trials' raw parameters (d0 and lr_position "
            "included), so it can rank differently: this table is the one that matches the Answers.")
    return Section("Importances", (Text(text), table(["setting", "importance", "10 %", "90 %"], rows)))
