"""The picture a trial leaves in the dashboard: predicted vs true rollouts from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def rollout_png(checkpoint: str | Path, out: str | Path, trajectories: int = 3, cache_dir: str | Path | None = None) -> Path:
    """Roll the trained model out from the validation trajectories' initial states (the
    evaluation's rollout: RK4 at the data's sampling step, no graph) and plot each coordinate
    against the true solution."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from dlnn_core.data import load_data
    from dlnn_core.evaluate import batched_rollout, frozen
    from dlnn_core.train import DTYPES, load_checkpoint

    model, config, _ = load_checkpoint(checkpoint, "cpu")
    splits = load_data(config.data, config.data_seed, cache_dir)
    traj = splits.rollouts["val"]
    k = min(trajectories, traj.q.shape[0])
    dtype = DTYPES[config.dtype]
    q0 = torch.as_tensor(traj.q[:k, 0], dtype=dtype)
    v0 = torch.as_tensor(traj.qdot[:k, 0], dtype=dtype)
    dt = float(traj.t[1] - traj.t[0])
    with frozen(model):
        q, _ = batched_rollout(model, q0, v0, dt, traj.q.shape[1] - 1)
    q = q.double().numpy()
    n = traj.q.shape[2]
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.6 * n), sharex=True, squeeze=False)
    for j in range(n):
        ax = axes[j, 0]
        for i in range(k):
            color = f"C{i}"
            ax.plot(traj.t, traj.q[i, :, j], color=color, lw=1.5, label="true" if i == 0 else None)
            ax.plot(traj.t, q[i, :, j], color=color, lw=1.2, ls="--", label="model" if i == 0 else None)
        ax.set_ylabel(f"q{j + 1}")
        lo, hi = np.nanmin(traj.q[:k, :, j]), np.nanmax(traj.q[:k, :, j])  # nan: padding after a file trajectory's end
        pad = 0.5 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)  # a diverging rollout must not flatten the truth
    axes[0, 0].legend(loc="upper right")
    axes[-1, 0].set_xlabel("t [s]")
    system = config.data.declared["name"] if config.data.declared else config.data.system or Path(config.data.file).name
    fig.suptitle(f"{system}: predicted (dashed) vs true rollouts, {config.model.kind}/{config.model.form}, "
                 f"{config.optimizer.name}")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def rollouts_overlay(checkpoints: dict[str, str | Path], trajectories: int = 2, cache_dir: str | Path | None = None):
    """One figure: the true held-out rollouts (solid) and each model's from the same initial
    states (dashed), one panel per coordinate; the data are those of the first checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from dlnn_core.data import load_data
    from dlnn_core.evaluate import batched_rollout, frozen
    from dlnn_core.train import DTYPES, load_checkpoint

    loaded = {label: load_checkpoint(path, "cpu") for label, path in checkpoints.items()}
    _, config, _ = next(iter(loaded.values()))
    traj = load_data(config.data, config.data_seed, cache_dir).rollouts["test"]
    k = min(trajectories, traj.q.shape[0])
    dt = float(traj.t[1] - traj.t[0])
    n = traj.q.shape[2]
    fig, axes = plt.subplots(n, k, figsize=(5 * k, 2.4 * n), sharex=True, squeeze=False)
    for j in range(n):
        for i in range(k):
            ax = axes[j, i]
            ax.plot(traj.t, traj.q[i, :, j], color="k", lw=1.8, label="true")
            lo, hi = np.nanmin(traj.q[i, :, j]), np.nanmax(traj.q[i, :, j])  # nan: padding after a file trajectory's end
            pad = 0.5 * (hi - lo + 1e-9)
            ax.set_ylim(lo - pad, hi + pad)  # a diverging rollout must not flatten the truth
            ax.set_ylabel(f"q{j + 1}")
    for c, (label, (model, cfg, _)) in enumerate(loaded.items()):
        dtype = DTYPES[cfg.dtype]
        q0 = torch.as_tensor(traj.q[:k, 0], dtype=dtype)
        v0 = torch.as_tensor(traj.qdot[:k, 0], dtype=dtype)
        with frozen(model):
            q, _ = batched_rollout(model, q0, v0, dt, traj.q.shape[1] - 1)
        q = q.double().numpy()
        for j in range(n):
            for i in range(k):
                axes[j, i].plot(traj.t, q[i, :, j], color=f"C{c}", lw=1.2, ls="--", label=label)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    for i in range(k):
        axes[-1, i].set_xlabel("t [s]")
    return fig


def rollout_errors(checkpoints: dict[str, str | Path], cache_dir: str | Path | None = None) -> dict:
    """Each model's state error (q wrapped, q̇) against the truth over time on every held-out test
    trajectory, from the same initial states: {"t": [T], "models": {label: {"mean": [T], "low": [T],
    "high": [T]}}}, plain lists (the report's record). The data are those of the first checkpoint."""
    from dlnn_core.data import load_data
    from dlnn_core.evaluate import batched_rollout, frozen
    from dlnn_core.metrics import state_error
    from dlnn_core.train import DTYPES, load_checkpoint

    loaded = {label: load_checkpoint(path, "cpu") for label, path in checkpoints.items()}
    _, config, _ = next(iter(loaded.values()))
    splits = load_data(config.data, config.data_seed, cache_dir)
    traj = splits.rollouts["test"]
    dt = float(traj.t[1] - traj.t[0])
    out = {"t": [float(x) for x in traj.t], "trajectories": int(traj.q.shape[0]), "models": {}}
    for label, (model, cfg, _) in loaded.items():
        dtype = DTYPES[cfg.dtype]
        q0 = torch.as_tensor(traj.q[:, 0], dtype=dtype)
        v0 = torch.as_tensor(traj.qdot[:, 0], dtype=dtype)
        with frozen(model):
            q, v = batched_rollout(model, q0, v0, dt, traj.q.shape[1] - 1)
        err = state_error(q.double(), v.double(), torch.as_tensor(traj.q, dtype=torch.float64),
                          torch.as_tensor(traj.qdot, dtype=torch.float64), splits.system.angles).numpy()
        err = np.where(np.isfinite(err), err, np.nan)
        out["models"][label] = {"mean": np.nanmean(err, 0).tolist(), "low": np.nanmin(err, 0).tolist(), "high": np.nanmax(err, 0).tolist()}
    return out
