"""How long the read-only commands take to start and answer, and what of it is the libraries': each
command runs as a fresh process, all of them interleaved for several rounds; the median wall time
and CPU time (user + sys) of each is printed as a Markdown table.

    python benchmarks/startup.py                 # a 32-trial SQLite study made here, 5 rounds

The floor rows import what Optuna's RDBStorage needs (SQLAlchemy, and alembic, which RDBStorage
always loads to read the schema's revision) and open the same database the way `dlnn status` does,
with and without Optuna's schema compatibility check (`skip_compatibility_check`).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def make_study(folder: Path) -> str:
    """studies/quick.toml launched into an SQLite file, its 32 trials run by a worker with a stand-in fit."""
    from service_overhead import noop_fit

    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.study.launch import launch
    from dlnn_studies.study.worker import run_worker

    url = f"sqlite:///{folder / 'dlnn.db'}"
    launch(load_spec(REPO / "studies" / "quick.toml"), url, log=lambda m: None, artifacts=folder / "artifacts")
    run_worker(url, "quick", fit_fn=noop_fit, install_signals=False, artifacts=folder / "artifacts", plots=False, log=lambda m: None)
    return url


def commands(url: str, folder: Path) -> dict[str, list[str]]:
    py, dlnn = sys.executable, [sys.executable, "-m", "dlnn_studies.cli.main"]
    path = url[len("sqlite:///"):]
    open_db = ("import optuna; s = optuna.storages.RDBStorage({url!r}, skip_table_creation=True{skip}); "
               "optuna.load_study(study_name='quick', storage=s).get_trials(deepcopy=False)")
    return {
        "python -c pass": [py, "-c", "pass"],
        "import optuna, sqlalchemy.orm": [py, "-c", "import optuna, sqlalchemy.orm"],
        "... + alembic.migration": [py, "-c", "import optuna, sqlalchemy.orm, alembic.migration"],
        "import optuna, grpc (a proxy client's floor)": [py, "-c", "import optuna, grpc"],
        "RDBStorage open + read, checked": [py, "-c", open_db.format(url=url, skip="")],
        "RDBStorage open + read, check skipped": [py, "-c", open_db.format(url=url, skip=", skip_compatibility_check=True")],
        "dlnn --version": [*dlnn, "--version"],
        "dlnn --help": [*dlnn, "--help"],
        "dlnn status": [*dlnn, "status", "--storage", url],
        "dlnn status quick": [*dlnn, "status", "quick", "--storage", url],
        "dlnn status quick --json": [*dlnn, "status", "quick", "--json", "--storage", url],
        "dlnn export quick": [*dlnn, "export", "quick", "--storage", url, "--out", str(folder / "exports")],
    } if os.path.exists(path) else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory(prefix="dlnn-startup-") as tmp:
        folder = Path(tmp)
        table = commands(make_study(folder), folder)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in table}
        for _ in range(args.rounds):
            for name, argv in table.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run(argv, check=True, env=env, cwd=folder, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - start
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                times[name].append((wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
    print(f"{os.cpu_count()} cores, python {sys.version.split()[0]}, {args.rounds} interleaved rounds, medians")
    print("| command | wall | CPU (user + sys) |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(v[0] for v in values):.3f} s | {statistics.median(v[1] for v in values):.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
