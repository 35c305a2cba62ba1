"""`dlnn status STUDY`: trials by state, budget use, best value and config, running trials with their
worker and age, and recent failures with their reasons."""

from __future__ import annotations

import datetime
from typing import Any

import optuna
from optuna.trial import TrialState

from . import records
from ..spec.schema import StudySpec
from ..store.storage import close_storage, open_storage
from ..store.optuna_private import retry_history
from .service import counted, feasible, ranked_trials, stored_spec

def status(url: str, name: str, now: datetime.datetime | None = None) -> dict[str, Any]:
    """Trials by state, budget use, best value and config, running trials with worker and age,
    and recent failures with their reasons, as a JSON-ready dict."""
    storage = open_storage(url)
    try:
        spec = stored_spec(storage, name)
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        ranked = ranked_trials(study)  # before closing: a gRPC storage cannot be read once closed
        scales = records.stored_scales(study)
    finally:
        close_storage(storage)
    now = now or datetime.datetime.now()
    states: dict[str, int] = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    retried = {}
    for t in trials:
        if retry_history(t):
            retried[retry_history(t)[-1]] = t.number
    best = None
    if ranked:
        b = ranked[0]
        best = {"trial": b.number, "values": dict(zip(spec.metrics, records.raw_values(scales, b))), "params": b.params,
                "config": records.trial_config(b), "metrics": records.trial_metrics(b)}
    running = []
    for t in trials:
        if t.state == TrialState.RUNNING:
            worker = records.trial_worker(t)
            running.append({"trial": t.number, "worker": worker.get("id", "?"), "device": worker.get("device"),
                            "age_s": round((now - t.datetime_start).total_seconds(), 1) if t.datetime_start else None,
                            "last_epoch": max(t.intermediate_values) if t.intermediate_values else None})
    failures = []
    for t in reversed(trials):
        diverged = t.state == TrialState.PRUNED and not feasible(t)
        if t.state != TrialState.FAIL and not diverged:
            continue
        reason = t.user_attrs.get(records.REASON)
        if reason is None and t.state == TrialState.FAIL:
            reason = "worker lost (heartbeat went stale)"
        if t.number in retried:
            reason += f"; retried as trial {retried[t.number]}"
        failures.append({"trial": t.number, "state": t.state.name, "reason": reason,
                         "worker": records.trial_worker(t).get("id")})
        if len(failures) >= 10:
            break
    return {
        "study": name, "spec_digest": spec.digest, "metrics": list(spec.metrics), "directions": list(spec.directions),
        "sampler": spec.sampler, "pruner": spec.pruner,
        "budget": {"trials": spec.trials, "used": counted(trials), "timeout_s": spec.timeout_s},
        "states": states, "n_trials": len(trials), "best": best, "running": running, "failures": failures,
        "dataset": _dataset(spec),
    }


def _dataset(spec: StudySpec) -> dict[str, str] | None:
    from ..store.datasets import config_file

    file, sha256 = config_file(spec.base)
    return {"file": file, "sha256": sha256} if file else None


def format_status(s: dict[str, Any]) -> str:
    lines = [f"study {s['study']}  (sampler {s['sampler']}, pruner {s['pruner']}, spec {s['spec_digest']})",
             "objective: " + ", ".join(f"{d} {m}" for m, d in zip(s["metrics"], s["directions"])),
             f"budget: {s['budget']['used']}/{s['budget']['trials']} trials used"
             + (f", timeout {s['budget']['timeout_s']:g} s" if s["budget"]["timeout_s"] else ""),
             "trials: " + ", ".join(f"{k.lower()} {v}" for k, v in s["states"].items())]
    if s.get("dataset"):
        lines.append(f"data: {s['dataset']['file']} (sha256 {s['dataset']['sha256']})")
    best = s["best"]
    if best:
        values = ", ".join(f"{m} = {v:.4g}" for m, v in best["values"].items())
        lines.append(f"best: trial {best['trial']}  {values}  (one draw: its seed helped; `dlnn verify` retrains it with fresh seeds, "
                     "`dlnn report` grades what the study shows)")
        for k, v in sorted(best["params"].items()):
            lines.append(f"    {k} = {v:.4g}" if isinstance(v, float) else f"    {k} = {v}")
    else:
        lines.append("best: no completed trial yet")
    if s["running"]:
        lines.append("running:")
        for r in s["running"]:
            epoch = f", epoch {r['last_epoch']}" if r["last_epoch"] is not None else ""
            lines.append(f"    trial {r['trial']}  worker {r['worker']}  age {r['age_s']:.0f} s{epoch}")
    if s["failures"]:
        lines.append("recent failures:")
        for f in s["failures"]:
            lines.append(f"    trial {f['trial']} {f['state'].lower()}: {f['reason']}")
    lines.append(f"what it answers (per choice, lr tolerance, failures): dlnn report {s['study']}  (writes reports/{s['study']}/report.html)")
    return "\n".join(lines)
