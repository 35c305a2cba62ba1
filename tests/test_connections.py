"""PostgreSQL connections per worker, read from pg_stat_activity while real worker processes train:
a training worker holds one connection (GPU workers included: their slot lock is a file lock), so a
default server (max_connections 100, 3 reserved for superusers) holds 97 workers, not 48."""

from __future__ import annotations

import statistics
import threading
import time

import psycopg2
import pytest
from service_support import pg_url, spawn, tiny_spec, write_spec  # noqa: F401 (fixture)

from workers.service import launch
from workers.spec import load_spec

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
