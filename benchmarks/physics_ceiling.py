"""Probe (issue 27): how long can a model fitted to the hard case's noisy data stay valid? Fits the
true equations of motion of the damped double pendulum, with its constants as the only parameters
(m1 = 1 fixes the scale that L and D share), to the training split, then scores it on the same
held-out rollouts as every trained model (`evaluate`). A model with the right structure and five
constants to fit (four combinations of them decide q̈) is the best case for a learned one. Two fits:

  targets   q̈ regression on the estimated targets (`data.derivatives`), what every trained model does;
  shooting  each training trajectory cut into segments of k steps whose initial (q, q̇) are fitted with
            the constants, each rolled out (RK4) against the measured (noisy) angles of its k + 1 samples:
            no derivative of the data is taken.

Both by full-batch L-BFGS from every constant at half its true value (shooting: `dlnn_core.shooting`,
what `shooting_iters` runs after the epochs). `--model dlnn` (or `lnn`) takes the committed robust
winner (as that model kind) instead: "targets" is its own training (`fit`, seed 1000 + data seed),
"shooting" that trained network fitted further by the same shooting, its weights and the segments'
states together (`--against smoothed`: to the smoothed angles instead of the measured ones).

    python benchmarks/physics_ceiling.py --fits targets shooting --data-seeds 0 1 2
    python benchmarks/physics_ceiling.py --model dlnn --fits shooting --iters 200 --against smoothed --data-seeds 0
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WINNER = REPO / "docs/reports/double_pendulum_answers/robust_winner.yaml"
FITTED = ("m2", "l1", "l2", "g", "rho")
START = 0.5  # every constant starts at half its true value, so the fit has to find it


def physics_model(true_params: dict[str, float]):
    """The double pendulum's hand-written q̈ with log-constants as parameters: model(q, v) -> q̈."""
    import torch
    from torch import nn

    from dlnn_core.systems import double_pendulum_eom

    class Physics(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_params = nn.Parameter(torch.tensor([START * true_params[k] for k in FITTED], dtype=torch.float64).log())

        def identifiable(self) -> dict[str, float]:
            """The combinations q̈ depends on: m2/m1, l2/l1, g/l1 and ρ/(m1 l1²)."""
            m2, l1, l2, g, rho = self.log_params.detach().exp().tolist()
            return {"m2/m1": m2, "l2/l1": l2 / l1, "g/l1": g / l1, "rho/l1^2": rho / l1**2}

        def forward(self, q, v):
            return double_pendulum_eom(q, v, 1.0, *self.log_params.exp())

    return Physics()


def lbfgs(params, loss_fn, rounds: int) -> None:
    import torch

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(rounds):
        opt.step(closure)


def fit_targets(model, splits) -> None:
    import torch

    q, v, a = (torch.from_numpy(x) for x in (splits.train.q, splits.train.qdot, splits.train.qddot))
    lbfgs(model.parameters(), lambda: (model(q, v) - a).square().mean(), rounds=3)


def fit_shooting(model, splits, observed: np.ndarray, k: int, per: int, dt: float, iterations: int, dtype) -> dict:
    """dlnn_core.shooting.polish on the training trajectories, against the angles `observed`."""
    import torch

    from dlnn_core.shooting import polish

    n = splits.system.n
    q, v, obs = (torch.from_numpy(x.reshape(-1, per, n)).to(dtype) for x in (splits.train.q, splits.train.qdot, observed))
    return polish(model, q, v, dt, k, iterations, splits.system.angles, observed=obs)


def trained_network(seed: int, data_seed: int, kind: str, runs: Path):
    """The robust winner (as model `kind`) trained by `fit` on this data seed, or its checkpoint from
    an earlier run of this probe in `runs`."""
    from dlnn_core.config import load_config
    from dlnn_core.train import fit, load_checkpoint

    out = runs / f"{kind}-seed{seed}-data{data_seed}"
    if not (out / "metrics.json").exists():
        config = load_config(WINNER)
        config = dataclasses.replace(config, seed=seed, data_seed=data_seed, model=dataclasses.replace(config.model, kind=kind))
        fit(config, out_dir=out)
    return load_checkpoint(out / "model.pt")[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="physics", choices=["physics", "dlnn", "lnn"])
    parser.add_argument("--against", default="raw", choices=["raw", "smoothed"], help="shooting targets: the measured or the smoothed angles")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/physics-ceiling-runs"), help="where trained networks are kept for reuse")
    parser.add_argument("--fits", nargs="+", default=["targets", "shooting"], choices=["targets", "shooting"])
    parser.add_argument("--iters", type=int, default=1000, help="L-BFGS iterations of the shooting fit (shooting_iters)")
    parser.add_argument("--derivatives", default="spline", help="the targets' estimator (data.derivatives)")
    parser.add_argument("--segment", type=int, default=16, help="shooting segment length k")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    import dlnn_core.data as data
    from dlnn_core.config import load_config
    from dlnn_core.evaluate import evaluate

    cfg = dataclasses.replace(load_config(WINNER).data, derivatives=args.derivatives)
    per, dt = data.samples_per_trajectory(cfg), 1.0 / cfg.rate_hz
    print("| fit | data seed | test valid steps | val valid steps | test rollout error, 500 steps | val_rel_mse "
          "| fitted m2/m1, l2/l1, g/l1, ρ/(m1 l1²) (true 1, 1, 9.81, 0.1) | fit time |")
    print("|---|---|---|---|---|---|---|---|")
    for fit in args.fits:
        for data_seed in args.data_seeds:
            splits = data.generate(cfg, data_seed)
            start = time.perf_counter()
            if args.model == "physics":
                model, dtype = physics_model(dict(splits.system.params)), torch.float64
                fit_targets(model, splits)  # shooting starts its constants where the q̈ fit puts them
            else:
                model = trained_network(1000 + data_seed, data_seed, args.model, args.runs)
                dtype = next(model.parameters()).dtype
            if fit == "shooting":
                model.train()
                observed = splits.train.observed if args.against == "raw" else splits.train.q
                fit_shooting(model, splits, observed, args.segment, per, dt, args.iters, dtype)
            fit_s = time.perf_counter() - start
            m = evaluate(model, splits, dtype, metrics=["val_valid_steps", "test_valid_steps", "test_rollout_error_500"])
            fitted = ", ".join(f"{x:.4g}" for x in model.identifiable().values()) if args.model == "physics" else "(a network)"
            label = (f"{args.model}, {fit} ({args.derivatives})" if fit == "targets"
                     else f"{args.model}, shooting on the {args.against} angles, k = {args.segment}, {args.iters} iterations")
            print(f"| {label} | {data_seed} | {m['test_valid_steps']:.1f} | {m['val_valid_steps']:.1f} | {m['test_rollout_error_500']:.3g} "
                  f"| {m['val_rel_mse']:.2g} | {fitted} | {fit_s:.1f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
