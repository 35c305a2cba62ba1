"""What the multi-step (rollout) loss costs per training step against the q̈ loss alone, by window
count (rollout_batch), horizon and integrator, on the noisy double pendulum's typical trial
(structured DLNN 128×2, batch 256). Each setting's step is timed in turns within one process (one
torch thread), so every ratio compares steps that saw the same machine.

    flock /tmp/heavy.lock python benchmarks/rollout_cost.py [--repeats 5] [--out benchmarks/results/rollout_cost.md]
"""

from __future__ import annotations

import argparse
import sys
import statistics
import time
from pathlib import Path

import torch

from dlnn_core.config import TrainConfig
from dlnn_core.data import load_data
from dlnn_core.optim import build_optimizer
from dlnn_core.train import TrainStep, build_seeded_model

BASE = {"data.system": "damped_double_pendulum", "data.kind": "trajectories", "data.n_train": 24, "data.n_val": 8, "data.n_test": 8,
        "data.n_rollout": 8, "data.rollout_steps": 500, "data.rate_hz": 50.0, "data.noise": 0.01, "data.derivatives": "savgol",
        "model.kind": "dlnn", "model.form": "structured", "model.hidden": 128, "model.depth": 2, "model.activation": "swish",
        "optimizer.name": "adam", "optimizer.lr": 1e-3, "batch_size": 256, "device": "cpu"}
SETTINGS = {  # label -> overrides; "per sample" is the default before rollout_batch existed (one window per minibatch sample)
    "q̈ loss only": {},
    "k = 4, rk4, per sample (256 windows)": {"rollout_horizon": 4},
    "k = 8, rk4, per sample (256 windows)": {"rollout_horizon": 8},
    "k = 8, rk4, 64 windows": {"rollout_horizon": 8, "rollout_batch": 64},
    "k = 4, rk4, 64 windows": {"rollout_horizon": 4, "rollout_batch": 64},
    "k = 4, rk4, 16 windows": {"rollout_horizon": 4, "rollout_batch": 16},
    "k = 4, midpoint, 16 windows": {"rollout_horizon": 4, "rollout_batch": 16, "rollout_integrator": "midpoint"},
    "k = 4, euler, 16 windows": {"rollout_horizon": 4, "rollout_batch": 16, "rollout_integrator": "euler"},
    "k = 8, midpoint, 16 windows": {"rollout_horizon": 8, "rollout_batch": 16, "rollout_integrator": "midpoint"},
    "k = 4, trapezoid, 16 windows": {"rollout_horizon": 4, "rollout_batch": 16, "rollout_integrator": "trapezoid"},
    "k = 8, trapezoid, 64 windows": {"rollout_horizon": 8, "rollout_batch": 64, "rollout_integrator": "trapezoid"},
}


def stepper(overrides: dict) -> tuple[TrainStep, torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator]:
    config = TrainConfig().with_flat({**BASE, **overrides})
    splits = load_data(config.data, config.data_seed)
    device, dtype = torch.device("cpu"), torch.float32
    model = build_seeded_model(config, splits, device)
    params = [p for p in model.parameters() if p.requires_grad]
    order = torch.Generator().manual_seed(0)
    step = TrainStep(config, model, build_optimizer(params, config.optimizer), params, splits, order, dtype, device)
    q, v, a = splits.train.to_torch(dtype, device)
    return step, q, v, a, order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="turns; each turn times STEPS steps of every setting")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steppers = {label: stepper(o) for label, o in SETTINGS.items()}
    times: dict[str, list[float]] = {label: [] for label in SETTINGS}
    for _ in range(args.repeats):
        for label, (step, q, v, a, order) in steppers.items():
            idx = torch.randint(len(q), (256,), generator=order)
            step(q[idx], v[idx], a[idx])  # warm: allocations of this shape
            start = time.perf_counter()
            for _ in range(args.steps):
                idx = torch.randint(len(q), (256,), generator=order)
                step(q[idx], v[idx], a[idx])
            times[label].append((time.perf_counter() - start) / args.steps * 1e3)
    base = statistics.median(times["q̈ loss only"])
    lines = [f"ms per training step (median of {args.repeats} turns of {args.steps} steps; one torch thread, torch {torch.__version__}), "
             "and the ratio to the q̈ loss alone in the same run.", "",
             "| setting | ms / step | range | × q̈ loss |", "|---|---|---|---|"]
    for label, ts in times.items():
        lines.append(f"| {label} | {statistics.median(ts):.1f} | {min(ts):.1f}–{max(ts):.1f} | {statistics.median(ts) / base:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(f"# The multi-step loss's cost (`benchmarks/rollout_cost.py`)\n\n    python benchmarks/rollout_cost.py {' '.join(sys.argv[1:])}\n\n{text}\n")


if __name__ == "__main__":
    main()
