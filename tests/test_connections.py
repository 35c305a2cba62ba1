"""PostgreSQL connections per worker, read from pg_stat_activity while real worker processes train:
a training worker holds one connection (GPU workers included: their slot lock is a file lock), so a
default server (max_connections 100, 3 reserved for superusers) holds 97 workers, not 48."""

from __future__ import annotations

import statistics
import threading
import time

import psycopg2
import pytest
from service_support import PG_ADMIN, pg_url, spawn, tiny_spec, write_spec  # noqa: F401 (fixture)

from dlnn_studies.study.launch import launch
from dlnn_studies.spec.schema import load_spec

WORKERS = 4


def _prepare(tmp_path, url: str, text: str) -> str:
    from dlnn_core.data import load_data

    spec = load_spec(write_spec(tmp_path, text))
    launch(spec, url, log=lambda m: None)
    load_data(spec.base.data, spec.base.data_seed)
    return spec.name


class Sampler(threading.Thread):
    """Counts the test database's connections (pg_stat_activity, this one excluded) and its RUNNING trials."""

    def __init__(self, url: str, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.url, self.every_s = url.replace("postgresql+psycopg2://", "postgresql://"), every_s
        self.samples: list[tuple[int, int]] = []  # (connections, running trials)
        self.done = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.done.is_set():
                    cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND pid <> pg_backend_pid()")
                    (connections,) = cur.fetchone()
                    cur.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'")
                    (running,) = cur.fetchone()
                    self.samples.append((connections, running))
                    time.sleep(self.every_s)
        finally:
            conn.close()


@pytest.mark.slow
def test_a_training_worker_holds_one_connection(pg_url, tmp_path):
    """Four GPU workers (two faked GPUs, two slots each) train with a 1 s heartbeat; whenever all four
    are mid-trial the database sees at most one connection per worker, plus the one budget lock of a
    worker that has just created its trial."""
    name = _prepare(tmp_path, pg_url, tiny_spec(trials=3 * WORKERS, epochs=60, heartbeat=1, grace=3))
    sampler = Sampler(pg_url)
    sampler.start()
    env = {"DLNN_GPU_COUNT": "2", "WORKERS_PER_GPU": "2", "DLNN_GPU_LOCK_DIR": str(tmp_path / "gpu-slots")}
    procs = [spawn("work", name, "--storage", pg_url, "--threads", "1", "--no-plots", cwd=tmp_path,
                   log=tmp_path / f"w{i}.log", **env) for i in range(WORKERS)]
    try:
        codes = [p.wait(300) for p in procs]
    finally:
        for p in procs:
            p.kill()
        sampler.done.set()
        sampler.join(10)
    logs = "\n".join((tmp_path / f"w{i}.log").read_text() for i in range(WORKERS))
    assert codes == [0] * WORKERS, logs
    assert len({line.split("GPU slot claimed: ")[1][:12] for line in logs.splitlines() if "GPU slot claimed" in line}) == WORKERS
    training = [c for c, running in sampler.samples if running == WORKERS]
    assert len(training) >= 20, sampler.samples  # the four trained side by side for a while
    peak = max(c for c, _ in sampler.samples)
    print(f"\n{WORKERS} GPU workers: connections while all train: median {statistics.median(training)}, "
          f"max {max(training)}; peak over the run {peak} ({len(sampler.samples)} samples)")
    assert max(training) <= WORKERS + 1, sorted(set(training))
    assert peak <= 2 * WORKERS


@pytest.fixture
def limited_role(pg_url):
    """A role that may hold 2 connections (CONNECTION LIMIT: the same refusal, SQLSTATE 53300, as a full
    server, without filling the shared one) and owns the test database; yields its URL."""
    import uuid

    role = f"dlnn_limited_{uuid.uuid4().hex[:8]}"
    base, _, db = pg_url.rpartition("/")
    admin = psycopg2.connect(base.replace("postgresql+psycopg2://", "postgresql://") + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 2')
        cur.execute(f'ALTER DATABASE "{db}" OWNER TO "{role}"')
    try:
        yield f"postgresql://{role}@127.0.0.1:5432/{db}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


def _release_later(conn, after_s: float) -> threading.Thread:
    thread = threading.Timer(after_s, conn.close)
    thread.start()
    return thread


def test_a_full_server_makes_new_connections_wait_not_fail(limited_role, tmp_path, monkeypatch):
    """A worker meets a full server when it starts, when it creates a trial (the budget lock's
    connection) or when its connection is replaced: each waits for a free slot; only after
    FULL_SERVER_PATIENCE_S is it an error, and then a connection error (a transient outage to the
    worker, which retries), not a failure of the trial."""
    from sqlalchemy import text

    from dlnn_studies.store import storage as st
    from dlnn_studies.store.budget import budget_counts

    url = limited_role
    launch(load_spec(write_spec(tmp_path, tiny_spec())), url, log=lambda m: None)
    blockers = [psycopg2.connect(url) for _ in range(2)]  # the role's slots are full
    t0 = time.monotonic()
    timer = _release_later(blockers.pop(), 1.5)
    storage = st.open_storage(url, worker=True, heartbeat_interval=1, grace_period=3)
    timer.join()
    assert time.monotonic() - t0 >= 1.4  # it waited for the slot instead of failing
    try:
        study_id = storage.get_study_id_from_name("tiny")  # the pooled connection: full again
        admin = psycopg2.connect(PG_ADMIN)  # a superuser: not held to the role's limit
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT application_name FROM pg_stat_activity WHERE datname = %s", (url.rsplit("/", 1)[1],))
                names = sorted(r[0] for r in cur.fetchall())
        finally:
            admin.close()
        assert len(names) == 2 and any(n.startswith("dlnn worker ") for n in names), names  # its one, and the blocker
        t0 = time.monotonic()
        timer = _release_later(blockers.pop(), 1.5)
        with st.study_lock(storage, study_id) as conn:  # the budget lock's connection waits too
            assert budget_counts(conn, study_id)[0] == 0
            assert conn.execute(text("SELECT current_setting('application_name')")).scalar().startswith("dlnn worker budget-lock")
        timer.join()
        assert time.monotonic() - t0 >= 1.4

        blockers.append(psycopg2.connect(url))  # full again, and nobody leaves
        monkeypatch.setattr(st, "FULL_SERVER_PATIENCE_S", 0.5)
        with pytest.raises(Exception) as failed:
            with st.study_lock(storage, study_id):
                pass
        assert st.is_connection_error(failed.value) and st._server_full(failed.value)
    finally:
        st.close_storage(storage)
        for conn in blockers:
            conn.close()


def test_a_worker_waiting_for_the_budget_lock_holds_only_the_locks_connection(pg_url, tmp_path):
    """While another process holds the study's budget lock, a waiting worker's idle pooled connection
    is closed: it waits with one connection, not two (a queue of waiting workers would fill the server),
    takes the lock once it is free, and its pool reconnects after."""
    from dlnn_studies.store import storage as st
    from service_support import wait_until

    launch(load_spec(write_spec(tmp_path, tiny_spec())), pg_url, log=lambda m: None)
    storage = st.open_storage(pg_url, worker=True, heartbeat_interval=1, grace_period=3)
    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    holder = psycopg2.connect(pg_url)
    try:
        study_id = storage.get_study_id_from_name("tiny")  # the worker's pooled connection: open, now idle

        def mine() -> list[str]:
            with admin.cursor() as cur:
                cur.execute("SELECT application_name FROM pg_stat_activity WHERE datname = %s AND application_name LIKE "
                            "'dlnn worker %%'", (pg_url.rsplit("/", 1)[1],))
                return sorted(r[0] for r in cur.fetchall())

        assert len(mine()) == 1 and "budget-lock" not in mine()[0], mine()
        with holder.cursor() as cur:  # another process holds the lock (until its transaction ends)
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (st.LOCK_NAMESPACE, study_id))
        entered = threading.Event()

        def take() -> None:
            with st.study_lock(storage, study_id):
                entered.set()

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        wait_until(lambda: any("budget-lock" in n for n in mine()), 10, what="the budget lock's connection")
        time.sleep(0.5)
        assert not entered.is_set()
        waiting = mine()
        assert len(waiting) == 1 and "budget-lock" in waiting[0], waiting  # the lock's connection only
        holder.commit()  # released
        thread.join(10)
        assert entered.is_set()
        assert storage.get_study_id_from_name("tiny") == study_id  # the pool opened a new connection
    finally:
        holder.close()
        admin.close()
        st.close_storage(storage)
