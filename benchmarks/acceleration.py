"""Training-step throughput of each Euler–Lagrange method (forward + backward through q̈ +
optimizer step), as samples/s and as a ratio to the per-sample vmap Hessian, measured in one run.

    python benchmarks/acceleration.py [--hidden 512] [--batch 256] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from dlnn_core.model_config import METHODS
from dlnn_core.models import ModelConfig, build_model
from dlnn_core.systems import get_system

SYSTEMS_BY_DOF = {1: "damped_pendulum", 2: "damped_double_pendulum"}


def throughput(method: str, n: int, hidden: int, batch: int, steps: int, device: str) -> float:
    """Samples per second of full training steps (after one warm-up step)."""
    torch.manual_seed(0)
    system = get_system(SYSTEMS_BY_DOF[n])
    model = build_model(ModelConfig(kind="dlnn", form="free", hidden=hidden, depth=2, activation="swish"), system, method).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    q, v, target = (torch.randn(batch, n, device=device) for _ in range(3))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = (model(q, v) - target).square().mean()
        loss.backward()
        opt.step()

    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    print(f"device={args.device} threads={torch.get_num_threads()} hidden={args.hidden} batch={args.batch} torch={torch.__version__}")
    print(f"{'n':>2} {'method':>10} {'samples/s':>11} {'vs hessian':>11}")
    for n in (1, 2):
        rates = {}
        for method in args.methods:
            steps = max(1, args.steps // 4) if method == "loop" else args.steps
            rates[method] = throughput(method, n, args.hidden, args.batch, steps, args.device)
        base = rates.get("hessian", next(iter(rates.values())))
        for method, rate in rates.items():
            print(f"{n:>2} {method:>10} {rate:>11.0f} {rate / base:>10.2f}x")


if __name__ == "__main__":
    main()
