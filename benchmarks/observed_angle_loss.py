"""Probe (issue 27): does a multi-step loss on the raw observed angles beat the shipped one, which
compares a rollout with the smoothed states (the spline's q and q̇)?

The hard case's targets are biased: at 1 % noise and 50 Hz the spline's q̈ misses the truth by about
32 % RMS. A loss on the observed angles themselves never differentiates the data, so its only error is
the zero-mean noise. This probe trains the committed robust winner
(docs/reports/double_pendulum_answers/robust_winner.yaml) with the multi-step loss in one of four forms:
  smoothed     the shipped loss: predicted q and q̇ against the spline's q and q̇ of the next k samples;
  observed     predicted q against the raw noisy angles of the next k samples (no velocities);
  observed_only the same, and no q̈ loss at all (the model learns from position windows only);
  shooting     multiple shooting: each trajectory cut into segments of k steps, each segment's initial
               (q, q̇) a parameter trained with the model (starting at the spline's), its rollout against
               the raw angles of all k + 1 samples.
The other forms start each window from the spline's (q, q̇). It patches dlnn_core.train for the run (a probe,
not a setting: it did not pay, see benchmarks/results/hard_case_probes.md, so TrainConfig has no
field for it). One torch thread per run.

    python benchmarks/observed_angle_loss.py --mode observed --horizon 8 --weight 1e4 --seeds 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WINNER = REPO / "docs/reports/double_pendulum_answers/robust_winner.yaml"
MODES = ("smoothed", "observed", "observed_only", "shooting")


def patch(mode: str) -> None:
    """Route the multi-step loss of dlnn_core.train through `mode` (see the module docstring)."""
    import dlnn_core.data as data
    import dlnn_core.train as train
    from dlnn_core.metrics import angle_difference
    from dlnn_core.rollout import STEPS, rollout
    from dlnn_core.splits import StateSet

    if mode == "smoothed":
        return
    raw: dict[str, object] = {}
    estimate = data.estimate

    def keep_raw(cfg, q, dt, noise):  # the training split is the only one estimated with noise
        if noise:
            raw["q"] = q.copy()
        return estimate(cfg, q, dt, noise)

    def windows(config, splits, dtype, device):
        import torch

        per = data.samples_per_trajectory(config.data)
        q0, v0, _, fv = data.trajectory_windows(splits.train, per, config.rollout_horizon)
        observed = data.wrap_angles(raw["q"].reshape(splits.train.q.shape), splits.system.angles)
        _, _, fq, _ = data.trajectory_windows(StateSet(observed, splits.train.qdot, splits.train.qddot), per, config.rollout_horizon)
        return tuple(torch.as_tensor(x, dtype=dtype, device=device) for x in (q0, v0, fq, fv))

    def angle_loss(accel, q0, v0, future_q, future_v, dt, angles, integrator="rk4"):
        q, _ = rollout(accel, q0, v0, dt, future_q.shape[1], step=STEPS[integrator])
        return angle_difference(q[:, 1:], future_q, angles).square().mean()

    data.estimate, train._rollout_windows, train.rollout_loss = keep_raw, windows, angle_loss
    if mode == "shooting":
        _shooting(train, data, raw)
    if mode == "observed_only":
        train.LOSSES = {name: (lambda pred, true: 0.0 * pred.sum()) for name in train.LOSSES}


def _shooting(train, data, raw: dict) -> None:
    """Segments of k steps with their initial states as parameters of the model (so fit's optimizer and
    schedule train them), the rollout of each from its own state against the raw angles."""
    import torch
    from torch import nn

    from dlnn_core.metrics import angle_difference
    from dlnn_core.rollout import STEPS, rollout

    segments: dict[str, object] = {}
    build = train.build_seeded_model

    def windows(config, splits, dtype, device):
        per, k, n = data.samples_per_trajectory(config.data), config.rollout_horizon, splits.train.q.shape[1]
        starts = np.arange(0, per - k, k)
        idx = starts[:, None] + np.arange(k + 1)[None]
        observed = data.wrap_angles(raw["q"].reshape(-1, n), splits.system.angles).reshape(-1, per, n)
        q, v = splits.train.q.reshape(-1, per, n), splits.train.qdot.reshape(-1, per, n)
        segments["q0"] = torch.as_tensor(q[:, starts].reshape(-1, n), dtype=dtype, device=device)
        segments["v0"] = torch.as_tensor(v[:, starts].reshape(-1, n), dtype=dtype, device=device)
        ids = torch.arange(segments["q0"].shape[0], device=device)
        fq = torch.as_tensor(observed[:, idx].reshape(-1, k + 1, n), dtype=dtype, device=device)
        return ids, ids, fq, fq

    def seeded_model(config, splits, device):
        model = build(config, splits, device)
        windows(config, splits, train.DTYPES[config.dtype], device)  # the segments' first states, before the optimizer is built
        model.segment_q0, model.segment_v0 = nn.Parameter(segments["q0"].clone()), nn.Parameter(segments["v0"].clone())
        segments["model"] = model
        return model

    def shooting_loss(accel, ids, _, future_q, __, dt, angles, integrator="rk4"):
        model = segments["model"]
        q, _ = rollout(accel, model.segment_q0[ids], model.segment_v0[ids], dt, future_q.shape[1] - 1, step=STEPS[integrator])
        return angle_difference(q, future_q, angles).square().mean()

    train._rollout_windows, train.rollout_loss, train.build_seeded_model = windows, shooting_loss, seeded_model


def run(mode: str, horizon: int, weight: float, seed: int, epochs: int) -> dict:
    os.environ["DLNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="dlnn-probe-cache-")  # generated here, so the raw angles are seen
    import torch

    torch.set_num_threads(1)
    patch(mode)
    from dlnn_core.config import load_config
    from dlnn_core.train import fit

    config = replace(load_config(WINNER), seed=seed, rollout_horizon=horizon, rollout_weight=weight, epochs=epochs)
    start = time.perf_counter()
    result = fit(config)
    m = result.metrics
    return {"mode": mode, "horizon": horizon, "weight": weight, "seed": seed, "epochs": epochs, "status": result.status,
            "val_valid_steps": m.get("val_valid_steps"), "test_valid_steps": m.get("test_valid_steps"),
            "test_rollout_error_500": m.get("test_rollout_error_500"), "val_rel_mse": m.get("val_rel_mse"),
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--horizon", type=int, default=8, help="samples per window (default 8)")
    parser.add_argument("--weight", type=float, default=1e4, help="rollout_weight (default 1e4; the winner's is 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    for seed in args.seeds:  # one process per seed: each patches dlnn_core afresh
        if len(args.seeds) > 1:
            subprocess.run([sys.executable, __file__, "--mode", args.mode, "--horizon", str(args.horizon), "--weight",
                            str(args.weight), "--seeds", str(seed), "--epochs", str(args.epochs)], check=True)
            continue
        print(json.dumps(run(args.mode, args.horizon, args.weight, seed, args.epochs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
