"""Trials per hour of a real study with 1 and 2 local workers, and where each worker's time goes.

Each level launches a fresh copy of the spec (its budget cut to `--trials`) on SQLite in a
temporary folder and runs N worker processes on it, as `dlnn run --workers N` does (one torch
thread per worker per core). Inside every worker the real `fit` and the real sampler run; the
benchmark only wraps them with clocks (an instrumented copy of the worker's calls, no change to
the service):

- data: `load_data` (generation once per fresh cache folder, then reading the cache);
- training: `fit` up to its last epoch, data and reports excluded (model build included);
- evaluation: `fit` after its last epoch (the objectives' metrics and the checkpoint), and the
  full evaluation of the references and of the trials among the best (the worker's `evaluate_fn`);
- storage in a trial: the per-epoch `report` (trial.report + should_prune on the database);
- sampling: the worker's `suggest` (the sampler's relative and independent draws, and writing
  the params);
- plots and uploads: the rollout plot of a finished trial and the artifact uploads;
- the rest: everything else the worker spends (creating and finishing trials, attrs, metrics,
  heartbeat), as the worker's wall time minus the above.

The first `n_startup_trials` of a TPE spec are random draws; a budget cut below that measures
the start of a study, which the table says.

    python benchmarks/study_cost.py [--spec pendulum_answers] [--trials 48] [--workers 1 2] [--seed 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from children import CHILD_INDEX, json_children  # noqa: E402

PARTS = ("data", "training", "evaluation", "storage in a trial", "sampling", "plots and uploads", "the rest")


def child(url: str, name: str, artifacts: str, cache: str, threads: int, seed: int) -> dict:
    """One worker process: run the study with clocks around fit's phases and the sampler; its
    sampler seed is `seed` plus its index among the children, so a run's trials can be drawn again."""
    import dlnn_core.train as train
    import dlnn_studies.study.plots as plots
    import dlnn_studies.study.objective as objective
    import dlnn_studies.study.worker as worker

    clock: dict[str, float] = defaultdict(float)
    real_fit = train.fit

    def clocked(fn, part):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock[part] += time.perf_counter() - start
        return timed

    def timed_fit(config, report=None, out_dir=None, metrics=None):
        start, data_before = time.perf_counter(), clock["data"]
        reported = {"total": 0.0, "at_last_epoch": 0.0, "last_epoch_s": None}

        def timed_report(epoch, value):
            t = time.perf_counter()
            try:
                report(epoch, value)
            finally:
                reported["total"] += time.perf_counter() - t

        def progress(record):
            if record.get("phase") is None:  # an epoch's record (taken before its report)
                reported["at_last_epoch"], reported["last_epoch_s"] = reported["total"], time.perf_counter() - start

        try:
            return real_fit(config, report=timed_report if report else None, out_dir=out_dir, progress=progress, cache_dir=cache, metrics=metrics)
        finally:
            wall = time.perf_counter() - start
            data = clock["data"] - data_before
            last = reported["last_epoch_s"] if reported["last_epoch_s"] is not None else wall
            clock["storage in a trial"] += reported["total"]
            clock["training"] += last - data - reported["at_last_epoch"]
            clock["evaluation"] += wall - last - (reported["total"] - reported["at_last_epoch"])

    train.load_data = clocked(train.load_data, "data")
    objective.suggest = clocked(objective.suggest, "sampling")
    plots.rollout_png = clocked(plots.rollout_png, "plots and uploads")
    objective.Objective._upload = clocked(objective.Objective._upload, "plots and uploads")
    start = time.perf_counter()
    worker.run_worker(url, name, artifacts=artifacts, threads=threads, fit_fn=timed_fit, install_signals=False, log=lambda m: None,
                      seed=seed + int(os.environ[CHILD_INDEX]),
                      evaluate_fn=clocked(lambda path, device, metrics: train.evaluate_checkpoint(path, device, cache, metrics), "evaluation"))
    clock["wall"] = time.perf_counter() - start
    clock["the rest"] = clock["wall"] - sum(clock[p] for p in PARTS[:-1])
    return dict(clock)


def level(spec: str, trials: int, workers: int, folder: Path, seed: int) -> dict:
    """Launch a fresh study and run `workers` processes on it; trials per hour and the summed clocks."""
    import optuna

    from dlnn_studies.study.launch import launch
    from dlnn_studies.spec.schema import parse_spec

    raw = tomllib.loads((ROOT / "studies" / f"{spec}.toml").read_text())
    raw["budget"]["trials"] = trials
    parsed = parse_spec(raw, source=spec)
    url = f"sqlite:///{folder / 'study.db'}"
    launch(parsed, url, log=lambda m: None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    cmd = [sys.executable, __file__, "--child", url, parsed.name, str(folder / "artifacts"), str(folder / "cache"), str(threads), str(seed)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    clocks = json_children(cmd, workers, env)
    wall = time.perf_counter() - start
    states = defaultdict(int)
    for t in optuna.load_study(study_name=parsed.name, storage=url).get_trials(deepcopy=False):
        states[t.state.name.lower() if t.state.is_finished() and t.user_attrs.get("status") in (None, "ok") else t.user_attrs["status"]] += 1
    summed = {p: sum(c[p] for c in clocks) for p in PARTS}
    return {"workers": workers, "trials": trials, "wall_s": wall, "trials_per_hour": trials * 3600 / wall,
            "worker_s": sum(c["wall"] for c in clocks), "parts": summed, "states": dict(states)}


def table(rows: list[dict], spec: str, startup: int | None) -> str:
    note = f" (all within TPE's {startup} random startup trials)" if startup and rows[0]["trials"] <= startup else ""
    head = "| workers | trials | wall s | trials / h | " + " | ".join(f"{p} %" for p in PARTS) + " | trial outcomes |"
    lines = [f"{spec}, a fresh study of {rows[0]['trials']} trials per level{note}; shares of the workers' summed time.", "",
             head, "|" + "---:|" * (4 + len(PARTS)) + "---|"]
    for r in rows:
        shares = " | ".join(f"{100 * r['parts'][p] / r['worker_s']:.0f}" for p in PARTS)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
        lines.append(f"| {r['workers']} | {r['trials']} | {r['wall_s']:.0f} | {r['trials_per_hour']:.0f} | {shares} | {outcomes} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, name, artifacts, cache, threads, seed = sys.argv[2:8]
        print(json.dumps(child(url, name, artifacts, cache, int(threads), int(seed))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="pendulum_answers", help="a spec in studies/ (without .toml)")
    parser.add_argument("--trials", type=int, default=48, help="the budget of each level's fresh study")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0, help="worker i's sampler seed is SEED + i (default 0): the same trials again")
    parser.add_argument("--out", type=Path, help="also append the table to this file")
    args = parser.parse_args()
    rows = []
    for n in args.workers:
        with tempfile.TemporaryDirectory(prefix="dlnn-cost-") as folder:
            rows.append(level(args.spec, args.trials, n, Path(folder), args.seed))
            print(f"{n} worker(s): {rows[-1]['wall_s']:.0f} s", file=sys.stderr, flush=True)
    raw = tomllib.loads((ROOT / "studies" / f"{args.spec}.toml").read_text())
    text = table(rows, args.spec, raw.get("sampler", {}).get("n_startup_trials"))
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
