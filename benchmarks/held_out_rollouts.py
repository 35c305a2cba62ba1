"""Probe (issue 27): how sure is a test_valid_steps figure read off 8 rollouts of a chaotic system?
Re-scores trained runs (`dlnn train --out DIR`) on N fresh held-out test rollouts of their own data
(`data.n_rollout = N`: the rollouts have their own random stream, so the training, validation and test
states are the ones the run trained and selected on), and gives each run's valid steps per rollout:
mean, standard error, median, quartiles. Runs given as LABEL=DIR,DIR,... are pooled per label, and every
label is compared with the first (the baseline) rollout for rollout, on the same initial states, by a
bootstrap over the rollouts of the ratio of mean valid steps (every pair of labels goes to the JSON, with
each run's valid steps per rollout).

    python benchmarks/held_out_rollouts.py --rollouts 128 --out benchmarks/results/held_out_rollouts.json \\
        lnn=runs/lnn_1000,runs/lnn_1001 dlnn_shooting=runs/dlnn_1000,runs/dlnn_1001
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BOOTSTRAP = 10_000


def valid_steps(run_dir: Path, rollouts: int, cache_dir: Path) -> tuple[np.ndarray, dict]:
    """Valid steps of each of the run's `rollouts` fresh test rollouts, and the run's facts."""
    import torch

    from dlnn_core.data import load_data
    from dlnn_core.evaluate import VALID_THRESHOLD, batched_rollout, frozen, trajectory_metrics
    from dlnn_core.metrics import state_error, valid_steps_each
    from dlnn_core.train import DTYPES, load_checkpoint

    model, config, payload = load_checkpoint(run_dir / "model.pt")
    splits = load_data(dataclasses.replace(config.data, n_rollout=rollouts), config.data_seed, cache_dir)
    traj, dtype = splits.rollouts["test"], DTYPES[config.dtype]
    q0, v0 = (torch.as_tensor(x[:, 0], dtype=dtype) for x in (traj.q, traj.qdot))
    start = time.perf_counter()
    with frozen(model):
        q, v = batched_rollout(model, q0, v0, float(traj.t[1] - traj.t[0]), traj.q.shape[1] - 1)
    true_q, true_v = torch.as_tensor(traj.q, dtype=dtype), torch.as_tensor(traj.qdot, dtype=dtype)
    q, v = torch.nan_to_num(q, nan=1e6, posinf=1e6, neginf=-1e6), torch.nan_to_num(v, nan=1e6, posinf=1e6, neginf=-1e6)
    scale = float(torch.sqrt(true_q.square().sum(-1) + true_v.square().sum(-1)).mean())
    each = valid_steps_each(state_error(q, v, true_q, true_v, splits.system.angles), VALID_THRESHOLD * scale).numpy()
    mean = trajectory_metrics(splits, traj, q, v, "test")["test_valid_steps"]
    assert abs(each.mean() - mean) < 1e-9, "the per-rollout steps must average to evaluate's own figure"
    facts = {"run": str(run_dir), "seed": config.seed, "kind": config.model.kind, "shooting_iters": config.shooting_iters,
             "test_valid_steps_8": payload["metrics"].get("test_valid_steps"), "rollout_s": time.perf_counter() - start,
             "initial_states": np.concatenate([traj.q[:, 0], traj.qdot[:, 0]], axis=1)}
    return each, facts


def summary(steps: np.ndarray) -> dict:
    """Mean with its standard error over the rollouts, and the quartiles (valid steps are heavy-tailed)."""
    q1, median, q3 = np.percentile(steps, [25, 50, 75])
    return {"mean": float(steps.mean()), "se": float(steps.std(ddof=1) / np.sqrt(len(steps))), "sd": float(steps.std(ddof=1)),
            "median": float(median), "q1": float(q1), "q3": float(q3), "n": int(len(steps))}


def ratio_interval(num: np.ndarray, den: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Ratio of mean valid steps over the same rollouts (columns), runs pooled (rows), and its 95 %
    bootstrap interval over the rollouts."""
    idx = rng.integers(0, num.shape[1], size=(BOOTSTRAP, num.shape[1]))
    ratios = num[:, idx].mean(axis=(0, 2)) / den[:, idx].mean(axis=(0, 2))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(num.mean() / den.mean()), float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="+", help="LABEL=RUN_DIR[,RUN_DIR...]; the first label is the baseline")
    parser.add_argument("--rollouts", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".dlnn_cache")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    groups: dict[str, list[tuple[np.ndarray, dict]]] = {}
    for group in args.groups:
        label, _, dirs = group.partition("=")
        groups[label] = [valid_steps(Path(d), args.rollouts, args.cache_dir) for d in dirs.split(",")]
    starts = [facts.pop("initial_states") for runs in groups.values() for _, facts in runs]
    assert all(np.array_equal(x, starts[0]) for x in starts), "every run must be scored on the same rollouts"
    rng = np.random.default_rng(0)
    base = np.stack([steps for steps, _ in next(iter(groups.values()))])
    out = {"rollouts": args.rollouts, "bootstrap": BOOTSTRAP, "groups": {}}
    for label, runs in groups.items():
        pooled = np.stack([steps for steps, _ in runs])
        ratio, low, high = ratio_interval(pooled, base, rng)
        per_run = [{**facts, **summary(steps), "steps": steps.tolist()} for steps, facts in runs]
        q1, median, q3 = np.percentile(pooled, [25, 50, 75])
        out["groups"][label] = {"mean": float(pooled.mean()), "median": float(median), "q1": float(q1), "q3": float(q3), "seed_means": [r["mean"] for r in per_run],
                                "ratio_to_baseline": ratio, "ratio_95": [low, high], "runs": per_run}
        means = ", ".join(f"{r['mean']:.1f}" for r in per_run)
        eights = ", ".join(str(r["test_valid_steps_8"]) for r in per_run)
        print(f"{label}: mean {pooled.mean():.1f} (seed means {means}; 8-rollout figures {eights}), "
              f"median {np.median(pooled):.0f}, ratio {ratio:.2f} [{low:.2f}, {high:.2f}]", flush=True)
    stacked = {label: np.stack([steps for steps, _ in runs]) for label, runs in groups.items()}
    out["ratios"] = {a: {b: ratio_interval(stacked[a], stacked[b], rng) for b in stacked if b != a} for a in stacked}
    args.out.write_text(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
