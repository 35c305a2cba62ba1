"""The measured comparison of model forms (issue 5): DLNN free, DLNN structured, LNN, MLP and the
published DLNN recipe, on the damped pendulum and the damped double pendulum, trained on exact
accelerations and on noisy trajectories (Savitzky–Golay targets), several seeds each. Prints one
Markdown table (mean ± std over seeds) and writes it to --out.

    python benchmarks/science.py                        # the full comparison (long on 2 CPU cores)
    python benchmarks/science.py --quick                # one seed, fewer epochs: a smoke run
    python benchmarks/science.py --systems damped_pendulum --variants dlnn_structured lnn --seeds 3
    python benchmarks/science.py --variants dlnn_structured --modes exact --epochs 600 --set optimizer.lr=3e-3
    python benchmarks/science.py --noise 0 0.01 0.05 0.1 --variants dlnn_structured lnn mlp --out benchmarks/results/noise_ladder.md

--noise replaces the data modes by a noise ladder: trajectories at 50 Hz with that observation noise,
q̇ and q̈ estimated by --derivatives (savgol or spline). Each run also states a damping estimate a
researcher could quote: the energy the model's rollout loses in its first second, as a fraction of
what the true system loses from the same states (1 is right; an LNN, which cannot dissipate, gives 0).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
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
DAMPING_S = 1.0  # the damping estimate's window, in seconds from the test rollouts' initial states
COLUMNS = ("energy_loss_ratio", "val_rel_mse", "val_rel_mse_median", "test_rollout_error_100", "test_rollout_error_500",
           "test_valid_steps", "test_energy_error", "ood_rel_mse", "ood_rollout_error_500", "dissipation_rel_error", "wall_time_s", "time_to_target_s")


def config_for(system: str, variant: str, mode: str | dict, seed: int, epochs: int, overrides: dict | None = None) -> TrainConfig:
    """The run's config; `mode` is a DATA_MODES name or a data mode's settings (the noise ladder's)."""
    size, settings = SIZES[system], DATA_MODES[mode] if isinstance(mode, str) else mode
    exact = settings["data.kind"] == "states"
    n_train = size["states"] if exact else size["trajectories"]
    n_val = 2048 if exact else 8
    data = {"data.system": system, "data.n_train": n_train, "data.n_val": n_val, "data.n_test": n_val,
            "data.n_rollout": 8, "data.rollout_steps": 500, **settings}
    loop = {"epochs": epochs, "seed": seed, "device": "cpu"}
    if VARIANTS[variant] is None:
        return PRESETS["published_dlnn"].with_flat({**data, **loop, **(overrides or {})})
    base = {"model.hidden": 128, "model.depth": 2, "model.activation": "swish", "optimizer.name": "adam",
            "optimizer.lr": 1e-3, "batch_size": 256, "loss": "mse"}
    return TrainConfig().with_flat({**base, **data, **loop, **VARIANTS[variant], **(overrides or {})})


def noisy_mode(noise: float, derivatives: str) -> dict:
    return {"data.kind": "trajectories", "data.derivatives": derivatives, "data.noise": noise, "data.rate_hz": 50.0}


def energy_loss_ratio(checkpoint: str) -> float:
    """Energy the model's rollout loses in DAMPING_S seconds from the test rollouts' true initial
    states, over what the true system loses from them (mean over trajectories)."""
    from dlnn_core.data import load_data
    from dlnn_core.evaluate import batched_rollout
    from dlnn_core.train import load_checkpoint

    model, config, _ = load_checkpoint(checkpoint)
    splits = load_data(config.data, config.data_seed)
    traj, system = splits.rollouts["test"], splits.system
    steps = round(DAMPING_S * config.data.rate_hz)
    dtype = next(model.parameters()).dtype
    q0, v0 = (torch.as_tensor(x[:, 0], dtype=dtype) for x in (traj.q, traj.qdot))
    q, v = batched_rollout(model, q0, v0, 1.0 / config.data.rate_hz, steps)
    energy = lambda q, v: system.energy(torch.as_tensor(q, dtype=torch.float64), torch.as_tensor(v, dtype=torch.float64))  # noqa: E731
    lost_true = energy(traj.q[:, 0], traj.qdot[:, 0]) - energy(traj.q[:, steps], traj.qdot[:, steps])
    lost_model = energy(traj.q[:, 0], traj.qdot[:, 0]) - energy(q[:, steps].double(), v[:, steps].double())
    return float((lost_model / lost_true).mean())


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
    parser.add_argument("--noise", nargs="+", type=float, metavar="SIGMA",
                        help="a noise ladder instead of --modes: trajectories at 50 Hz with each observation noise")
    parser.add_argument("--derivatives", default="savgol", choices=("savgol", "spline"), help="the ladder's target estimator")
    parser.add_argument("--out", default="benchmarks/results/science.md")
    args = parser.parse_args()
    modes = {f"noise {sigma:g}": noisy_mode(sigma, args.derivatives) for sigma in args.noise} if args.noise else {m: m for m in args.modes}
    seeds = 1 if args.quick else args.seeds
    overrides = parse_overrides(args.overrides)
    results: dict[tuple[str, str, str], list[dict]] = {}
    header = "| system | data | model | " + " | ".join(COLUMNS) + " | status |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 4)]
    print(header, flush=True)
    for system in args.systems:
        epochs = args.epochs or (SIZES[system]["epochs"] // (5 if args.quick else 1))
        for mode, settings in modes.items():
            for variant in args.variants:
                runs = []
                for seed in range(seeds):
                    start = time.perf_counter()
                    with tempfile.TemporaryDirectory(prefix="dlnn-science-") as out:
                        result = fit(config_for(system, variant, settings, seed, epochs, overrides), out_dir=out)
                        metrics = dict(result.metrics, wall_time_s=time.perf_counter() - start,
                                       time_to_target_s=time_to_target(result.history, TARGETS[system][0]))
                        if result.ok:
                            metrics["energy_loss_ratio"] = energy_loss_ratio(result.checkpoint)
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
    if args.noise:
        print(f"wrote {ladder_figure(results, args.noise, Path(args.out).with_suffix('.png'))}")
    print(f"wrote {args.out}")


def ladder_figure(results: dict[tuple[str, str, str], list[dict]], noises: list[float], out: Path) -> Path:
    """Valid steps and the damping estimate against noise, per system and model: mean and the seeds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted({s for s, _, _ in results})
    fig, axes = plt.subplots(2, len(systems), figsize=(5.5 * len(systems), 7), squeeze=False)
    for col, system in enumerate(systems):
        for row, (column, label) in enumerate((("test_valid_steps", "valid steps (test rollouts, 50 Hz)"),
                                               ("energy_loss_ratio", f"energy lost in {DAMPING_S:g} s: model / truth"))):
            ax = axes[row, col]
            for variant in sorted({v for s, _, v in results if s == system}):
                xs, mid, lo, hi = [], [], [], []
                for sigma in noises:
                    values = [r.get(column, math.nan) for r in results.get((system, f"noise {sigma:g}", variant), [])]
                    values = [v for v in values if math.isfinite(v)]
                    if values:
                        xs.append(sigma), mid.append(statistics.fmean(values)), lo.append(min(values)), hi.append(max(values))
                if xs:
                    line, = ax.plot(xs, mid, marker="o", label=variant)
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
            if row == 1:
                ax.axhline(1.0, color="black", lw=0.8, ls="--", label="truth")
            ax.set_xscale("symlog", linthresh=0.01)
            ax.set_xlabel("observation noise σ (rad)")
            ax.set_ylabel(label)
            ax.set_title(system)
            ax.legend(fontsize=8)
    fig.suptitle("Noise ladder: mean over seeds, band = the seeds' range")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_table(out: Path, lines: list[str], checks: list[str], seeds: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"Measured by `python {' '.join(['benchmarks/science.py'] + sys.argv[1:])}` ({seeds} seed(s), "
                   f"{torch.get_num_threads()} CPU threads, torch {torch.__version__})\n\n" + "\n".join(lines)
                   + "\n\nTargets (means over seeds):\n\n" + "\n".join(checks) + "\n")


if __name__ == "__main__":
    main()
