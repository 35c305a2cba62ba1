"""Learning-rate range test (Smith 2017): raise the learning rate exponentially over a few hundred
steps from a tiny value, record the smoothed training loss, stop when it explodes, and suggest the
range where the loss falls. Lets a spec's learning-rate bounds come from evidence rather than
habit. For D-Adaptation and Prodigy the scanned value is the multiplier of the adapted step size
d, and d itself grows from d0 during the scan, so their curve mixes both: read it as rough."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .config import TrainConfig
from .data import load_data
from .errors import ConfigError
from .optim import OPTIMIZERS, build_optimizer
from .train import DTYPES, TrainStep, build_seeded_model, resolve_device


@dataclass(frozen=True)
class LRFindResult:
    """The scan and what it suggests (see `suggest`): `suggested` is a (low, high) range for a
    search, `suggested_lr` one value inside it. Both are None when the loss never fell (the scan
    started too high or ended too low; `reason` says which)."""

    optimizer: str
    lrs: list[float]
    losses: list[float]  # smoothed: bias-corrected exponential moving average of log(loss), exponentiated
    raw_losses: list[float]
    suggested: tuple[float, float] | None
    suggested_lr: float | None
    min_loss_lr: float | None
    stopped_early: bool
    reason: str
    plot: str | None = None


def default_bounds(optimizer: str) -> tuple[float, float]:
    """Scan two decades beyond the optimizer's sensible range on either side."""
    low, high = OPTIMIZERS[optimizer].lr_range
    return low / 100, high * 100


def lr_find(
    config: TrainConfig,
    *,
    start_lr: float | None = None,
    end_lr: float | None = None,
    steps: int = 200,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    plot_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[dict], None] | None = None,
) -> LRFindResult:
    """Run the range test on `config`'s model, data, optimizer and loss (its scheduler and epochs
    are ignored). Stops when the smoothed loss exceeds `diverge_factor` × its minimum or is not
    finite. Writes a loss-vs-lr PNG to `plot_path` when given. `progress(record)` hears of every
    step: {"phase": "lr-find", "step", "steps", "lr", "loss" (smoothed)}."""
    default_low, default_high = default_bounds(config.optimizer.name)
    start_lr = default_low if start_lr is None else float(start_lr)
    end_lr = default_high if end_lr is None else float(end_lr)
    if not 0 < start_lr < end_lr:
        raise ConfigError("lr range", (start_lr, end_lr), "0 < start_lr < end_lr")
    if not (isinstance(steps, int) and steps >= 10):
        raise ConfigError("steps", steps, "an integer >= 10")
    if not 0 <= smoothing < 1:
        raise ConfigError("smoothing", smoothing, "a number in [0, 1)")
    if not diverge_factor > 1:
        raise ConfigError("diverge_factor", diverge_factor, "a number > 1")

    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    splits = load_data(config.data, config.data_seed, cache_dir)
    model = build_seeded_model(config, splits, device)
    q, v, a = splits.train.to_torch(dtype, device)
    count, batch = q.shape[0], min(config.batch_size, q.shape[0])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config.optimizer, lr=start_lr)
    order = torch.Generator(device=device).manual_seed(config.seed)
    step = TrainStep(config, model, optimizer, params, splits, order, dtype, device)  # fit's step, rollout loss included

    lrs, raw, smooth = [], [], []
    avg, best = 0.0, math.inf
    perm, cursor = torch.randperm(count, generator=order, device=device), 0
    reason, stopped = f"scanned {steps} steps up to lr {end_lr:.3g}", False
    model.train()
    for i in range(steps):
        lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if cursor + batch > count:
            perm, cursor = torch.randperm(count, generator=order, device=device), 0
        idx = perm[cursor : cursor + batch]
        cursor += batch
        value = float(step(q[idx], v[idx], a[idx]))  # the scan needs each loss to decide when to stop
        if not math.isfinite(value):
            reason, stopped = f"loss became {value} at lr {lr:.3g}", True
            break
        # Average log(loss): the loss spans decades during a scan and a plain average lags behind.
        avg = smoothing * avg + (1 - smoothing) * math.log(max(value, 1e-300))
        smoothed = math.exp(avg / (1 - smoothing ** (i + 1)))
        lrs.append(lr)
        raw.append(value)
        smooth.append(smoothed)
        best = min(best, smoothed)
        if progress is not None:
            progress({"phase": "lr-find", "step": i + 1, "steps": steps, "lr": lr, "loss": smoothed})
        if i >= 10 and smoothed > diverge_factor * best:
            reason, stopped = f"smoothed loss exceeded {diverge_factor:g}x its minimum at lr {lr:.3g}", True
            break

    suggested, suggested_lr, min_loss_lr, why = suggest(lrs, smooth)
    if why:
        reason = f"{reason}; {why}"
    result = LRFindResult(config.optimizer.name, lrs, smooth, raw, suggested, suggested_lr, min_loss_lr, stopped, reason)
    if plot_path is not None:
        result = replace(result, plot=str(plot(result, plot_path, config)))
    return result


def suggest(lrs: list[float], smooth: list[float], min_drop: float = 0.05) -> tuple[tuple[float, float] | None, float | None, float | None, str]:
    """(low, high), suggested lr, lr at the loss minimum, and a note when there is no suggestion.
    low: where the smoothed loss has fallen by 10 % of its total drop; high: a tenth of the lr at
    the minimum (the minimum itself sits at the edge of instability), or the minimum when that
    would fall below low. The suggested lr is where the loss falls fastest, inside the range."""
    if len(smooth) < 5:
        return None, None, None, "too few finite steps to suggest a range (start lower)"
    i_min = min(range(len(smooth)), key=smooth.__getitem__)
    first = smooth[0]
    drop = first - smooth[i_min]
    if drop <= min_drop * abs(first):
        where = "start_lr is too high" if i_min < len(smooth) // 10 else "end_lr is too low"
        return None, None, lrs[i_min], f"the loss never fell by {min_drop:.0%} ({where}?)"
    i_low = next(i for i in range(i_min + 1) if smooth[i] <= first - 0.1 * drop)
    low, high = lrs[i_low], lrs[i_min] / 10
    if high <= low:
        high = lrs[i_min]
    if high <= low:
        low = high / 10
    logs = [math.log(x) for x in lrs]
    inside = [i for i in range(1, len(smooth) - 1) if low <= lrs[i] <= high]
    if inside:
        steepest = lrs[min(inside, key=lambda i: (smooth[i + 1] - smooth[i - 1]) / (logs[i + 1] - logs[i - 1]))]
    else:
        steepest = math.sqrt(low * high)
    return (low, high), steepest, lrs[i_min], ""


def plot(result: LRFindResult, path: str | os.PathLike, config: TrainConfig | None = None) -> Path:
    """Loss vs learning rate (log x), the suggested range shaded, written as a PNG with Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if result.lrs:
        ax.plot(result.lrs, result.raw_losses, color="0.7", lw=0.8, label="loss")
        ax.plot(result.lrs, result.losses, color="C0", lw=2, label="smoothed loss")
        if min(result.raw_losses) > 0:
            ax.set_yscale("log")
        low, high = min(result.losses), max(result.losses[0], result.losses[-1])
        ax.set_ylim(low / 3 if low > 0 else None, high * 3 if high > 0 else None)
        ax.set_xscale("log")
    if result.suggested:
        ax.axvspan(*result.suggested, color="C2", alpha=0.15, label=f"suggested {result.suggested[0]:.2g} – {result.suggested[1]:.2g}")
        ax.axvline(result.suggested_lr, color="C2", ls="--", label=f"steepest {result.suggested_lr:.2g}")
    multiplier = OPTIMIZERS[result.optimizer].adaptive_d
    ax.set_xlabel("lr multiplier of the adapted step d" if multiplier else "learning rate")
    loss = config.loss if config is not None else "loss"
    ax.set_ylabel(f"training loss ({loss})")
    ax.set_title(f"LR range test: {result.optimizer}" + (" (stopped: diverged)" if result.stopped_early else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    return path
