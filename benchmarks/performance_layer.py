"""Does the service's performance layer pay at the sizes the shipped studies use?

What is left of it is the cached trial view (trial_view.TrialView, wrapped around the database by
service.ServiceStudy): one incremental read of the study per ask instead of Optuna's full reads.
Two more pieces were measured here and removed because they did not pay at these sizes (TPE's
history cap and incremental parameter groups; benchmarks/results/performance_layer.md).

Each child process is our worker (the stand-in fit of service_overhead.py, no training), with
the view or without it, on a PostgreSQL study that already holds N finished trials; "plain"
is plain Optuna on the same study. Client CPU per trial is measured as in service_overhead.py
(steady state, the stand-in fit's own file writing left out); server CPU is the PostgreSQL
processes' CPU over the same run (live backends and, through the postmaster's reaped-children
counters, those that exited), divided by the trials. Kinds alternate at each size.

    python benchmarks/performance_layer.py                        # sizes 120 360 1000, 1 and 4 processes, a few minutes
    python benchmarks/performance_layer.py --sizes 360 --workers 1 4 --trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import service_overhead as so  # noqa: E402
from children import json_children  # noqa: E402

KINDS = {"plain": None, "ours": (), "no view": ("view",)}  # kind -> pieces switched off (None: plain Optuna)


def switch_off(pieces: tuple[str, ...]) -> None:
    """Remove performance pieces from this (child) process, leaving everything else of the worker."""
    from dlnn_studies.study import service

    if "view" in pieces:
        class NoView:  # TrialView(storage) gives the storage itself; nothing is an instance of NoView
            def __new__(cls, storage):
                return storage

        service.TrialView = NoView


def postgres_cpu() -> float:
    """CPU-seconds of every PostgreSQL process on this machine, plus the backends that exited
    (the postmaster's reaped-children counters). Linux only; 0.0 where /proc is not readable."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm not in ("postgres", "postmaster"):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += (utime + stime + cutime + cstime) / tick
    return total


def child(kind: str, url: str, study: str, trials: int, artifacts: str) -> dict:
    if KINDS[kind] is None:
        return so.child_plain(url, study, trials, artifacts)
    switch_off(KINDS[kind])
    return so.child_ours(url, study, trials, artifacts)


def run(kind: str, url: str, study: str, workers: int, trials: int, artifacts: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--url", url, "--study", study, "--trials", str(trials), "--artifacts", artifacts]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    server = postgres_cpu()
    results = json_children(cmd, workers, env, f"{kind} worker")
    server = postgres_cpu() - server
    n = sum(r["trials"] for r in results)
    return {"client": sum(r["cpu_per_trial"] for r in results) / len(results), "server": server / n, "trials": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=os.environ.get("DLNN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="PostgreSQL admin URL; a scratch database is created and dropped")
    parser.add_argument("--sizes", type=int, nargs="+", default=[120, 360, 1000],
                        help="finished trials already in the study (default 120 360 1000: the shipped studies' budgets and past them)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="processes at once (default 1 4)")
    parser.add_argument("--trials", type=int, default=12, help="trials measured per process and kind (default 12)")
    parser.add_argument("--child", choices=list(KINDS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.study, args.trials, args.artifacts)))
        return 0

    import warnings

    warnings.filterwarnings("ignore")
    artifacts = tempfile.mkdtemp(prefix="dlnn-bench-artifacts-")
    print(f"# performance layer: CPU-seconds per trial, client (server), python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'finished':>9}{'procs':>6}" + "".join(f"{k:>20}" for k in KINDS))
    db, url = so.pg_database(args.pg)
    try:
        for workers in args.workers:
            name = f"sized-{workers}"
            so.launch(url, name, 10**6)
            done = 0
            for size in sorted(args.sizes):
                so.populate(url, name, max(size - done, 0), seed=size + workers)
                done = max(size, done)
                res = {}
                for kind in KINDS:
                    res[kind] = run(kind, url, name, workers, args.trials, artifacts)
                    done += res[kind]["trials"]
                cells = "".join(f"{r['client']:>11.4f} ({r['server']:.4f})" for r in res.values())
                print(f"{size:>9}{workers:>6}{cells}", flush=True)
    finally:
        so.drop_database(args.pg, db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
