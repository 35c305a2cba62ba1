"""The measured comparison of model forms (issue 5): DLNN free, DLNN structured, LNN, MLP and the
published DLNN recipe, on the damped pendulum and the damped double pendulum, trained on exact
accelerations and on noisy trajectories (Savitzky–Golay targets), several seeds each. Prints one
Markdown table (mean ± std over seeds) and writes it to --out.

    python benchmarks/science.py                        # the full comparison (long on 2 CPU cores)
    python benchmarks/science.py --quick                # one seed, fewer epochs: a smoke run
    python benchmarks/science.py --systems damped_pendulum --variants dlnn_structured lnn --seeds 3
    python benchmarks/science.py --variants dlnn_structured --modes exact --epochs 600 --set optimizer.lr=3e-3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from dlnn_core.config import PRESETS, TrainConfig
from dlnn_core.train import fit
from dlnn_studies.cli.train import parse_overrides

# Model variants: overrides on top of the base config (published: the preset as published).
VARIANTS = {
    "dlnn_free": {"model.kind": "dlnn", "model.form": "free"},  # init "auto": orthogonal
    "dlnn_structured": {"model.kind": "dlnn", "model.form": "structured"},
    "lnn": {"model.kind": "lnn", "model.form": "structured"},
    "mlp": {"model.kind": "mlp"},
    "published": None,
}
DATA_MODES = {
    "exact": {"data.kind": "states"},
    "noisy": {"data.kind": "trajectories", "data.derivatives": "savgol", "data.noise": 0.01, "data.rate_hz": 50.0},
}
SIZES = {  # per system: (states, trajectories) for training, epochs
    "damped_pendulum": {"states": 4096, "trajectories": 24, "epochs": 60},
    "damped_double_pendulum": {"states": 8192, "trajectories": 24, "epochs": 150},
}
TARGETS = {"damped_pendulum": (1e-5, 120.0), "damped_double_pendulum": (1e-3, 600.0)}  # val_rel_mse within seconds
COLUMNS = ("val_rel_mse", "val_rel_mse_median", "test_rollout_error_100", "test_rollout_error_500",
           "test_valid_steps", "test_energy_error", "ood_rel_mse", "ood_rollout_error_500", "dissipation_rel_error", "wall_time_s", "time_to_target_s")


def config_for(system: str, variant: str, mode: str, seed: int, epochs: int, overrides: dict | None = None) -> TrainConfig:
    size = SIZES[system]
    n_train = size["states"] if mode == "exact" else size["trajectories"]
    n_val = 2048 if mode == "exact" else 8
    data = {"data.system": system, "data.n_train": n_train, "data.n_val": n_val, "data.n_test": n_val,
            "data.n_rollout": 8, "data.rollout_steps": 500, **DATA_MODES[mode]}
    loop = {"epochs": epochs, "seed": seed, "device": "cpu"}
    if VARIANTS[variant] is None:
        return PRESETS["published_dlnn"].with_flat({**data, **loop, **(overrides or {})})
    base = {"model.hidden": 128, "model.depth": 2, "model.activation": "swish", "optimizer.name": "adam",
            "optimizer.lr": 1e-3, "batch_size": 256, "loss": "mse"}
    return TrainConfig().with_flat({**base, **data, **loop, **VARIANTS[variant], **(overrides or {})})


def time_to_target(history: list[dict], target: float) -> float:
    """Seconds of training until the validation error first reached the target (inf if never)."""
    return next((h["time_s"] for h in history if h["val_rel_mse"] is not None and h["val_rel_mse"] <= target), math.inf)


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values and all(math.isfinite(v) for v in values) else math.inf


def verdicts(results: dict[tuple[str, str, str], list[dict]]) -> list[str]:
    """The issue's targets, checked on the means over seeds; only those whose runs are in this table."""
    lines = []

    def m(system, mode, variant, column):
        return mean([r.get(column, math.inf) for r in results.get((system, mode, variant), [])])

    for system, (target, seconds) in TARGETS.items():
        if (system, "exact", "dlnn_structured") in results:
            val, t = m(system, "exact", "dlnn_structured", "val_rel_mse"), m(system, "exact", "dlnn_structured", "time_to_target_s")
            ok = val <= target and t <= seconds
            lines.append(f"- {system}, exact: structured DLNN val_rel_mse {val:.3g} (target ≤ {target:g}), reached in "
                         f"{t:.0f} s (target ≤ {seconds:g} s): **{'met' if ok else 'not met'}**")
    for system, mode in sorted({(s, d) for s, d, _ in results}):
        if (system, mode, "dlnn_structured") not in results:
            continue
        dlnn = m(system, mode, "dlnn_structured", "test_rollout_error_500")
        if (system, mode, "lnn") in results:
            lnn = m(system, mode, "lnn", "test_rollout_error_500")
            lines.append(f"- {system}, {mode}: DLNN / LNN 500-step rollout error = {dlnn / lnn:.3g} (target ≤ 0.1): "
                         f"**{'met' if dlnn <= 0.1 * lnn else 'not met'}**")
        if (system, mode, "mlp") in results:
            mlp = m(system, mode, "mlp", "test_rollout_error_500")
            ood_d, ood_m = m(system, mode, "dlnn_structured", "ood_rel_mse"), m(system, mode, "mlp", "ood_rel_mse")
            ok = dlnn < mlp and ood_d < ood_m
            lines.append(f"- {system}, {mode}: DLNN vs MLP, 500-step rollout {dlnn:.3g} vs {mlp:.3g}, OOD rel. MSE "
                         f"{ood_d:.3g} vs {ood_m:.3g}: **{'DLNN better on both' if ok else 'not met'}**")
    return lines


def mean_std(values: list[float | None]) -> str:
    if all(v is None for v in values):
        return "–"  # not defined for this model (an LNN or MLP has no D)
    values = [math.inf if v is None else v for v in values]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "inf"
    mean = statistics.fmean(finite)
    std = statistics.pstdev(finite) if len(finite) > 1 else 0.0
    bad = f" ({len(values) - len(finite)} inf)" if len(finite) < len(values) else ""
    return f"{mean:.3g} ± {std:.2g}{bad}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", default=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", default=list(DATA_MODES), choices=list(DATA_MODES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override the per-system epochs")
    parser.add_argument("--quick", action="store_true", help="1 seed, a fifth of the epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of every run by its dotted name, e.g. optimizer.lr=3e-3 (repeatable)")
    parser.add_argument("--out", default="benchmarks/results/science.md")
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    overrides = parse_overrides(args.overrides)
    results: dict[tuple[str, str, str], list[dict]] = {}
    header = "| system | data | model | " + " | ".join(COLUMNS) + " | status |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 4)]
    print(header, flush=True)
    for system in args.systems:
        epochs = args.epochs or (SIZES[system]["epochs"] // (5 if args.quick else 1))
        for mode in args.modes:
            for variant in args.variants:
                runs = []
                for seed in range(seeds):
                    start = time.perf_counter()
                    result = fit(config_for(system, variant, mode, seed, epochs, overrides))
                    metrics = dict(result.metrics, wall_time_s=time.perf_counter() - start,
                                   time_to_target_s=time_to_target(result.history, TARGETS[system][0]))
                    runs.append((result.status, metrics))
                results[(system, mode, variant)] = [m for _, m in runs]
                # A diverged run has no metrics (inf); a metric an ok run lacks does not apply to its model (None).
                cells = [mean_std([m.get(c, math.inf if status == "diverged" else None) for status, m in runs]) for c in COLUMNS]
                status = ", ".join(sorted({s for s, _ in runs}))
                line = f"| {system} | {mode} | {variant} | " + " | ".join(cells) + f" | {status} |"
                lines.append(line)
                print(line, flush=True)
                write_table(Path(args.out), lines, verdicts(results), seeds)  # after every row: a cut run keeps its rows
    print("\n".join(verdicts(results)))
    print(f"wrote {args.out}")


def write_table(out: Path, lines: list[str], checks: list[str], seeds: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"Measured by `python {' '.join(['benchmarks/science.py'] + sys.argv[1:])}` ({seeds} seed(s), "
                   f"{torch.get_num_threads()} CPU threads, torch {torch.__version__})\n\n" + "\n".join(lines)
                   + "\n\nTargets (means over seeds):\n\n" + "\n".join(checks) + "\n")


if __name__ == "__main__":
    main()
