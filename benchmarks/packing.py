"""Packed trials (`dlnn_core.pack`) against the same trials stepped one after another, in one run.

1. Stacked weights with batched matmuls (what `fit_pack` does) against `torch.func.stack_module_state`
   + `vmap` over `functional_call`, the other way to batch K models, for K = 8.
2. Training-step time per trial against K for each shipped spec's typical trial: the pack's own step
   (`pack.train_step`: K models, K optimizers) against `fit`'s step run for each of the K models in
   turn, interleaved (packed, then one after another, repeated) so that both see the same machine.
3. End to end: `fit_pack` of K trials of `studies/pendulum_answers.toml`'s baseline config (seeds and
   learning rates differ) against the K `fit`s one after another: trials per hour, evaluation included.

    flock /tmp/heavy.lock python benchmarks/packing.py [--ks 1,2,4,8,16,32] [--budget-s 480] [--out benchmarks/results/packing.md]

Every measurement is bounded: a K whose sequential step would not fit the remaining time of its spec
is skipped and says so.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from dlnn_core.config import TrainConfig
from dlnn_core.losses import LOSSES
from dlnn_core.pack import fit_pack, member, packed_model, train_step
from dlnn_core.systems import get_system
from dlnn_core.train import fit

# Each spec's typical trial: its baseline or fixed settings where it has them, else the middle of its space.
TYPICAL: dict[str, dict] = {
    "quick": {"data.system": "damped_pendulum", "model.form": "structured", "model.hidden": 32, "model.depth": 2, "batch_size": 64},
    "pendulum_answers": {"data.system": "damped_pendulum", "model.form": "structured", "model.hidden": 128, "model.depth": 2, "batch_size": 128},
    "optimizer_shootout": {"data.system": "damped_pendulum", "model.form": "structured", "model.hidden": 128, "model.depth": 2, "batch_size": 256},
    "rollout_vs_time": {"data.system": "damped_pendulum", "model.form": "structured", "model.hidden": 256, "model.depth": 2, "batch_size": 512},
    "damped_pendulum": {"data.system": "damped_pendulum", "model.form": "structured", "model.hidden": 256, "model.depth": 3, "batch_size": 256},
    "damped_double_pendulum": {"data.system": "damped_double_pendulum", "model.form": "free", "model.hidden": 320, "model.depth": 3,
                               "batch_size": 512},
}


def _config(flat: dict, seed: int, device: str) -> TrainConfig:
    return TrainConfig().with_flat({"model.activation": "swish", "optimizer.name": "adam", "optimizer.lr": 1e-3 * (1 + seed % 3),
                                    "device": device, **flat, "seed": seed})


def _members(flat: dict, k: int, device: str, count: int):
    configs = [_config(flat, seed, device) for seed in range(k)]
    splits = SimpleNamespace(system=configs[0].data.make_system())  # build_seeded_model reads only the system
    return [member(i, c, splits, torch.device(device), 1) for i, c in enumerate(configs)]


def _states(flat: dict, count: int, device: str):
    n = get_system(flat["data.system"]).n
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(count, n, generator=g).to(device) for _ in range(3))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_times(flat: dict, k: int, steps: int, reps: int, device: str) -> tuple[float, float]:
    """(packed, one after another) seconds per training step of all K trials, medians over `reps`
    interleaved repetitions of `steps` steps each, after one warm-up step of each."""
    batch = flat["batch_size"]
    q, v, a = _states(flat, 4 * batch, device)
    packed_members, alone_members = _members(flat, k, device, len(q)), _members(flat, k, device, len(q))
    shell = packed_model([m.model for m in packed_members])
    g = torch.Generator(device=device).manual_seed(1)
    loss_fn = LOSSES["mse"]

    def packed() -> None:
        idx = torch.stack([torch.randperm(len(q), generator=g, device=device)[:batch] for _ in packed_members])
        train_step(shell, packed_members, q, v, a, idx)

    def alone() -> None:  # fit's step, per model
        for m in alone_members:
            idx = torch.randperm(len(q), generator=g, device=device)[:batch]
            loss = loss_fn(m.model(q[idx], v[idx]), a[idx])
            m.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            m.optimizer.step()

    times: dict[str, list[float]] = {"packed": [], "alone": []}
    packed(), alone()
    for _ in range(reps):
        for name, fn in (("packed", packed), ("alone", alone)):
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return statistics.median(times["packed"]), statistics.median(times["alone"])


def vmap_vs_stacked(flat: dict, k: int, steps: int, device: str) -> dict[str, float | str]:
    """Seconds per step of K models' forward + backward through q̈: stacked (autograd method, as
    `fit_pack`) and vmap over functional_call (which needs the jvp method: torch.autograd.grad does
    not run under vmap)."""
    from torch.func import functional_call, stack_module_state, vmap

    out: dict[str, float | str] = {}
    batch = flat["batch_size"]
    q, v, a = _states(flat, k * batch, device)
    for method in ("autograd", "jvp"):
        models = [m.model for m in _members({**flat, "method": method}, k, device, batch)]
        shell = packed_model(models)
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        qk, vk, ak = (x.view(k, batch, -1) for x in (q, v, a))

        def stacked() -> None:
            for m in models:
                m.zero_grad(set_to_none=True)
            (shell(q, v).view(k, batch, -1) - ak).square().mean((1, 2)).sum().backward()

        def one(p, b, qq, vv, aa):
            return (functional_call(base, (p, b), (qq, vv)) - aa).square().mean()

        def vmapped() -> None:
            for p in params.values():
                p.grad = None
            vmap(one)(params, buffers, qk, vk, ak).sum().backward()

        for name, fn in (("stacked", stacked), ("vmap", vmapped)):
            try:
                fn()
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                _sync(device)
                out[f"{name}, {method}"] = (time.perf_counter() - start) / steps
            except Exception as error:  # noqa: BLE001 (a failing combination is a result)
                out[f"{name}, {method}"] = f"fails ({type(error).__name__}: {str(error).splitlines()[0][:90]})"
    return out


def end_to_end(k: int, device: str) -> tuple[float, float, float]:
    """(seconds for K fits one after another, seconds for fit_pack of the K, largest relative
    difference of their val_rel_mse) for pendulum_answers' baseline config, K seeds and lrs."""
    from dlnn_studies.spec.schema import load_spec  # the service reads the spec; dlnn_core never does

    base = load_spec("studies/pendulum_answers.toml").baselines[0].config.with_flat({"device": device})
    configs = [base.with_flat({"seed": s, "optimizer.lr": 1e-3 * (1 + s % 3)}) for s in range(k)]
    fit(configs[0].with_flat({"epochs": 1}))  # data cache and imports warm
    start = time.perf_counter()
    alone = [fit(c) for c in configs]
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    packed = fit_pack(configs)
    pack_s = time.perf_counter() - start
    diff = max(abs(p.metrics["val_rel_mse"] - s.metrics["val_rel_mse"]) / abs(s.metrics["val_rel_mse"]) for p, s in zip(packed, alone))
    return sequential, pack_s, diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4,8,16,32")
    parser.add_argument("--specs", default=",".join(TYPICAL))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock bound of part 2, split evenly between the specs")
    parser.add_argument("--end-to-end-k", type=int, default=8, help="0 skips part 3")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="write the Markdown here as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    specs = args.specs.split(",")
    lines = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s); Adam, float32, swish.", ""]

    parts = {int(p) for p in args.parts.split(",")}
    if 1 in parts:
        lines += ["## 1. Stacked weights (batched matmuls) against `stack_module_state` + `vmap`, K = 8", "",
                  "ms per forward + backward through q̈ of 8 models.", "",
                  "| trial | stacked, autograd | vmap, autograd | stacked, jvp | vmap, jvp |", "|---|---|---|---|---|"]
        for spec in ("pendulum_answers", "damped_double_pendulum"):
            flat = {**TYPICAL[spec], "batch_size": min(TYPICAL[spec]["batch_size"], 128)}
            res = vmap_vs_stacked(flat, 8, args.steps, args.device)
            cells = [f"{x * 1e3:.1f}" if isinstance(x, float) else x for x in
                     (res["stacked, autograd"], res["vmap, autograd"], res["stacked, jvp"], res["vmap, jvp"])]
            row = f"| {spec} ({flat['model.form']} {flat['model.hidden']}×{flat['model.depth']}, batch {flat['batch_size']}) | " + " | ".join(cells) + " |"
            print(row, flush=True)
            lines.append(row)
        lines.append("")

    if 2 in parts:
        lines += ["## 2. Training-step time per trial against K", "",
                  "ms per trial per step (all K trials' step divided by K): packed, and the same K stepped one after another; "
                  "speed-up = one after another / packed.", "",
                  "| spec (typical trial) | K | packed ms/trial | one after another ms/trial | speed-up |", "|---|---|---|---|---|"]
        per_spec = args.budget_s / len(specs)
        for spec in specs:
            flat = TYPICAL[spec]
            label = f"{spec} ({flat['model.form']} {flat['model.hidden']}×{flat['model.depth']}, batch {flat['batch_size']})"
            spent, last_alone, last_k = 0.0, None, 1
            for k in ks:
                if last_alone is not None and last_alone / last_k * k * 2 * (args.steps * args.reps + 1) > per_spec - spent:
                    row = f"| {label} | {k} | skipped: would not fit its {per_spec:.0f} s | | |"
                else:
                    start = time.perf_counter()
                    packed, alone = step_times(flat, k, args.steps, args.reps, args.device)
                    spent += time.perf_counter() - start
                    last_alone, last_k = alone, k
                    row = f"| {label} | {k} | {packed / k * 1e3:.2f} | {alone / k * 1e3:.2f} | {alone / packed:.2f}× |"
                print(row, flush=True)
                lines.append(row)
        lines.append("")

    if 3 in parts and args.end_to_end_k:
        k = args.end_to_end_k
        sequential, pack_s, diff = end_to_end(k, args.device)
        lines += [f"## 3. End to end: {k} trials of pendulum_answers' baseline config (24 epochs, evaluation included)", "",
                  "| | seconds | trials per hour |", "|---|---|---|",
                  f"| {k} × fit, one after another | {sequential:.1f} | {k * 3600 / sequential:.0f} |",
                  f"| fit_pack of {k} | {pack_s:.1f} | {k * 3600 / pack_s:.0f} |", "",
                  f"Speed-up {sequential / pack_s:.2f}×; largest relative difference of a trial's val_rel_mse, packed against alone: {diff:.1e}."]
        print("\n".join(lines[-8:]), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
