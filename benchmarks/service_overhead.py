"""The study service's overhead per trial against plain Optuna, in CPU-seconds (this is a shared
2-core machine: wall time would measure the neighbours).

A trial here is everything but the training: ask (with the budget check), 9 parameters from the
same search space (TPE multivariate + group + constant liar, median pruner), 10 epoch reports
with pruning checks, tell, and for our worker its attributes (config, worker, metrics, status,
constraint) and two artifacts (a small checkpoint and metrics.json). Plain Optuna runs the same
space through `study.optimize` on the same database in the same run. Each process measures its own
CPU time (user + sys) from its first trial's start to its last one's, so imports and one-off
setup are left out; the database server's CPU is not included.

The stand-in for `fit` writes a checkpoint and metrics.json as fit does; that CPU is training's
(a plain Optuna user's objective writes its checkpoint too) and is left out of both sides. In
memory, a third kind, "plain + records", is plain Optuna keeping what the service records per trial
(the worker's identity, the config built and stored, every metric, the checkpoint uploaded as an
artifact, the constraint): the service's overhead against the same job done by hand, the headline row.

Two tables:
  1. workers: 1, 4, 16 processes on PostgreSQL (and 1 in memory), fresh studies;
  2. size: one worker on a study that already holds 100, 1,000, 5,000 finished trials.

    python benchmarks/service_overhead.py                       # defaults below, a few minutes
    python benchmarks/service_overhead.py --workers 1 4 --sizes 100 1000 --trials 10
    python benchmarks/service_overhead.py --pg postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from children import json_children  # noqa: E402

SPEC = """
[study]
name = "{name}"
[budget]
trials = {budget}
[worker]
heartbeat_interval = 30
grace_period = 120
[sampler]
name = "tpe"
n_startup_trials = 10
[pruner]
name = "median"
n_startup_trials = 5
n_min_trials = 3
[base]
epochs = 10
[base.data]
system = "damped_oscillator"
[space.optimizer]
choices = ["adam", "adamw", "lion", "rmsprop", "momentum", "dadaptadam"]
[space.optimizer.lr]
per_optimizer = true
[space.optimizer.d0]
low = 1e-8
high = 1e-4
log = true
[space.optimizer.weight_decay]
choices = [0.0, 1e-5, 1e-4]
[space.model.form]
choices = ["structured", "free"]
[space.model.hidden]
low = 16
high = 512
step = 16
[space.model.depth]
low = 1
high = 4
[space.model.activation]
choices = ["swish", "softplus", "tanh"]
[space.loss]
choices = ["mse", "l1_mean", "huber"]
[space.batch_size]
choices = [64, 128, 256, 512]
"""


def cpu() -> float:
    return time.process_time()  # user + sys of every thread, at nanosecond resolution


MARKS: list[float] = []  # CPU time at the start of each trial's objective: steady-state cost per trial
FIT_CPU: list[float] = []  # per trial, the CPU the stand-in for `fit` spent on fit's own work (its files), reports excluded


def steady(trials: int) -> dict:
    """CPU per trial between the first and the last trial's start: every cycle (tell, callbacks,
    ask, sampling, objective) counted once, the process's one-off setup left out, and so is the
    stand-in fit's own work (writing the checkpoint and metrics.json is training's job, which
    a plain Optuna user's objective would do too); its reports and pruning checks are counted."""
    fit = sum(FIT_CPU[: len(MARKS) - 1])
    per = (MARKS[-1] - MARKS[0] - fit) / (len(MARKS) - 1) if len(MARKS) > 1 else float("nan")
    return {"cpu_per_trial": per, "trials": trials, "fit_cpu_per_trial": fit / max(len(MARKS) - 1, 1)}


def objective_value(flat: dict) -> float:
    """A deterministic stand-in for a validation error, so TPE and the pruner have structure to work on."""
    import math

    return (math.log10(flat.get("optimizer.lr") or 1e-3) + 3) ** 2 / 10 + 16 / flat["model.hidden"] + 0.01 * flat["model.depth"]


def noop_fit(config, report=None, out_dir=None, metrics=None):
    """No training: 10 reports, then a tiny checkpoint and metrics.json, as fit writes them."""
    from dlnn_core.train import FitResult

    MARKS.append(cpu())
    start, in_reports = MARKS[-1], 0.0
    try:
        value = objective_value(config.to_flat())
        for epoch in range(1, config.epochs + 1):
            if report:
                t = cpu()
                try:
                    report(epoch, value * (1 + 1 / epoch))
                finally:
                    in_reports += cpu() - t
        metrics = {"val_rel_mse": value, "test_rel_mse": value, "rollout_error": value, "wall_time_s": 0.0, "epochs": float(config.epochs)}
        checkpoint = None
        if out_dir is not None:
            out = Path(out_dir)
            checkpoint = out / "model.pt"
            checkpoint.write_bytes(os.urandom(4096))
            (out / "metrics.json").write_text(json.dumps(metrics))
        return FitResult("ok", None, None, config.epochs, config.epochs, metrics, [], str(checkpoint) if checkpoint else None,
                         0.0, "cpu (noop)", config.to_dict())
    finally:
        FIT_CPU.append(cpu() - start - in_reports)


# ----------------------------------------------------------------------------- children


def child_ours(url: str, study: str, trials: int, artifacts: str) -> dict:
    from dlnn_studies.study.worker import run_worker

    run_worker(url, study, n_trials=trials, fit_fn=noop_fit, install_signals=False, artifacts=artifacts, plots=False,
               log=lambda m: None)
    return steady(trials)


def child_plain(url: str, study: str, trials: int, artifacts: str) -> dict:
    import optuna

    from dlnn_studies.spec.samplers import build_pruner, build_sampler
    from dlnn_studies.spec.space import grid_space
    from dlnn_studies.spec.schema import parse_spec
    from dlnn_studies.store.urls import normalize_url

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(normalize_url(url)) if url != "memory" else None
    raw = optuna.load_study(study_name=study, storage=storage).user_attrs["dlnn:spec"]
    spec = parse_spec(raw)
    sampler = build_sampler(spec.sampler, spec.sampler_options, random.randrange(2**31), grid_space(spec.space))
    pruner = build_pruner(spec.pruner, spec.pruner_options, 10)
    s = optuna.load_study(study_name=study, storage=storage, sampler=sampler, pruner=pruner)

    s.optimize(plain_objective(spec.space, spec.base), n_trials=trials)
    return steady(trials)


def plain_objective(space, base, store=None):
    """What a user writes with plain Optuna: the same parameters, 10 reports with pruning checks.
    With an artifact store, also what the service records (plain + records): the worker's identity,
    the TrainConfig built and stored, lr_rel, the stand-in fit run in a temporary folder, the device,
    the metrics (one system attr and each as a user attr), the checkpoint uploaded with Optuna's own
    store, and the constraint (set on every trial, the plain way)."""
    import warnings

    import optuna

    from dlnn_core.optim import relative_lr
    from dlnn_studies.store.optuna_private import set_trial_system_attr
    from dlnn_studies.spec.space import suggest
    from dlnn_studies.study.worker import worker_identity

    base_flat = base.to_flat()
    worker = worker_identity(0, None, {})

    def objective(trial):
        if store is None:
            MARKS.append(cpu())
            flat = suggest(trial, space, base_flat)
            value = objective_value({**base_flat, **flat})
            for epoch in range(1, 11):
                trial.report(value * (1 + 1 / epoch), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()
            return value
        flat = suggest(trial, space, base_flat)  # noop_fit marks the cycle (same period, another phase)
        config = base.with_flat(flat)
        trial.set_user_attr("worker", worker["id"])  # who ran it, as the service keeps it
        set_trial_system_attr(trial, "worker", worker)
        set_trial_system_attr(trial, "config", config.to_dict())
        trial.set_user_attr("lr_rel", relative_lr(config.optimizer.name, config.optimizer.lr))

        def report(epoch, value):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        with tempfile.TemporaryDirectory() as out:
            result = noop_fit(config, report, out)
            trial.set_user_attr("device", result.device)
            set_trial_system_attr(trial, "metrics", result.metrics)
            for name, value in result.metrics.items():
                trial.set_user_attr(name, value)
            optuna.artifacts.upload_artifact(artifact_store=store, file_path=result.checkpoint, study_or_trial=trial)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial.set_constraint("diverged", 0.0)  # feasible; the service writes no constraint for a feasible trial
        return result.metrics["val_rel_mse"]

    return objective


def in_memory(kind: str, trials: int, artifacts: str) -> dict:
    """One process on Optuna's InMemoryStorage: the same pieces as `run_worker`, minus a database."""
    import optuna

    from dlnn_studies.spec.samplers import build_pruner, build_sampler
    from dlnn_studies.study.service import SPEC_ATTR, build_study
    from dlnn_studies.spec.space import grid_space
    from dlnn_studies.spec.schema import parse_spec
    from dlnn_studies.store.storage import artifact_store
    from dlnn_studies.study.objective import Objective
    from dlnn_studies.study.stop import StopFlag
    from dlnn_studies.study.worker import worker_identity

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = parse_spec(__import__("tomllib").loads(SPEC.format(name="mem", budget=10**6)))
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="mem").set_user_attr(SPEC_ATTR, spec.raw)
    MARKS.clear()
    FIT_CPU.clear()
    if kind == "ours":
        study = build_study(storage, "mem", spec, 0)
        objective = Objective(spec, StopFlag(), worker_identity(0, None, {}), None, artifact_store(artifacts), noop_fit,
                              lambda m: None, False)
        study.optimize(objective, n_trials=trials, catch=(Exception,), callbacks=[lambda s, t: None])
    else:
        s = optuna.load_study(study_name="mem", storage=storage,
                              sampler=build_sampler(spec.sampler, spec.sampler_options, 0, grid_space(spec.space)),
                              pruner=build_pruner(spec.pruner, spec.pruner_options, 10))
        store = optuna.artifacts.FileSystemArtifactStore(artifacts) if kind == "plain+records" else None
        s.optimize(plain_objective(spec.space, spec.base, store), n_trials=trials)
    return steady(trials)


def residual_parts(artifacts: str, n: int = 300) -> dict[str, float]:
    """CPU ms per call of the two things the service does per trial that plain+records does not:
    Optuna's deep copy of the finished trial for the worker's after-trial callback (`study.optimize`
    copies it for each callback), and the checkpoint written atomically and durably (DirectoryStore:
    temporary file, fsync, rename, fsync of the folder) instead of Optuna's plain FileSystemArtifactStore write."""
    import copy
    import io

    import optuna

    from dlnn_studies.store.artifacts import DirectoryStore
    from dlnn_studies.study.service import SPEC_ATTR, build_study
    from dlnn_studies.spec.schema import parse_spec
    from dlnn_studies.store.storage import artifact_store
    from dlnn_studies.study.objective import Objective
    from dlnn_studies.study.stop import StopFlag
    from dlnn_studies.study.worker import worker_identity

    spec = parse_spec(__import__("tomllib").loads(SPEC.format(name="parts", budget=10**6)))
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="parts").set_user_attr(SPEC_ATTR, spec.raw)
    objective = Objective(spec, StopFlag(), worker_identity(0, None, {}), None, artifact_store(artifacts), noop_fit, lambda m: None, False)
    study = build_study(storage, "parts", spec, 0)
    study.optimize(objective, n_trials=20, catch=(Exception,))
    trial = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))[-1]
    body = os.urandom(4096)
    plain, durable = optuna.artifacts.FileSystemArtifactStore(artifacts), DirectoryStore(artifacts)

    def per_call(fn) -> float:
        fn()
        start = cpu()
        for _ in range(n):
            fn()
        return (cpu() - start) / n * 1e3

    return {"deep copy of a finished trial": per_call(lambda: copy.deepcopy(trial)),
            "durable checkpoint write (4 KB)": per_call(lambda: durable.write("parts-durable", io.BytesIO(body))),
            "Optuna's plain write (4 KB)": per_call(lambda: plain.write("parts-plain", io.BytesIO(body)))}


# ----------------------------------------------------------------------------- parent


def pg_database(admin: str) -> tuple[str, str]:
    import psycopg2

    name = f"dlnn_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name, admin.rsplit("/", 1)[0] + "/" + name


def drop_database(admin: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def launch(url: str, name: str, budget: int) -> None:
    from dlnn_studies.study.launch import launch as service_launch
    from dlnn_studies.spec.schema import parse_spec

    spec = parse_spec(__import__("tomllib").loads(SPEC.format(name=name, budget=budget)))
    service_launch(spec, url, log=lambda m: None)


def populate(url: str, name: str, n: int, seed: int = 0) -> float:
    """Add n finished trials (70 % COMPLETE with 10 intermediate values, 30 % PRUNED early) drawn
    from the space, bulk-inserted into Optuna's tables (adding them one by one through the API
    takes minutes for 5,000); what Optuna reads back is the same as for trials it wrote itself."""
    import datetime

    import optuna
    import sqlalchemy
    from optuna.distributions import distribution_to_json
    from dlnn_studies.store.optuna_private import rdb_models as models

    from dlnn_studies.spec.space import suggest
    from dlnn_studies.spec.schema import parse_spec
    from dlnn_studies.store.urls import normalize_url

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    start = time.perf_counter()
    engine = sqlalchemy.create_engine(normalize_url(url))
    storage = optuna.storages.RDBStorage(normalize_url(url))
    study_id = storage.get_study_id_from_name(name)
    spec = parse_spec(storage.get_study_user_attrs(study_id)["dlnn:spec"])
    base_flat = spec.base.to_flat()
    rng = random.Random(seed)
    template = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    with engine.begin() as conn:
        number = conn.execute(sqlalchemy.select(sqlalchemy.func.count()).select_from(models.TrialModel.__table__)
                              .where(models.TrialModel.__table__.c.study_id == study_id)).scalar()
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        trials, params, values, inter, user, system = [], [], [], [], [], []
        first_id = (conn.execute(sqlalchemy.select(sqlalchemy.func.max(models.TrialModel.__table__.c.trial_id))).scalar() or 0) + 1
        for i in range(n):
            t = template.ask()
            flat = suggest(t, spec.space, base_flat)
            value = objective_value({**base_flat, **flat})
            template.tell(t, value)
            pruned = rng.random() < 0.3
            trial_id = first_id + i
            trials.append({"trial_id": trial_id, "number": number + i, "study_id": study_id,
                           "state": "PRUNED" if pruned else "COMPLETE", "datetime_start": now, "datetime_complete": now})
            for pname, dist in t.distributions.items():
                params.append({"trial_id": trial_id, "param_name": pname, "param_value": dist.to_internal_repr(t.params[pname]),
                               "distribution_json": distribution_to_json(dist)})
            if not pruned:
                v, vt = models.TrialValueModel.value_to_stored_repr(value)
                values.append({"trial_id": trial_id, "objective": 0, "value": v, "value_type": vt.name})
            for step in range(1, rng.randint(2, 4) if pruned else 11):
                iv, ivt = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value * (1 + 1 / step))
                inter.append({"trial_id": trial_id, "step": step, "intermediate_value": iv, "intermediate_value_type": ivt.name})
            user.append({"trial_id": trial_id, "key": "status", "value_json": json.dumps("pruned" if pruned else "ok")})
        for model, rows in ((models.TrialModel, trials), (models.TrialParamModel, params), (models.TrialValueModel, values),
                            (models.TrialIntermediateValueModel, inter), (models.TrialUserAttributeModel, user),
                            (models.TrialSystemAttributeModel, system)):
            if rows:
                conn.execute(model.__table__.insert(), rows)
        if conn.dialect.name == "postgresql":  # keep the id sequence ahead of the ids written here
            conn.execute(sqlalchemy.text("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), (SELECT max(trial_id) FROM trials))"))
    engine.dispose()
    return time.perf_counter() - start


def run_children(kind: str, url: str, name: str, workers: int, trials: int, artifacts: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--url", url, "--study", name, "--trials", str(trials), "--artifacts", artifacts]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    results = json_children(cmd, workers, env, f"{kind} worker")
    total = sum(r["trials"] for r in results)
    return {"cpu_per_trial": sum(r["cpu_per_trial"] for r in results) / len(results), "trials": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default=os.environ.get("DLNN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="PostgreSQL admin URL; a scratch database is created and dropped")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 4, 16], help="process counts (default 1 4 16; none: in memory only)")
    parser.add_argument("--trials", type=int, default=12, help="trials per process in table 1 (default 12)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 5000], help="finished trials already in the study (default 100 1000 5000)")
    parser.add_argument("--size-trials", type=int, default=10, help="trials measured per size (default 10)")
    parser.add_argument("--memory-rounds", type=int, default=3, help="in-memory runs of each kind, alternating; the lowest counts (default 3)")
    parser.add_argument("--child", choices=["ours", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        fn = child_ours if args.child == "ours" else child_plain
        print(json.dumps(fn(args.url, args.study, args.trials, args.artifacts)))
        return 0

    import warnings

    warnings.filterwarnings("ignore")
    artifacts = tempfile.mkdtemp(prefix="dlnn-bench-artifacts-")
    rows = []
    print(f"# service overhead, CPU-seconds per trial (client processes), python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'storage':<26}{'procs':>6}{'trials':>8}{'plain':>10}{'ours':>10}{'ratio':>8}")
    mem_trials = max(args.trials, 100)  # cheap in memory: past TPE's random start-up trials
    mem: dict[str, float] = {}
    for _ in range(args.memory_rounds):  # alternating, the lowest of each: the neighbours' noise hits all three
        for kind in ("plain", "plain+records", "ours"):
            mem[kind] = min(mem.get(kind, float("inf")), in_memory(kind, mem_trials, artifacts)["cpu_per_trial"])
    for baseline in ("plain+records", "plain"):  # the headline: the same records kept by hand
        row = (f"memory ({baseline})", 1, mem_trials, mem[baseline], mem["ours"])
        rows.append(row)
        print(f"{row[0]:<26}{row[1]:>6}{row[2]:>8}{row[3]:>10.4f}{row[4]:>10.4f}{row[4] / row[3]:>8.2f}", flush=True)
    print("  what the service does per trial beyond plain+records, CPU ms per call: "
          + ", ".join(f"{k} {v:.3f}" for k, v in residual_parts(artifacts).items()), flush=True)
    db, url = pg_database(args.pg)
    try:
        for n in args.workers:
            per = args.trials
            res = {}
            for kind in ("plain", "ours"):
                name = f"{kind}-{n}"
                launch(url, name, 10**6)
                res[kind] = run_children(kind, url, name, n, per, artifacts)
            row = ("postgresql", n, res["ours"]["trials"], res["plain"]["cpu_per_trial"], res["ours"]["cpu_per_trial"])
            rows.append(row)
            print(f"{row[0]:<26}{row[1]:>6}{row[2]:>8}{row[3]:>10.4f}{row[4]:>10.4f}{row[4] / row[3]:>8.2f}", flush=True)

        if args.sizes:
            print(f"\n{'finished':>9}{'trials':>8}{'plain':>10}{'ours':>10}{'ratio':>8}   (1 process, PostgreSQL, CPU-s per trial)")
            done = 0
            launch(url, "sized", 10**6)
            for size in sorted(args.sizes):
                took = populate(url, "sized", size - done, seed=size)
                done = size
                res = {}
                for kind in ("plain", "ours"):
                    res[kind] = run_children(kind, url, "sized", 1, args.size_trials, artifacts)
                    done += args.size_trials
                print(f"{size:>9}{args.size_trials:>8}{res['plain']['cpu_per_trial']:>10.4f}{res['ours']['cpu_per_trial']:>10.4f}"
                      f"{res['ours']['cpu_per_trial'] / res['plain']['cpu_per_trial']:>8.2f}   (filled in {took:.0f} s)", flush=True)
    finally:
        drop_database(args.pg, db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
