"""Probe (issue 27): does selecting the shooting fit's weights on the validation rollouts
(`shooting_check`) raise the held-out test valid steps? Retrains the committed robust winner with
`shooting_iters` and `shooting_check` as given and, at every check, scores the test rollouts too (a
second rollout, so the selection is the one `fit` makes), so one run gives the curve of val and test
valid steps (and the test 500-step error) against the fit's evaluations, and the test valid steps that selection
delivers against those of the fit's end. One JSON line per seed goes to --out.

    python benchmarks/shooting_check.py --seeds 1000 --iters 800 --check 50 --out benchmarks/results/shooting_check.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WINNER = REPO / "docs/reports/double_pendulum_answers/robust_winner.yaml"


def run(seed: int, iters: int, check: int, cache_dir: Path) -> dict:
    """One retraining of the winner, its checks logged with the test rollouts' valid steps beside them."""
    import dlnn_core.train as train
    from dlnn_core.config import load_config
    from dlnn_core.evaluate import frozen, rollout_metrics

    curve: list[dict] = []
    select = train._val_valid_steps

    def logged(model, splits, dtype, device):
        val = select(model, splits, dtype, device)
        with frozen(model):
            test = rollout_metrics(model, splits, ("test",), dtype, device)
        curve.append({"val_valid_steps": val, "test_valid_steps": test["test_valid_steps"], "test_rollout_error_500": test["test_rollout_error_500"]})
        return val

    train._val_valid_steps = logged
    config = load_config(WINNER).with_flat({"seed": seed, "shooting_iters": iters, "shooting_check": check})
    start = time.perf_counter()
    result = train.fit(config, cache_dir=cache_dir)
    record = result.history[-1]
    for point, (evaluation, _) in zip(curve, record["scores"]):
        point["evaluation"] = int(evaluation)
    metrics = result.metrics
    return {"seed": seed, "iters": iters, "check": check, "selected_evaluation": record["selected_evaluation"],
            "evaluations": record["evaluations"], "loss_before": record["loss_before"], "loss_after": record["loss_after"],
            "test_valid_steps": metrics["test_valid_steps"], "val_valid_steps": metrics["val_valid_steps"],
            "test_rollout_error_500": metrics["test_rollout_error_500"], "shooting_time_s": record["time_s"],
            "wall_time_s": time.perf_counter() - start, "curve": curve}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000])
    parser.add_argument("--iters", type=int, default=800)
    parser.add_argument("--check", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".dlnn_cache")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    for seed in args.seeds:
        row = run(seed, args.iters, args.check, args.cache_dir)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
