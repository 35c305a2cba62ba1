"""`fit`: train one model from one `TrainConfig` and say how it went.

Minibatch training on the chosen device with the loss read back once per epoch (no host sync
per step, apart from what D-Adaptation/Prodigy do inside their own step), validation after every
epoch, `report(epoch, value)` for pruning, divergence detection, best-validation weights (then, with
`shooting_iters`, their multiple-shooting fit: shooting.py; it is not pruned), and a run directory with the checkpoint (weights + full config) and a metrics JSON. Epochs count from 1;
history[0] is the untrained model's validation error (epoch 0).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from torch import nn

from .atomic import write_atomic
from .config import DTYPES as DTYPE_NAMES, TrainConfig
from .data import Splits, load_data, samples_per_trajectory, trajectory_windows
from .device import parse_device
from .errors import ConfigError
from .evaluate import evaluate, frozen, rollout_metrics
from .losses import LOSSES
from .metrics import relative_mse, relative_se_per_sample
from .models import build_model
from .rollout import rollout_loss
from .optim import adapted_d, build_optimizer, build_scheduler
from .provenance import versions

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # config.DTYPES names them (checked without torch)
CHECKPOINT_FORMAT = "dlnn-checkpoint/1"
LOSS_EXPLOSION_FACTOR = 1e4  # an epoch's training loss this far above the best so far counts as divergence
D_LIMIT = 1e3  # a D-Adaptation/Prodigy step-size estimate above this has run away
EVAL_BATCH = 4096

Report = Callable[[int, float], None]
Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FitResult:
    """What one run produced. `status` is "ok" or "diverged"; a diverged run has no checkpoint
    and only bookkeeping metrics (epochs, wall time, the best validation error before it broke)."""

    status: str
    diverged_epoch: int | None
    reason: str | None
    best_epoch: int | None
    epochs_run: int
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    checkpoint: str | None
    wall_time_s: float
    device: str
    config: dict[str, Any] = field(default_factory=dict)  # the full TrainConfig, as a dict

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ----------------------------------------------------------------------------- setup


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; a CUDA device that is not there is a config error."""
    device = parse_device(name)
    if device.kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", name, "'auto' or 'cpu' (CUDA is not available here)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError("device", name, [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    return torch.device(str(device))


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def build_seeded_model(config: TrainConfig, splits: Splits, device: torch.device) -> nn.Module:
    """The config's model, initialized from `config.seed` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):  # the model is built on the CPU, then moved
        torch.manual_seed(config.seed)
        model = build_model(config.model, splits.system, config.method)
    return model.to(device=device, dtype=DTYPES[config.dtype])


def _validate(model: nn.Module, q: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative q̈ MSE and its per-sample median on a state set already on the device (no sync)."""
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(q[i : i + EVAL_BATCH], v[i : i + EVAL_BATCH]) for i in range(0, len(q), EVAL_BATCH)])
    model.train()
    return relative_mse(pred, a), relative_se_per_sample(pred, a).median()


def _divergence(train_loss: float, best_loss: float, params_finite: bool, d: float | None, val: float) -> str | None:
    """Why this epoch counts as diverged, or None."""
    if not math.isfinite(train_loss):
        return f"training loss is {train_loss}"
    if not params_finite:
        return "parameters are not finite"
    if d is not None and not (math.isfinite(d) and d <= D_LIMIT):
        return f"adaptive step-size estimate d = {d:.3g} exploded (limit {D_LIMIT:g})"
    if math.isfinite(best_loss) and train_loss > LOSS_EXPLOSION_FACTOR * max(best_loss, 1e-30):
        return f"training loss {train_loss:.3g} exploded (best so far {best_loss:.3g})"
    if not math.isfinite(val):
        return f"validation error is {val}"
    return None


# ----------------------------------------------------------------------------- fit


def fit(
    config: TrainConfig,
    report: Report | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: Progress | None = None,
    cache_dir: str | os.PathLike | None = None,
    metrics: Collection[str] | None = None,
) -> FitResult:
    """Train the model `config` describes; see the module docstring. `report(epoch, val_rel_mse)`
    runs after every epoch and may raise to stop the run (the exception propagates, nothing is
    written); `progress(record)` receives each epoch's history record (for progress bars), then
    the final evaluation's {"phase": "evaluate", ...} records. `metrics`: the names the final
    evaluation must give (None: all; see `evaluate`)."""
    if not isinstance(config, TrainConfig):
        raise ConfigError("config", type(config).__name__, "a TrainConfig")
    start = time.perf_counter()
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    if config.data.file:  # what TrainConfig cannot check without reading the file (the batch against its split)
        from .file_dataset import check_train_config

        check_train_config(config)
    splits = load_data(config.data, config.data_seed, cache_dir)
    model = build_seeded_model(config, splits, device)
    q, v, a = splits.train.to_torch(dtype, device)
    val = splits.val.to_torch(dtype, device)
    count, batch = q.shape[0], min(config.batch_size, q.shape[0])
    steps = math.ceil(count / batch)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config.optimizer)
    schedule = build_scheduler(config.scheduler, optimizer, config.epochs, steps)
    order = torch.Generator(device=device).manual_seed(config.seed)
    step = TrainStep(config, model, optimizer, params, splits, order, dtype, device)

    initial = torch.stack(_validate(model, *val)).tolist()
    history: list[dict[str, Any]] = [{"epoch": 0, "train_loss": None, "val_rel_mse": initial[0], "val_rel_mse_median": initial[1],
                                      "lr": float(optimizer.param_groups[0]["lr"]), "time_s": time.perf_counter() - start}]
    best_val, best_epoch, best_state = math.inf, None, None
    best_loss = math.inf
    updates, epoch, reason = 0, 0, None
    model.train()
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(count, generator=order, device=device)
        loss_sum = torch.zeros((), dtype=dtype, device=device)
        for i in range(steps):
            idx = perm[i * batch : (i + 1) * batch]
            loss_sum += step(q[idx], v[idx], a[idx])
            updates += 1
            schedule.after_update(updates)
        # One read-back per epoch: loss, parameter health, validation error.
        val_mse, val_median = _validate(model, *val)
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
        values = torch.stack([loss_sum / steps, val_mse, val_median, finite.to(dtype)]).tolist()
        train_loss, val_rel, val_med, params_finite = values[0], values[1], values[2], bool(values[3])
        d = adapted_d(optimizer)
        record = {"epoch": epoch, "train_loss": train_loss, "val_rel_mse": val_rel, "val_rel_mse_median": val_med,
                  "lr": float(optimizer.param_groups[0]["lr"]), "time_s": time.perf_counter() - start}
        if d is not None:
            record["d"] = d
        history.append(record)
        if progress is not None:
            progress(record)
        reason = _divergence(train_loss, best_loss, params_finite, d, val_rel)
        if reason is not None:
            break
        best_loss = min(best_loss, train_loss)
        if val_rel < best_val:
            best_val, best_epoch = val_rel, epoch
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        schedule.after_epoch(epoch, val_rel)
        if report is not None:
            report(epoch, val_rel)

    if reason is not None:
        return _diverged(config, epoch, reason, best_val, best_epoch, history, device, start, out_dir)
    model.load_state_dict(best_state)
    if config.shooting_iters:
        history.append(_shoot(config, model, q, v, splits, progress))
    results = _final_metrics(model, splits, dtype, device, progress, metrics)
    results.update(epochs=float(epoch), best_epoch=float(best_epoch))
    wall = time.perf_counter() - start
    results["wall_time_s"] = wall
    checkpoint = None
    result = FitResult("ok", None, None, best_epoch, epoch, results, history, None, wall, describe_device(device), config.to_dict())
    if out_dir is not None:
        checkpoint = str(_write_run(Path(out_dir), model, config, result))
        result = replace(result, checkpoint=checkpoint)
    return result


class TrainStep:
    """One optimizer step on a minibatch, as every training loop takes it (fit, lr_find): the
    config's loss, plus its rollout loss on `rollout_batch` random training windows (default: one per
    minibatch sample) when rollout_horizon > 0 (drawn from `order`, the run's generator), backward, gradient clipping, step."""

    def __init__(self, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                 splits: Splits, order: torch.Generator, dtype: torch.dtype, device: torch.device):
        self.config, self.model, self.optimizer, self.params, self.order = config, model, optimizer, params, order
        self.loss_fn = LOSSES[config.loss]
        self.windows = _rollout_windows(config, splits, dtype, device)
        self.dt, self.angles, self.device = 1.0 / config.data.rate_hz, splits.system.angles, device

    def __call__(self, q: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Take the step; returns its loss, detached (on the device: no host sync)."""
        loss = self.loss_fn(self.model(q, v), a)
        if self.windows is not None:
            count = self.config.rollout_batch or len(q)
            w = torch.randint(self.windows[0].shape[0], (count,), generator=self.order, device=self.device)
            loss = loss + self.config.rollout_weight * rollout_loss(self.model, *(x[w] for x in self.windows), self.dt, self.angles,
                                                                    self.config.rollout_integrator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        return loss.detach()


def _rollout_windows(config: TrainConfig, splits: Splits, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...] | None:
    """(q₀, q̇₀, next k q, next k q̇) windows of the observed training trajectories, on the device."""
    if not config.rollout_horizon:
        return None
    arrays = trajectory_windows(splits.train, samples_per_trajectory(config.data), config.rollout_horizon)
    return tuple(torch.as_tensor(x, dtype=dtype, device=device) for x in arrays)


def _shoot(config: TrainConfig, model: nn.Module, q: torch.Tensor, v: torch.Tensor, splits: Splits, progress: Progress | None) -> dict[str, Any]:
    """The multiple-shooting fit of the trained model to the training trajectories' measured angles
    (shooting.py), its segments starting from the estimated states, keeping the weights with the best
    validation rollouts when `shooting_check` > 0: its history record."""
    from .shooting import polish

    per, n = samples_per_trajectory(config.data), q.shape[1]
    measured = splits.train.observed
    observed = None if measured is None else torch.as_tensor(measured, dtype=q.dtype, device=q.device).reshape(-1, per, n)
    return polish(model, q.reshape(-1, per, n), v.reshape(-1, per, n), 1.0 / config.data.rate_hz, config.shooting_segment,
                  config.shooting_iters, splits.system.angles, progress, observed=observed,
                  score=lambda: _val_valid_steps(model, splits, q.dtype, q.device), check_every=config.shooting_check)


def _val_valid_steps(model: nn.Module, splits: Splits, dtype: torch.dtype, device: torch.device) -> float:
    """What `shooting_check` selects on: the validation rollouts' valid steps, as evaluate scores them."""
    with frozen(model):
        return rollout_metrics(model, splits, ("val",), dtype, device)["val_valid_steps"]


def _final_metrics(model: nn.Module, splits: Splits, dtype: torch.dtype, device: torch.device, progress: Progress | None = None,
                   metrics: Collection[str] | None = None) -> dict[str, float]:
    """`evaluate`, its progress reaching `progress` as {"phase": "evaluate", "stage", "done", "total"} records."""
    relay = None
    if progress is not None:
        relay = lambda stage, done, total: progress({"phase": "evaluate", "stage": stage, "done": done, "total": total})  # noqa: E731
    return evaluate(model, splits, dtype, device, metrics=metrics, progress=relay)


def _diverged(config, epoch, reason, best_val, best_epoch, history, device, start, out_dir) -> FitResult:
    """A diverged run: no checkpoint, no metrics.json; a `diverged.json` note says what happened."""
    wall = time.perf_counter() - start
    metrics = {"epochs": float(epoch), "wall_time_s": wall}
    if best_epoch is not None:
        metrics["best_val_rel_mse"] = best_val
    result = FitResult("diverged", epoch, reason, best_epoch, epoch, metrics, history, None, wall, describe_device(device), config.to_dict())
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _atomic_text(out / "diverged.json", json.dumps(_summary(result), indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- files


def _summary(result: FitResult) -> dict[str, Any]:
    return {
        "status": result.status, "diverged_epoch": result.diverged_epoch, "reason": result.reason,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "metrics": result.metrics,
        "wall_time_s": result.wall_time_s, "device": result.device, "versions": versions(),
        "config": result.config, "history": result.history,
    }


def _atomic_text(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()), durable=False)


def _write_run(out: Path, model: nn.Module, config: TrainConfig, result: FitResult) -> Path:
    """model.pt (weights + full config + metrics), config.json, then metrics.json last: its
    presence marks a finished, successful run."""
    from .config import save_config

    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.pt"
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "state_dict": {k: t.detach().cpu() for k, t in model.state_dict().items()},
        "metrics": result.metrics,
        "best_epoch": result.best_epoch,
        "versions": versions(),
    }
    write_atomic(path, lambda f: torch.save(payload, f), suffix=".pt.tmp", durable=False)
    save_config(config, out / "config.json")
    _atomic_text(out / "metrics.json", json.dumps({**_summary(result), "checkpoint": str(path)}, indent=2) + "\n")
    return path


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """(model with the saved weights, its TrainConfig, the raw payload) from a `model.pt`."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError("checkpoint", str(path), f"a {CHECKPOINT_FORMAT} file written by fit")
    config = TrainConfig.from_dict(payload["config"])
    system = config.data.make_system()
    target = resolve_device(device)
    model = build_model(config.model, system, config.method).to(dtype=DTYPES[config.dtype])
    model.load_state_dict(payload["state_dict"])
    return model.to(target), config, payload


def evaluate_checkpoint(path: str | os.PathLike, device: str = "cpu", cache_dir: str | os.PathLike | None = None,
                        metrics: Collection[str] | None = None) -> dict[str, float]:
    """Reload a checkpoint and evaluate it on its config's data: the same metrics `fit` reported
    (without the run bookkeeping: epochs, best_epoch, wall_time_s); `metrics` as in `evaluate`."""
    model, config, _ = load_checkpoint(path, device)
    splits = load_data(config.data, config.data_seed, cache_dir)
    return _final_metrics(model, splits, DTYPES[config.dtype], resolve_device(device), metrics=metrics)
