"""How many torch threads should `dlnn train` use on a CPU? Trains one config with each thread count,
interleaved (1, 2, 1, 2, ...), each run a fresh `dlnn train` process, and prints fit's own wall time
(from metrics.json: data, training and evaluation, no imports) and the process's wall time.

    python benchmarks/train_threads.py                               # studies/quick.toml's baseline, 1 and 2 threads, 5 rounds
    python benchmarks/train_threads.py --config exports/quick/rank01-trial0007.yaml --threads 1 2 4 --rounds 3

Run it alone (under `flock /tmp/heavy.lock` on a shared machine): a neighbour's load is what decides
whether a second thread helps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def spec_baseline(spec_path: Path, out: Path) -> Path:
    """The spec's first baseline config (the demo's first trial) as a config file `dlnn train` reads."""
    import yaml

    from dlnn_studies.spec.schema import load_spec

    config = load_spec(spec_path).baselines[0].config
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return path


def train_once(config: Path, threads: int, out: Path, overrides: list[str]) -> tuple[float, float]:
    """(fit's wall time, the process's wall time) of one `dlnn train --threads N`, in seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # --threads alone decides
        env.pop(var, None)
    sets = [arg for item in overrides for arg in ("--set", item)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlnn_studies.cli.main", "train", str(config), "--threads", str(threads), "--no-progress",
                    "--out", str(out), *sets], check=True, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return json.loads((out / "metrics.json").read_text())["metrics"]["wall_time_s"], wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=REPO / "studies" / "quick.toml", help="train this spec's first baseline (default: the demo's)")
    ap.add_argument("--config", type=Path, default=None, help="a config file instead of the spec's baseline")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="passed to dlnn train")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dlnn-threads-") as tmp:
        config = args.config or spec_baseline(args.spec, Path(tmp))
        runs: dict[int, list[tuple[float, float]]] = {n: [] for n in args.threads}
        for r in range(args.rounds):
            for n in args.threads:
                runs[n].append(train_once(config, n, Path(tmp) / f"run-{n}-{r}", args.overrides))
                print(f"round {r + 1}: {n} threads: fit {runs[n][-1][0]:.2f} s, process {runs[n][-1][1]:.2f} s", flush=True)
    print(f"\nconfig: {args.config or f'{args.spec} baseline 1'} {' '.join(args.overrides)}; {os.cpu_count()} cores; "
          f"{args.rounds} interleaved rounds")
    print("| torch threads | fit wall time, median (min-max) | process wall time, median |")
    print("|---|---|---|")
    for n, values in runs.items():
        fits, walls = [v[0] for v in values], [v[1] for v in values]
        print(f"| {n} | {statistics.median(fits):.2f} s ({min(fits):.2f}-{max(fits):.2f}) | {statistics.median(walls):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
