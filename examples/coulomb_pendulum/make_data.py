"""Write the example's "measured" trajectories: the Coulomb pendulum declared in study.toml,
solved from random initial states for 4 to 10 s each, sampled at 30 Hz, with Gaussian noise
(σ = 0.01 rad) on the angle only, as a tracked pendulum would be recorded. Same trajectories in
both formats: data/runs.npz and data/runs.csv (no velocities or accelerations: the study
estimates them).

    python examples/coulomb_pendulum/make_data.py [--seed 0] [--count 20]
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import numpy as np

from dlnn_core.data import integrate
from dlnn_core.datafiles import write_trajectory_file
from dlnn_core.data import make_system

HERE = Path(__file__).resolve().parent
RATE_HZ, NOISE, SHORTEST_S, LONGEST_S = 30.0, 0.01, 4.0, 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=20, help="trajectories")
    args = parser.parse_args()
    declared = tomllib.loads((HERE / "study.toml").read_text())["base"]["data"]["declared"]
    system = make_system("declared", {}, declared)
    rng = np.random.default_rng(args.seed)
    q0 = rng.uniform(-2.5, 2.5, (args.count, 1))  # swings up to ±2.5 rad, at rest or pushed
    v0 = rng.uniform(-3.0, 3.0, (args.count, 1))
    solved = integrate(system, q0, v0, LONGEST_S, RATE_HZ)  # all at once, then cut to irregular lengths
    lengths = rng.integers(int(SHORTEST_S * RATE_HZ), len(solved.t) + 1, args.count)
    t = [solved.t[:k] for k in lengths]
    q = [solved.q[i, :k] + NOISE * rng.standard_normal((k, 1)) for i, k in enumerate(lengths)]
    for suffix in ("npz", "csv"):
        path = write_trajectory_file(HERE / "data" / f"runs.{suffix}", t, q, names=["theta"], angles=[True])
        print(f"{path.relative_to(HERE.parents[1])}: {args.count} trajectories, {int(lengths.sum())} samples")


if __name__ == "__main__":
    main()
