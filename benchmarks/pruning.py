"""Does the pruner kill winners? Rerun every pruned trial of a finished study to full length,
then count false kills and epochs saved, as run and for other pruners replayed on the same curves.

    python benchmarks/pruning.py quick --storage sqlite:///dlnn.db [--factor 2] [--out benchmarks/results/pruning_quick.md]

A false kill is a pruned trial whose full-length run ends within `factor`× of the study's best
value (the best over completed trials and the reruns). Epochs saved: the share of the epochs that
the judged trials would have run unpruned which the pruner spared. Diverged trials stop by
themselves under any pruner and are left out of both counts. The replay feeds every trial's
full curve, in trial order, to each candidate pruner in a fresh in-memory study (one trial at a
time: what parallel workers change, it does not model); baselines and verification runs are never
pruned, and no trial is cut at its final epoch, as in the service.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Curve:
    """A trial's per-epoch validation error at full length, and whether the pruner may stop it."""

    number: int
    values: dict[int, float]  # epoch -> value (raw units)
    prunable: bool = True

    @property
    def final(self) -> float:
        """What the trial ends with: fit keeps the best epoch's weights."""
        return min(self.values.values())


@dataclass(frozen=True)
class Audit:
    pruner: str
    pruned: int
    false_kills: int
    judged: int
    epochs_run: int
    epochs_full: int

    @property
    def false_kill_rate(self) -> float:
        return self.false_kills / self.pruned if self.pruned else 0.0

    @property
    def saved(self) -> float:
        return 1 - self.epochs_run / self.epochs_full if self.epochs_full else 0.0


def count(curves: list[Curve], stopped_at: dict[int, int], epochs: int, factor: float = 2.0, pruner: str = "") -> Audit:
    """Count false kills and epochs given the epoch each pruned trial was stopped at."""
    best = min(c.final for c in curves)
    false = sum(1 for n in stopped_at if next(c for c in curves if c.number == n).final <= factor * best)
    run = sum(stopped_at.get(c.number, epochs) for c in curves)
    return Audit(pruner, len(stopped_at), false, len(curves), run, epochs * len(curves))


def replay(curves: list[Curve], make_pruner: Callable[[], optuna.pruners.BasePruner], epochs: int, log_values: bool = True) -> dict[int, int]:
    """Feed the curves, in order, to a pruner; returns {trial number: epoch it was stopped at}."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(pruner=make_pruner())
    stopped = {}
    for c in curves:
        trial = study.ask()
        value = None
        for epoch in range(1, epochs + 1):
            value = c.values.get(epoch, value)
            if value is None:
                continue
            trial.report(math.log10(value) if log_values else value, epoch)
            if c.prunable and epoch < epochs and trial.should_prune():  # as the worker: never at the final epoch
                stopped[c.number] = epoch
                break
        if c.number in stopped:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, math.log10(c.final) if log_values else c.final)
    return stopped


def candidates(epochs: int) -> dict[str, Callable[[], optuna.pruners.BasePruner]]:
    """Pruners worth comparing, with warm-ups relative to the epoch budget."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = optuna.pruners
        half, quarter = max(1, epochs // 2), max(1, epochs // 4)
        return {
            "median, warm-up 2 (quick's old)": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
            f"median, warm-up {quarter} (¼ of epochs)": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=quarter),
            f"median, warm-up {half} (½ of epochs)": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=half),
            f"patient(2) median, warm-up {quarter}": lambda: P.PatientPruner(P.MedianPruner(n_startup_trials=5, n_warmup_steps=quarter), patience=2),
            f"percentile 25 (top quarter kept), warm-up {quarter}": lambda: P.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=quarter),
            f"percentile 25, warm-up {half}": lambda: P.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=half),
            "median, warm-up 1": lambda: P.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
            f"hyperband, min_resource {quarter}": lambda: P.HyperbandPruner(min_resource=quarter, max_resource=epochs, reduction_factor=3),
            f"successive halving, min_resource {quarter}": lambda: P.SuccessiveHalvingPruner(min_resource=quarter, reduction_factor=3),
            "successive halving, min_resource 1": lambda: P.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
            f"successive halving, min_resource {quarter}, reduction 4": lambda: P.SuccessiveHalvingPruner(min_resource=quarter, reduction_factor=4),
        }


def rerun_pruned(url: str, name: str, log=print) -> tuple[list[Curve], dict[int, int], int]:
    """The study's full curves: completed trials as stored, pruned ones rerun to full length."""
    from dlnn_core.config import TrainConfig
    from dlnn_core.train import fit
    from dlnn_studies.study.report import load

    d = load(url, name)
    epochs = d.spec.base.epochs
    curves, stopped = [], {}
    pruned = d.by("pruned")
    for r in d.rows:
        prunable = r.baseline is None and r.verify_of is None
        if r.outcome == "complete" and r.curve:
            curves.append(Curve(r.number, dict(r.curve), prunable))
    for i, r in enumerate(pruned, 1):
        t0 = time.perf_counter()
        config = TrainConfig().with_flat({**r.flat, "device": "cpu"})
        values: dict[int, float] = {}
        result = fit(config, report=lambda epoch, value: values.__setitem__(epoch, value))
        stopped[r.number] = max(r.curve) if r.curve else 1
        if result.status != "ok" or not values:
            log(f"  rerun of trial {r.number} diverged; left out")
            stopped.pop(r.number)
            continue
        curves.append(Curve(r.number, values))
        log(f"  rerun {i}/{len(pruned)}: trial {r.number} pruned at epoch {stopped[r.number]}, full length "
            f"{min(values.values()):.3g} ({time.perf_counter() - t0:.0f} s)")
    curves.sort(key=lambda c: c.number)
    return curves, stopped, epochs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study")
    ap.add_argument("--storage", default="sqlite:///dlnn.db")
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--curves", type=Path, default=None, help="JSON file keeping the full curves, so a second call skips the reruns")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.curves and args.curves.exists():  # reruns saved by an earlier call on the same study
        saved = json.loads(args.curves.read_text())
        curves = [Curve(c["number"], {int(k): v for k, v in c["values"].items()}, c["prunable"]) for c in saved["curves"]]
        stopped, epochs = {int(k): v for k, v in saved["stopped"].items()}, saved["epochs"]
    else:
        curves, stopped, epochs = rerun_pruned(args.storage, args.study)
        if args.curves:
            args.curves.write_text(json.dumps({"epochs": epochs, "stopped": stopped, "curves": [
                {"number": c.number, "values": c.values, "prunable": c.prunable} for c in curves]}))
    rows = [count(curves, stopped, epochs, args.factor, "as run")]
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    for label, make in candidates(epochs).items():
        rows.append(count(curves, replay(curves, make, epochs), epochs, args.factor, label))
    lines = [f"# Pruning audit: {args.study} ({len(curves)} trials with full curves, {epochs} epochs, "
             f"false kill = final within {args.factor:g}× of the best {min(c.final for c in curves):.3g})", "",
             f"Command: `python benchmarks/pruning.py {args.study} --storage {args.storage}`", "",
             "| pruner | pruned | false kills | false-kill rate | epochs run / unpruned | epochs saved |",
             "|---|---|---|---|---|---|"]
    for a in rows:
        lines.append(f"| {a.pruner} | {a.pruned} | {a.false_kills} | {100 * a.false_kill_rate:.0f} % | {a.epochs_run} / {a.epochs_full} | "
                     f"{100 * a.saved:.0f} % |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
