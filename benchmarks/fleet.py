"""A fleet of real `dlnn work` processes on one PostgreSQL study, measured: N workers share one study
named `fleet` (left in the database at the end) with a budget of M trials, and the run reports
whether every budgeted trial was done exactly once, the peak connections (pg_stat_activity), each
worker's ask and tell times, and the trials per second the storage sustained.

Every worker is a separate process running the `dlnn work fleet` command (argument parsing, GPU-slot
check, run_worker, the real Objective, sampler, budget lock and heartbeat); only training is a
stand-in, injected through run_worker's `fit_fn`: it sleeps `--epoch-s` per epoch and reports each
epoch as fit does, and imports no torch, so a worker is small and 150+ of them fit in this machine's
memory. Each worker writes one JSON line per event to its own file: `ask` (ServiceStudy.ask: the budget
lock and count, Optuna's trial creation and the sampler), `stale` (the stale-trial check Optuna runs
before every ask), `tell` (from the objective's return to the worker's after_trial callback: the
heartbeat's stop, Optuna's tell and the trial's final writes) and `reports` (the per-epoch reports of
a trial, together).

    python benchmarks/fleet.py --storage postgresql://postgres@127.0.0.1:5432/dlnn_fleet --workers 90 --trials 450
    python benchmarks/fleet.py --own-postgres 200 --workers 180 --trials 900         # a server of its own
    python benchmarks/fleet.py --storage URL --workers 150 --trials 750 --proxy       # through `dlnn proxy`
    python benchmarks/fleet.py --own-postgres 100 --workers 90 --trials 450 --restart-at 0.4
    python benchmarks/fleet.py --storage URL --workers 90 --trials 450 --kill-every 3

`--own-postgres MAX_CONNECTIONS` runs initdb and pg_ctl (from `--pg-bin`) in a temporary folder, on a
free 127.0.0.1 port, and removes that server at the end; only that server is ever restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STUDY = "fleet"
EVENTS_ENV = "DLNN_FLEET_EVENTS"  # a child's event file
STUB_ENV = "DLNN_FLEET_STUB"  # "epochs,epoch_s" of the stand-in for fit
PG_BIN = "/usr/lib/postgresql/15/bin"
MIN_AVAILABLE_GIB = 3.0  # the fleet is stopped if the machine's available memory falls below this

SPEC = """
[study]
name = "{name}"
[budget]
trials = {trials}
[worker]
heartbeat_interval = {heartbeat}
grace_period = {grace}
[sampler]
name = "{sampler}"
[pruner]
name = "none"
[base]
epochs = {epochs}
batch_size = 128
[base.data]
system = "damped_oscillator"
n_train = 256
n_val = 128
n_test = 128
n_rollout = 2
rollout_steps = 20
[base.model]
form = "structured"
hidden = 16
activation = "swish"
[space.optimizer]
choices = ["adam", "rmsprop"]
[space.optimizer.lr]
per_optimizer = true
[space.model.hidden]
low = 16
high = 64
step = 16
"""


# ------------------------------------------------------------------------------ the worker process


@dataclass(frozen=True)
class StubResult:
    """The fields of dlnn_core.train.FitResult that the worker reads (that class lives beside torch)."""

    status: str
    diverged_epoch: int | None
    reason: str | None
    best_epoch: int | None
    epochs_run: int
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    checkpoint: str | None
    wall_time_s: float
    device: str
    config: dict[str, Any]


def stub_fit(epochs: int, epoch_s: float, note):
    """fit's contract without training: `epochs` epochs of `epoch_s` seconds, each reported."""
    import math

    def fit(config, report=None, out_dir=None, metrics=None):
        start = time.perf_counter()
        value = (math.log10(config.optimizer.lr or 1e-3) + 3) ** 2 / 10 + 1 / config.model.hidden
        reporting = 0.0
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            if report:
                t = time.perf_counter()
                report(epoch, value * (1 + 1 / epoch))
                reporting += time.perf_counter() - t
        note("reports", s=reporting)
        wall = time.perf_counter() - start
        out = {m: value for m in (metrics or ["val_rel_mse"])}
        return StubResult("ok", None, None, epochs, epochs, out, [], None, wall, "cpu (stub)", config.to_dict())

    return fit


def child() -> int:
    """One fleet worker: `dlnn work fleet` with the stand-in fit and clocks around ask and tell."""
    events = open(os.environ[EVENTS_ENV], "a", buffering=1)
    pid = os.getpid()

    def note(event: str, **fields) -> None:
        events.write(json.dumps({"e": event, "pid": pid, "t": time.time(), **fields}) + "\n")

    note("start")
    import optuna

    from dlnn_studies.cli.main import main
    from dlnn_studies.store.optuna_private import retry_history, trial_id
    from dlnn_studies.study import service, worker

    state = {"ended": None}
    real_ask, real_call, real_stale = service.ServiceStudy.ask, worker.Objective.__call__, optuna.storages.fail_stale_trials

    def ask(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            trial = real_ask(self, *args, **kwargs)
        except service.BudgetReached:
            note("budget", s=time.perf_counter() - t)
            raise
        note("ask", s=time.perf_counter() - t, n=trial.number, retry=bool(retry_history(self.storage.get_trial(trial_id(trial)))))
        return trial

    def call(self, trial):
        try:
            return real_call(self, trial)
        finally:
            state["ended"] = (time.perf_counter(), trial.number)

    def stale(study):
        t = time.perf_counter()
        try:
            return real_stale(study)
        finally:
            note("stale", s=time.perf_counter() - t)

    prefix = f"[{socket.gethostname()}:{pid}]"

    def log(message: str) -> None:
        ended = state["ended"]
        if ended is not None and message.startswith(f"trial {ended[1]} "):  # after_trial, right after Optuna's tell
            note("tell", s=time.perf_counter() - ended[0], n=ended[1], state=message.split()[2].rstrip(":"))
            state["ended"] = None
        print(f"{prefix} {message}", file=sys.stderr, flush=True)

    real_lock = service.study_lock

    @contextlib.contextmanager
    def lock(storage, study_id):
        t = time.perf_counter()
        with real_lock(storage, study_id) as conn:
            got = time.perf_counter()
            try:
                yield conn
            finally:
                note("lock", wait=got - t, hold=time.perf_counter() - got)

    service.ServiceStudy.ask, worker.Objective.__call__, optuna.storages.fail_stale_trials = ask, call, stale
    service.study_lock = lock
    epochs, epoch_s = os.environ[STUB_ENV].split(",")
    worker.run_worker = functools.partial(worker.run_worker, fit_fn=stub_fit(int(epochs), float(epoch_s), note), log=log)
    code = main(["work", STUDY, "--no-plots", "--seed", os.environ.get("DLNN_FLEET_SEED", "0")])
    note("exit", code=code, torch="torch" in sys.modules)
    return code


# ------------------------------------------------------------------------------ a server of its own


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user there."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnPostgres:
    """A throwaway PostgreSQL server (initdb in a temporary folder, 127.0.0.1 only) with its own
    max_connections; restartable, and removed by `stop`."""

    def __init__(self, max_connections: int, pg_bin: str = PG_BIN):
        self.bin, self.port = Path(pg_bin), free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dlnn-fleet-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        subprocess.run(_as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                     "--no-sync"]), check=True, capture_output=True)
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                   f"-c max_connections={max_connections}")
        self._ctl("start", "-o", options)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/{STUDY}"
        subprocess.run(_as_postgres([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                                     STUDY]), check=True, capture_output=True)

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                                     "-w", "-t", "60", *args]), check=True, capture_output=True)

    def pid(self) -> int:
        """The postmaster's pid (it changes with a restart)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def restart(self) -> float:
        """Restart the server (fast shutdown: every connection is cut); returns the seconds it took."""
        t = time.monotonic()
        self._ctl("restart", "-m", "fast")
        return time.monotonic() - t

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("stop", "-m", "fast")
        shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------------------------ watching the fleet


def _memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of a live process in KiB: PSS splits shared pages between the processes sharing them."""
    try:
        rss = int(next(line for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:")).split()[1])
        pss = int(next(line for line in open(f"/proc/{pid}/smaps_rollup") if line.startswith("Pss:")).split()[1])
        return rss, pss
    except (OSError, StopIteration, ValueError):
        return None


def _available_gib() -> float:
    return int(next(line for line in open("/proc/meminfo") if line.startswith("MemAvailable:")).split()[1]) / 2**20


TICK = os.sysconf("SC_CLK_TCK")


def _process_cpu() -> dict[int, tuple[str, int, float]]:
    """{pid: (command, parent pid, CPU seconds so far)} of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = open(f"/proc/{entry.name}/stat").read()
            comm, rest = raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()
            out[int(entry.name)] = (comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / TICK)
    return out


def _cpu_busy() -> tuple[float, float]:
    fields = [float(x) for x in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Watcher(threading.Thread):
    """Samples the fleet database's connections (pg_stat_activity, client backends, its own excluded)
    and trials by state every `every_s`, the machine's CPU, and the workers' memory every few seconds;
    survives a restarting server (a failed sample is counted, not fatal)."""

    def __init__(self, admin_dsn: str, database: str, every_s: float = 0.25, server_pid: int | None = None):
        super().__init__(daemon=True)
        self.server_pid = server_pid  # the postmaster of a server of our own: its backends are the fleet's
        self.proxy_pid: int | None = None  # `dlnn proxy`'s process: its share of the workers' cores, counted apart too
        self.cpu: list[dict[str, float]] = []  # per memory sample: cores used by the workers, the server, the rest
        self._last_cpu: tuple[float, dict] | None = None
        self.admin_dsn, self.database, self.every_s = admin_dsn, database, every_s
        self.samples: list[dict[str, Any]] = []
        self.failed = 0
        self.pids: set[int] = set()
        self.memory: dict[int, tuple[int, int]] = {}  # pid -> largest (RSS, PSS) seen
        self.total_pss_kib = 0
        self.low_memory = False
        self.done = threading.Event()

    def run(self) -> None:
        import psycopg2

        conn, last_memory, cpu = None, 0.0, _cpu_busy()
        while not self.done.is_set():
            now = time.time()
            if now - last_memory >= 2.0:
                self._sample_memory()
                last_memory = now
            try:
                if conn is None:
                    conn = psycopg2.connect(self.admin_dsn, connect_timeout=3)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FILTER (WHERE datname = %s), count(*), "
                                "count(*) FILTER (WHERE datname = %s AND state = 'active') FROM pg_stat_activity "
                                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()", (self.database, self.database))
                    fleet, server, active = cur.fetchone()
                    states = {}
                    if self.database == conn.info.dbname:
                        cur.execute("SELECT t.state, count(*) FROM trials t JOIN studies s USING (study_id) "
                                    "WHERE s.study_name = %s GROUP BY t.state", (STUDY,))
                        states = dict(cur.fetchall())
                busy = _cpu_busy()
                share = (busy[0] - cpu[0]) / max(1e-9, busy[1] - cpu[1])
                cpu = busy
                self.samples.append({"t": now, "fleet": fleet, "server": server, "active": active, "cpu": share,
                                     **{k.lower(): v for k, v in states.items()}})
            except Exception:
                self.failed += 1
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            self.done.wait(self.every_s)
        with contextlib.suppress(Exception):
            conn.close()

    def _sample_cpu(self) -> None:
        """Cores used since the last sample by the workers (and proxy), the PostgreSQL server (all its
        processes; on the shared server others' too) and everything else; a process born and gone
        between two samples is not seen."""
        now, procs = time.monotonic(), _process_cpu()
        if self._last_cpu is not None:
            then, before = self._last_cpu
            used = {"workers": 0.0, "postgres": 0.0, "other": 0.0, "proxy": 0.0}
            for pid, (comm, ppid, cpu) in procs.items():
                delta = cpu - before[pid][2] if pid in before else 0.0
                if pid in self.pids:
                    used["workers"] += delta
                    if pid == self.proxy_pid:
                        used["proxy"] += delta
                elif comm == "postgres" and (self.server_pid is None or pid == self.server_pid or ppid == self.server_pid):
                    used["postgres"] += delta
                else:
                    used["other"] += delta
            self.cpu.append({"t": time.time(), **{k: v / max(1e-9, now - then) for k, v in used.items()}})
        self._last_cpu = (now, procs)

    def _sample_memory(self) -> None:
        self._sample_cpu()
        total = 0
        for pid in list(self.pids):
            mem = _memory_kib(pid)
            if mem is None:
                continue
            total += mem[1]
            old = self.memory.get(pid, (0, 0))
            self.memory[pid] = (max(old[0], mem[0]), max(old[1], mem[1]))
        self.total_pss_kib = max(self.total_pss_kib, total)
        if _available_gib() < MIN_AVAILABLE_GIB:
            self.low_memory = True

    def complete(self) -> int:
        return self.samples[-1].get("complete", 0) if self.samples else 0


# ------------------------------------------------------------------------------ the run


def _launch(url: str, trials: int, epochs: int, heartbeat: int, grace: int, sampler: str, folder: Path) -> None:
    """A fresh study `fleet` (one left by an earlier run is deleted first)."""
    import optuna

    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.store.storage import close_storage, open_storage
    from dlnn_studies.study.launch import launch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url, create_schema=True)
    try:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=STUDY, storage=storage)
    finally:
        close_storage(storage)
    path = folder / "fleet.toml"
    path.write_text(SPEC.format(name=STUDY, trials=trials, epochs=epochs, heartbeat=heartbeat, grace=grace, sampler=sampler))
    launch(load_spec(path), url, log=lambda m: None)


def _admin_dsn(url: str) -> tuple[str, str]:
    """(a psycopg2 DSN for the fleet's database, its name)."""
    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    return dsn, dsn.rsplit("/", 1)[1].split("?")[0]


def _env(url: str, folder: Path, epochs: int, epoch_s: float) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"DLNN_STORAGE": url, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", STUB_ENV: f"{epochs},{epoch_s}",
                "DLNN_GPU_SLOTS": "off"})  # CPU stand-ins: no GPU slot to claim
    return env


class Fleet:
    """The worker processes, each with its own event file and log."""

    def __init__(self, folder: Path, env: dict[str, str], watcher: Watcher):
        self.folder, self.env, self.watcher = folder, env, watcher
        self.procs: list[subprocess.Popen] = []
        self.killed: list[dict[str, Any]] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            i = len(self.procs)
            env = {**self.env, EVENTS_ENV: str(self.folder / f"events-{i}.jsonl"), "DLNN_FLEET_SEED": str(i)}
            with open(self.folder / f"worker-{i}.log", "w") as log:
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child"], cwd=self.folder, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(proc)
            self.watcher.pids.add(proc.pid)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]

    def training(self, i: int) -> int | None:
        """The first attempt of a trial (not a retry) that worker i has asked for and not yet told,
        from its event file: a retry killed again would count against the spec's max_retry."""
        current = None
        with contextlib.suppress(OSError):
            for line in open(self.folder / f"events-{i}.jsonl"):
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                if event["e"] == "ask":
                    current = None if event["retry"] else event["n"]
                elif event["e"] == "tell" and event["n"] == current:
                    current = None
        return current

    def kill_one(self) -> bool:
        """SIGKILL one worker that is training a first attempt, and start another in its place."""
        busy = [(i, n) for i in self.alive() if (n := self.training(i)) is not None]
        if not busy:
            return False
        i, number = random.choice(busy)
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()
        self.killed.append({"worker": i, "pid": self.procs[i].pid, "trial": number, "t": time.time()})
        self.start(1)
        return True

    def stop(self, grace_s: float = 20.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace_s
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, end - time.monotonic()))
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def run_fleet(url: str, workers: int, trials: int, *, proxy: bool = False, epochs: int = 4, epoch_s: float = 0.75,
              heartbeat: int = 2, grace: int = 10, sampler: str = "random", server: OwnPostgres | None = None,
              restart_at: float | None = None, kill_every: float | None = None, max_kills: int | None = None, time_limit_s: float = 600.0,
              keep: Path | None = None) -> dict[str, Any]:
    """Run the fleet and return its figures and checks (see `summarize`)."""
    folder = keep or Path(tempfile.mkdtemp(prefix="dlnn-fleet-"))
    folder.mkdir(parents=True, exist_ok=True)
    _launch(url, trials, epochs, heartbeat, grace, sampler, folder)
    dsn, database = _admin_dsn(url)
    watcher = Watcher(dsn, database, server_pid=server.pid() if server else None)
    watcher.start()
    proxy_proc, worker_url = None, url
    if proxy:
        port = free_port()
        proxy_proc = subprocess.Popen([sys.executable, "-m", "dlnn_studies.cli.main", "proxy", "--storage", url, "--host",
                                       "127.0.0.1", "--port", str(port)], cwd=folder, env=_env(url, folder, epochs, epoch_s),
                                      stdout=open(folder / "proxy.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        watcher.pids.add(proxy_proc.pid)
        watcher.proxy_pid = proxy_proc.pid
        worker_url = f"grpc://127.0.0.1:{port}"
    fleet = Fleet(folder, _env(worker_url, folder, epochs, epoch_s), watcher)
    started = time.time()
    fleet.start(workers)
    restarted, stopped_by, next_kill = None, None, time.monotonic() + (kill_every or 0)
    deadline = time.monotonic() + time_limit_s
    try:
        while fleet.alive():
            time.sleep(0.2)
            if watcher.low_memory:
                stopped_by = f"available memory below {MIN_AVAILABLE_GIB} GiB"
                break
            if time.monotonic() > deadline:
                stopped_by = f"time limit of {time_limit_s:g} s"
                break
            if server is not None and restart_at is not None and restarted is None and watcher.complete() >= restart_at * trials:
                restarted = {"at_complete": watcher.complete(), "t": time.time()}
                restarted["took_s"] = server.restart()
                watcher.server_pid = server.pid()
            kills_left = max_kills is None or len(fleet.killed) < max_kills
            if kill_every and kills_left and time.monotonic() >= next_kill and watcher.complete() < trials:
                if fleet.kill_one():
                    next_kill = time.monotonic() + kill_every
    finally:
        fleet.stop()
        if proxy_proc is not None:
            proxy_proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy_proc.wait(20)
            if proxy_proc.poll() is None:
                proxy_proc.kill()
        watcher.done.set()
        watcher.join(10)
    ended = time.time()
    result = summarize(url, folder, fleet, watcher, workers=workers, trials=trials, started=started, ended=ended,
                       trial_s=epochs * epoch_s, restarted=restarted, stopped_by=stopped_by, proxy=proxy)
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------ what it did


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1]}


def _events(folder: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a killed worker's last line may be cut
                out.append(json.loads(line))
    return out


def summarize(url: str, folder: Path, fleet: Fleet, watcher: Watcher, *, workers: int, trials: int, started: float,
              ended: float, trial_s: float, restarted: dict | None, stopped_by: str | None, proxy: bool) -> dict[str, Any]:
    """The checks (every budgeted trial done exactly once, none left RUNNING, every trial a worker
    saw complete still complete, every killed trial retried) and the figures."""
    from optuna.trial import TrialState

    from dlnn_studies.store.storage import close_storage, open_storage
    from dlnn_studies.store.optuna_private import retry_history

    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(STUDY)
        all_trials = storage.get_all_trials(study_id, deepcopy=False)
    finally:
        close_storage(storage)
    by_number = {t.number: t for t in all_trials}
    root = {t.number: (retry_history(t) or [t.number])[0] for t in all_trials}
    slots: dict[int, list] = {}
    for t in all_trials:
        slots.setdefault(root[t.number], []).append(t)
    completes = {r: sum(t.state == TrialState.COMPLETE for t in chain) for r, chain in slots.items()}
    states = {s.name: sum(t.state == s for t in all_trials) for s in TrialState}
    events = _events(folder)
    told_complete = {e["n"] for e in events if e["e"] == "tell" and e.get("state") == "complete"}
    lost = sorted(n for n in told_complete if by_number.get(n) is None or by_number[n].state != TrialState.COMPLETE)
    retried = {}
    for kill in fleet.killed:
        chain = slots.get(root.get(kill["trial"], kill["trial"]), [])
        retried[kill["trial"]] = (by_number.get(kill["trial"]) is not None and by_number[kill["trial"]].state == TrialState.FAIL
                                  and any(t.state == TrialState.COMPLETE and t.number != kill["trial"] for t in chain))
    checks = {
        "budget_slots": len(slots),  # trials that took budget: must be the budget
        "slots_done_once": sum(c == 1 for c in completes.values()),
        "slots_done_twice_or_more": sum(c > 1 for c in completes.values()),
        "slots_not_done": sum(c == 0 for c in completes.values()),
        "left_running_or_waiting": states["RUNNING"] + states["WAITING"],
        "told_complete_then_lost": lost,
        "killed_trials": len(fleet.killed),
        "killed_trials_not_retried": sorted(n for n, ok in retried.items() if not ok),
    }
    checks["ok"] = (checks["budget_slots"] == trials and checks["slots_done_once"] == trials and not lost
                    and checks["left_running_or_waiting"] == 0 and not checks["killed_trials_not_retried"] and stopped_by is None)

    done_times = sorted(t.datetime_complete.timestamp() for t in all_trials if t.state == TrialState.COMPLETE)
    sustained = None
    if len(done_times) >= 10:
        lo, hi = done_times[len(done_times) // 10], done_times[(9 * len(done_times)) // 10]
        sustained = (0.8 * len(done_times)) / max(1e-9, hi - lo)
    bins: dict[int, int] = {}
    for t in done_times:
        bins[int((t - started) // 5)] = bins.get(int((t - started) // 5), 0) + 1
    samples = watcher.samples
    steady = [s for s in samples if done_times and done_times[len(done_times) // 10] <= s["t"] <= done_times[(9 * len(done_times)) // 10]]
    cpu_steady = [c for c in watcher.cpu if steady and steady[0]["t"] <= c["t"] <= steady[-1]["t"]]
    first_ask = min((e["t"] for e in events if e["e"] == "ask"), default=None)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("worker-*.log")))
    exits = [e for e in events if e["e"] == "exit"]
    memory = list(watcher.memory.values())
    worker_rss = sorted(m[0] for pid, m in watcher.memory.items() if pid in {p.pid for p in fleet.procs})
    return {
        "workers": workers, "trials": trials, "proxy": proxy, "trial_s": trial_s, "stopped_by": stopped_by,
        "wall_s": ended - started, "first_ask_after_s": None if first_ask is None else first_ask - started,
        "states": {k: v for k, v in states.items() if v},
        "checks": checks,
        "ask_s": _percentiles([e["s"] for e in events if e["e"] == "ask"]),
        "tell_s": _percentiles([e["s"] for e in events if e["e"] == "tell"]),
        "stale_check_s": _percentiles([e["s"] for e in events if e["e"] == "stale"]),
        "budget_lock_wait_s": _percentiles([e["wait"] for e in events if e["e"] == "lock"]),
        "budget_lock_hold_s": _percentiles([e["hold"] for e in events if e["e"] == "lock"]),
        "cores_used_steady": {k: statistics.mean([c[k] for c in cpu_steady]) for k in ("workers", "postgres", "other", "proxy")} if cpu_steady else None,
        "reports_per_trial_s": _percentiles([e["s"] for e in events if e["e"] == "reports"]),
        "trials_per_s_sustained": sustained,
        "trials_per_s_ideal": workers / trial_s,
        "trials_per_5s": [bins.get(i, 0) for i in range(max(bins) + 1)] if bins else [],
        "connections_peak": max((s["fleet"] for s in samples), default=None),
        "connections_steady_median": statistics.median([s["fleet"] for s in steady]) if steady else None,
        "server_connections_peak": max((s["server"] for s in samples), default=None),
        "active_peak": max((s["active"] for s in samples), default=None),
        "running_peak": max((s.get("running", 0) for s in samples), default=None),
        "cpu_busy_steady": statistics.mean([s["cpu"] for s in steady]) if steady else None,
        "samples": len(samples), "failed_samples": watcher.failed,
        "restart": restarted,
        "worker_rss_mib": {"median": worker_rss[len(worker_rss) // 2] / 1024, "max": worker_rss[-1] / 1024} if worker_rss else None,
        "total_pss_gib_peak": watcher.total_pss_kib / 2**20,
        "processes_measured": len(memory),
        "worker_exits": {str(c): sum(e["code"] == c for e in exits) for c in sorted({e["code"] for e in exits})},
        "workers_started": len(fleet.procs),
        "torch_imported": any(e.get("torch") for e in exits),
        "log_lines": {"too many clients": logs.count("too many clients"), "connection lost": logs.count("connection lost"),
                      "Traceback": logs.count("Traceback"), "re-queued": logs.count("re-queued")},
    }


def _ms(p: dict) -> str:
    return "–" if not p or p.get("p50") is None else f"{1000 * p['p50']:.0f} / {1000 * p['p99']:.0f}"


def render(named: list[tuple[str, dict[str, Any]]]) -> str:
    """A Markdown table of runs (name, run_fleet's result), one row each."""
    rows = ["| run | workers | max_connections | budget | done once | lost / twice / left running | killed (retried) "
            "| peak connections | ask p50 / p99 ms | tell p50 / p99 ms | lock wait p50 / p99 ms | lock hold p50 / p99 ms "
            "| trials/s sustained (N / trial length) | cores: workers / server / rest | memory: PSS total, RSS per worker | wall s |",
            "|" + " --- |" * 16]
    for name, r in named:
        c = r["checks"]
        killed = f"{c['killed_trials']} ({c['killed_trials'] - len(c['killed_trials_not_retried'])})" if c["killed_trials"] else "–"
        cores = r.get("cores_used_steady")
        proxy_cores = f" (proxy {cores['proxy']:.2f})" if cores and r["proxy"] and "proxy" in cores else ""
        cores = f"{cores['workers']:.2f}{proxy_cores} / {cores['postgres']:.2f} / {cores['other']:.2f}" if cores else "–"
        rss = r.get("worker_rss_mib") or {}
        over = f" ({c['budget_slots'] - r['trials']} over the budget)" if c["budget_slots"] > r["trials"] else ""
        rows.append(
            f"| {name} | {r['workers']}{' via proxy' if r['proxy'] else ''} | {r.get('max_connections') or '–'} | {r['trials']} "
            f"| {c['slots_done_once']}/{c['budget_slots']}{over} | {len(c['told_complete_then_lost'])} / {c['slots_done_twice_or_more']} / "
            f"{c['left_running_or_waiting']} | {killed} | {r['connections_peak']} | {_ms(r['ask_s'])} | {_ms(r['tell_s'])} "
            f"| {_ms(r.get('budget_lock_wait_s'))} | {_ms(r.get('budget_lock_hold_s'))} "
            f"| {r['trials_per_s_sustained']:.1f} ({r['trials_per_s_ideal']:.0f}) | {cores} "
            f"| {r['total_pss_gib_peak']:.1f} GiB, {rss.get('median', 0):.0f} MiB | {r['wall_s']:.0f} |")
    return "\n".join(rows)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", nargs="+", type=Path, metavar="RESULT.json", help="print earlier runs' --out files as a table")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--storage", help="PostgreSQL URL of the database that gets the study `fleet`")
    where.add_argument("--own-postgres", type=int, metavar="MAX_CONNECTIONS", help="start a throwaway server with this max_connections")
    parser.add_argument("--pg-bin", default=PG_BIN, help=f"where initdb and pg_ctl are (default {PG_BIN})")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=None, help="the study's budget (default 5 × workers)")
    parser.add_argument("--proxy", action="store_true", help="workers reach the database through `dlnn proxy`")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epoch-s", type=float, default=0.75, help="seconds per stand-in epoch")
    parser.add_argument("--heartbeat", type=int, default=2)
    parser.add_argument("--grace", type=int, default=10)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--restart-at", type=float, default=None, metavar="FRACTION",
                        help="restart the (own) server once this fraction of the budget is complete")
    parser.add_argument("--kill-every", type=float, default=None, metavar="S", help="SIGKILL a training worker every S s")
    parser.add_argument("--time-limit", type=float, default=600.0, help="stop the fleet after this many seconds")
    parser.add_argument("--keep", type=Path, default=None, help="keep the workers' logs and events in this folder")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.child:
        return child()
    if args.table:
        print(render([(path.stem, json.loads(path.read_text())) for path in args.table]))
        return 0
    if args.restart_at is not None and args.own_postgres is None:
        parser.error("--restart-at restarts only a server of its own: use --own-postgres")
    if args.storage is None and args.own_postgres is None:
        parser.error("give --storage URL or --own-postgres MAX_CONNECTIONS")
    # SIGTERM (an outer `timeout`) unwinds like Ctrl-C: the workers, the proxy and an own server are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    server = OwnPostgres(args.own_postgres, args.pg_bin) if args.own_postgres else None
    try:
        url = server.url if server else args.storage
        result = run_fleet(url, args.workers, args.trials or 5 * args.workers, proxy=args.proxy, epochs=args.epochs,
                           epoch_s=args.epoch_s, heartbeat=args.heartbeat, grace=args.grace, sampler=args.sampler,
                           server=server, restart_at=args.restart_at,
                           kill_every=args.kill_every, time_limit_s=args.time_limit, keep=args.keep)
    finally:
        if server:
            server.stop()
    result["max_connections"] = args.own_postgres
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if result["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
