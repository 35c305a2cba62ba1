"""`fit_pack`: train K trials that share a model structure, batch size, data and epochs as one
batched program, each trial with its own seed (initial weights and data order), optimizer and its
state, learning-rate schedule, loss and gradient clipping, and each giving the metrics `fit` gives
it alone, to float tolerance.

How: every trial keeps its own model, built exactly as `fit` builds it. A shell model of the same
structure replaces each MLP by a `PackedMLP` that stacks the members' weights on every call and runs
one batched matmul per layer over the rows of all trials (trial k owns rows k·B … (k+1)·B − 1). The
Euler–Lagrange solve, the features and the Cholesky factors act row by row, so they run unchanged on
K·B rows, and the sum of the trials' losses gives each trial's parameters exactly its own gradient.
Because the trials' parameters stay their own leaves, each trial's optimizer is the registry's own
class (its sync-free form where `OptimInfo.sync_free` names one), and a trial that diverges, is
pruned or runs out of time simply leaves the pack: the next step stacks the others."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch
from torch import nn

from .config import TrainConfig
from .data import load_data
from .errors import ConfigError
from .losses import LOSSES
from .metrics import relative_mse, relative_se_per_sample
from .optim import adapted_d, build_optimizer, build_scheduler
from .train import (
    DTYPES, EVAL_BATCH, FitResult, Progress, Report, _diverged, _divergence, _final_metrics, _write_run, build_seeded_model,
    describe_device, resolve_device,
)

# The TrainConfig fields a trial of a pack may set for itself; every other field is the pack's.
PER_TRIAL = ("seed", "optimizer", "scheduler", "loss", "grad_clip")


class PackedMLP(nn.Module):
    """The members' MLPs (one shape: Linear, activation, …, Linear) as one module on [K·B, d] rows:
    one batched matmul per layer over weights stacked from the members' own Linears on every call,
    so gradients reach each member's parameters and members can leave between calls."""

    def __init__(self, members: Sequence[nn.Sequential]):
        super().__init__()
        self._members = tuple(members)  # a tuple, not submodules: the parameters belong to the trials' own models
        self._layers = tuple(members[0])  # the activations are parameter-free and the same in every member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(len(self._members), -1, x.shape[-1])
        for i, layer in enumerate(self._layers):
            if isinstance(layer, nn.Linear):
                weight = torch.stack([m[i].weight for m in self._members])  # [K, out, in]
                bias = torch.stack([m[i].bias for m in self._members]).unsqueeze(1)  # [K, 1, out]
                h = torch.baddbmm(bias, h, weight.mT)
            else:
                h = layer(h)
        return h.reshape(-1, h.shape[-1])


def packed_model(models: Sequence[nn.Module]) -> nn.Module:
    """A module (q, q̇) [K·B, n] -> q̈ [K·B, n] computing model k on the k-th block of B rows. The
    models must have one structure (same `pack_key`); the shell holds no parameters of its own."""
    shell = copy.deepcopy(models[0])
    for name, module in list(shell.named_modules()):
        if isinstance(module, nn.Sequential):
            parent, _, attr = name.rpartition(".")
            setattr(shell.get_submodule(parent) if parent else shell, attr, PackedMLP([m.get_submodule(name) for m in models]))
    if any(True for _ in shell.parameters()):
        raise ConfigError("model", type(models[0]).__name__, "a model whose parameters all sit in MLPs (nn.Sequential)")
    return shell


def pack_key(config: TrainConfig) -> str | None:
    """Trials with equal keys can share one pack: everything but `PER_TRIAL` is equal. None: this
    config cannot be packed (a rollout loss draws windows by a second random stream per step; shooting
    is a full-batch L-BFGS fit of its own after the epochs)."""
    if config.rollout_horizon or config.shooting_iters:
        return None
    shared = {k: v for k, v in config.to_dict().items() if k not in PER_TRIAL}
    return json.dumps(shared, sort_keys=True, default=str)


@dataclass
class _Member:
    """One trial's training state inside a pack: its own epoch and update counts, since a trial that
    joins a running pack (`refill`) starts where the others are in the middle of theirs."""

    index: int
    config: TrainConfig
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: Any
    order: torch.Generator
    start: float = field(default_factory=time.perf_counter)
    epoch: int = 0
    updates: int = 0
    perm: torch.Tensor | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_loss: float = math.inf


@dataclass(frozen=True)
class Joiner:
    """A trial that joins a running pack where a member left: what `fit_pack` takes per trial."""

    config: TrainConfig
    report: Report | None = None
    out_dir: str | os.PathLike | None = None
    progress: Progress | None = None


def member(index: int, config: TrainConfig, splits, device: torch.device, steps: int) -> _Member:
    """Trial `index`'s model, optimizer (sync-free form), schedule and data-order generator, each as `fit` builds them."""
    model = build_seeded_model(config, splits, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, config.optimizer, sync_free=True)
    return _Member(index, config, model, params, optimizer, build_scheduler(config.scheduler, optimizer, config.epochs, steps),
                   torch.Generator(device=device).manual_seed(config.seed))


def _check_pack(configs: Sequence[TrainConfig]) -> None:
    if not configs:
        raise ConfigError("configs", "[]", "at least one TrainConfig")
    keys = [pack_key(c) if isinstance(c, TrainConfig) else None for c in configs]
    if keys[0] is None or any(k != keys[0] for k in keys):
        bad = next(i for i, k in enumerate(keys) if k is None or k != keys[0])
        raise ConfigError(f"configs[{bad}]", "differs from configs[0]" if keys[bad] else "not packable",
                          f"TrainConfigs equal in everything but {', '.join(PER_TRIAL)} and without a rollout loss")


_ROWS: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def _losses(members: Sequence[_Member], pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Each member's loss [K] from pred, true [K, B, n]: one vmapped call per loss form."""
    names = [m.config.loss for m in members]
    if len(set(names)) == 1:
        return torch.vmap(LOSSES[names[0]])(pred, true)
    out: list[torch.Tensor | None] = [None] * len(members)
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        key = (tuple(rows), pred.device)
        index = _ROWS.get(key)
        if index is None:  # built once per membership, not copied to the device on every step
            index = _ROWS[key] = torch.tensor(rows, device=pred.device)
        for i, value in zip(rows, torch.vmap(LOSSES[name])(pred[index], true[index])):
            out[i] = value
    return torch.stack(out)  # type: ignore[arg-type]


def train_step(shell: nn.Module, members: Sequence[_Member], q: torch.Tensor, v: torch.Tensor, a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One update of every member on its own minibatch (row k of idx [K, B]), as `fit` does one:
    forward, loss, backward, clipping, optimizer step, schedule. Returns the losses [K], detached."""
    k, b = idx.shape
    pred = shell(q[idx].view(k * b, -1), v[idx].view(k * b, -1)).view(k, b, -1)
    losses = _losses(members, pred, a[idx])
    for m in members:
        m.optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    for m in members:
        if m.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(m.params, m.config.grad_clip)
        m.optimizer.step()
        m.updates += 1
        m.schedule.after_update(m.updates)
    return losses.detach()


def _validate(shell: nn.Module, k: int, q: torch.Tensor, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """[K, 2]: each member's relative q̈ MSE and per-sample median on the validation states (no sync)."""
    chunk = max(256, EVAL_BATCH // k)
    with torch.no_grad():
        parts = []
        for i in range(0, len(q), chunk):
            qs, vs = q[i : i + chunk], v[i : i + chunk]
            parts.append(shell(qs.repeat(k, 1), vs.repeat(k, 1)).view(k, len(qs), -1))
        pred = torch.cat(parts, dim=1)
    return torch.stack([torch.stack([relative_mse(p, a), relative_se_per_sample(p, a).median()]) for p in pred])


def fit_pack(
    configs: Sequence[TrainConfig],
    reports: Sequence[Report | None] | None = None,
    out_dirs: Sequence[str | os.PathLike | None] | None = None,
    *,
    progress: Sequence[Progress | None] | None = None,
    cache_dir: str | os.PathLike | None = None,
    metrics: Collection[str] | None = None,
    size: int | None = None,
    refill: Callable[[int], Sequence[Joiner]] | None = None,
    finished: Callable[[int, FitResult | Exception], None] | None = None,
) -> list[FitResult | Exception]:
    """Train the trials `configs` describe as one pack (see the module docstring); entry k of each
    sequence is trial k's. Returns, per trial, its `FitResult` (ok or diverged, as `fit` would), or
    the Exception its `report` raised (pruning, a timeout), which removed it from the pack at that
    epoch with nothing written. A BaseException that is not an Exception (KeyboardInterrupt,
    SystemExit from SIGTERM) stops the whole pack and propagates.

    Refill: at every epoch's end where fewer than `size` (default: len(configs)) trials train,
    `refill(free)` may hand over up to `free` `Joiner`s of the same structure, which start their
    own first epoch there; they are numbered after `configs`, in the order given, and a joiner of
    another structure gets a ConfigError as its outcome. `finished(k, outcome)` hears each trial's
    outcome as it leaves. A trial's `wall_time_s` is the pack's time from that trial's start (the
    pack's for `configs`, its join for a joiner) to its end, other trials' evaluations included."""
    _check_pack(configs)
    size = max(size or len(configs), len(configs))
    initial = [Joiner(c, r, o, p) for c, r, o, p in zip(configs, *(_per_trial(x, len(configs), name) for x, name in (
        (reports, "reports"), (out_dirs, "out_dirs"), (progress, "progress"))))]
    start = time.perf_counter()
    first = configs[0]
    key = pack_key(first)
    device, dtype = resolve_device(first.device), DTYPES[first.dtype]
    if first.data.file:
        from .file_dataset import check_train_config

        check_train_config(first)
    splits = load_data(first.data, first.data_seed, cache_dir)
    q, v, a = splits.train.to_torch(dtype, device)
    val = splits.val.to_torch(dtype, device)
    count, batch = q.shape[0], min(first.batch_size, q.shape[0])
    steps = math.ceil(count / batch)

    entries: list[Joiner] = []  # every trial of the pack, by index: configs first, then joiners
    outcomes: list[FitResult | Exception | None] = []
    active: list[_Member] = []

    def leave(m: _Member, outcome: FitResult | Exception) -> None:
        active.remove(m)
        outcomes[m.index] = outcome
        if finished is not None:
            finished(m.index, outcome)

    def join(new: Sequence[Joiner]) -> None:
        """Each joiner's model, optimizer and epoch-0 validation, as `fit` starts a run."""
        members = []
        for entry in new:
            entries.append(entry)
            outcomes.append(None)
            if pack_key(entry.config) != key:
                outcomes[-1] = ConfigError(f"trial {len(outcomes) - 1}", "another structure",
                                           f"a TrainConfig equal to the pack's in everything but {', '.join(PER_TRIAL)}")
                if finished is not None:
                    finished(len(outcomes) - 1, outcomes[-1])
                continue
            members.append(member(len(outcomes) - 1, entry.config, splits, device, steps))
        if not members:
            return
        values = _validate(packed_model([m.model for m in members]), len(members), *val).tolist()
        for m, (val_rel, val_med) in zip(members, values):
            m.history.append({"epoch": 0, "train_loss": None, "val_rel_mse": val_rel, "val_rel_mse_median": val_med,
                              "lr": float(m.optimizer.param_groups[0]["lr"]), "time_s": time.perf_counter() - m.start})
        active.extend(members)

    join(initial)
    for m in active:
        m.start = start  # the pack's first trials count its data loading, as `fit` counts its own
    shell, in_shell = None, None
    while active:
        if in_shell != [m.index for m in active]:  # rebuilt only when a trial left or joined
            shell, in_shell = packed_model([m.model for m in active]), [m.index for m in active]
        for m in active:
            m.perm = torch.randperm(count, generator=m.order, device=device)
        loss_sum = torch.zeros(len(active), dtype=dtype, device=device)
        for i in range(steps):
            idx = torch.stack([m.perm[i * batch : (i + 1) * batch] for m in active])  # type: ignore[index]
            loss_sum += train_step(shell, active, q, v, a, idx)
        # One read-back per epoch for the whole pack: losses, validation errors, parameter health.
        validation = _validate(shell, len(active), *val)
        finite = torch.stack([torch.stack([torch.isfinite(p).all() for p in m.params]).all() for m in active]).to(dtype)
        values = torch.cat([(loss_sum / steps)[:, None], validation, finite[:, None]], dim=1).tolist()
        for m, row in zip(list(active), values):
            outcome = _end_epoch(m, entries[m.index], row, device, splits, dtype, metrics)
            if outcome is not None:
                leave(m, outcome)
        if refill is not None and len(active) < size:
            join(refill(size - len(active)))
    return outcomes  # type: ignore[return-value]


def _per_trial(values: Sequence[Any] | None, count: int, name: str) -> list[Any]:
    values = list(values) if values is not None else [None] * count
    if len(values) != count:
        raise ConfigError(name, len(values), f"{count} entries, one per config")
    return values


def _end_epoch(m: _Member, entry: Joiner, row: Sequence[float], device: torch.device, splits, dtype: torch.dtype,
               metrics: Collection[str] | None) -> FitResult | Exception | None:
    """Member `m`'s end of epoch, as `fit` ends one: its record, divergence, best state, schedule,
    report; its outcome if it leaves the pack here (diverged, stopped by its report, or done)."""
    train_loss, val_rel, val_med, params_finite = row
    m.epoch += 1
    d = adapted_d(m.optimizer)
    record = {"epoch": m.epoch, "train_loss": train_loss, "val_rel_mse": val_rel, "val_rel_mse_median": val_med,
              "lr": float(m.optimizer.param_groups[0]["lr"]), "time_s": time.perf_counter() - m.start}
    if d is not None:
        record["d"] = d
    m.history.append(record)
    if entry.progress is not None:
        entry.progress(record)
    reason = _divergence(train_loss, m.best_loss, bool(params_finite), d, val_rel)
    if reason is not None:
        return _diverged(m.config, m.epoch, reason, m.best_val, m.best_epoch, m.history, device, m.start, entry.out_dir)
    m.best_loss = min(m.best_loss, train_loss)
    if val_rel < m.best_val:
        m.best_val, m.best_epoch = val_rel, m.epoch
        m.best_state = {key: t.detach().clone() for key, t in m.model.state_dict().items()}
    m.schedule.after_epoch(m.epoch, val_rel)
    if entry.report is not None:
        try:
            entry.report(m.epoch, val_rel)
        except Exception as stop:  # pruned or out of time: this trial leaves, the others go on
            return stop
    if m.epoch < m.config.epochs:
        return None
    m.model.load_state_dict(m.best_state)
    results = _final_metrics(m.model, splits, dtype, device, entry.progress, metrics)
    results.update(epochs=float(m.epoch), best_epoch=float(m.best_epoch))
    wall = time.perf_counter() - m.start
    results["wall_time_s"] = wall
    result = FitResult("ok", None, None, m.best_epoch, m.epoch, results, m.history, None, wall, describe_device(device), m.config.to_dict())
    if entry.out_dir is not None:
        result = replace(result, checkpoint=str(_write_run(Path(entry.out_dir), m.model, m.config, result)))
    return result
