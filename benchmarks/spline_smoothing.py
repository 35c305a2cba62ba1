"""Probe (issue 27): is the smoothing spline's level (the discrepancy principle, s = T·σ²) the best
one for the hard case's q̈ targets? Scales s by c and prints the q̈ and q̇ errors against the truth on
24 training-like trajectories of the double pendulum (1 % noise, 50 Hz, 8 s), and the slow part of the
q̈ error (an 11-sample moving mean), which a model fitting many samples cannot average away. No torch.

    python benchmarks/spline_smoothing.py --scales 0.5 0.8 1 1.2 1.5 2 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WINNER = REPO / "docs/reports/double_pendulum_answers/robust_winner.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.8, 1.0, 1.2, 1.5, 2.0, 4.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dlnn_core import data
    from dlnn_core.config import load_config
    from dlnn_core.smoothing import spline

    cfg = load_config(WINNER).data
    system, rng = cfg.make_system(), np.random.default_rng(args.seed)
    q0, v0 = data._uniform(rng, system, cfg.n_train)
    traj = data.integrate(system, q0, v0, cfg.duration, cfg.rate_hz)
    a_true = np.stack([data._accel(system, traj.q[i], traj.qdot[i]) for i in range(cfg.n_train)])
    observed = traj.q + cfg.noise * rng.standard_normal(traj.q.shape)
    rel = lambda err, true: float(np.sqrt((err**2).mean() / (true**2).mean()))  # noqa: E731
    mean11 = np.ones(11) / 11
    print("| s / (T·σ²) | q̈ error, relative RMS | its slow part | q̇ error, relative RMS |\n|---|---|---|---|")
    for c in args.scales:
        _, v, a = spline(observed, 1.0 / cfg.rate_hz, cfg, cfg.noise * np.sqrt(c))  # s = T·noise², so noise·√c scales s by c
        slow = np.apply_along_axis(lambda x: np.convolve(x, mean11, mode="same"), 1, a - a_true)
        print(f"| {c:g} | {rel(a - a_true, a_true):.3f} | {rel(slow, a_true):.3f} | {rel(v - traj.qdot, traj.qdot):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
