"""GPU slot claiming with PostgreSQL advisory locks, against the real local PostgreSQL (own database per test)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

from dlnn_studies.ops import gpu_slot
from dlnn_studies.ops.gpu_slot import Gpu, SlotError, claim_gpu_slot, claim_slot, slots_in_use

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[1]
# A worker process's first step: it claims its slot before anything has loaded torch.
CLAIMER = ("import os, sys, time; from dlnn_studies.ops import gpu_slot as m; "
           "assert 'torch' not in sys.modules, sorted(sys.modules); ")


@pytest.fixture
def db():
    """A fresh database; yields (SQLAlchemy storage URL, libpq URL)."""
    name = f"dlnn_gpuslot_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def claims():
    held = []
    yield held
    for c in held:
        c.release()


def test_two_claimers_get_different_gpus_and_a_third_finds_none(db, claims):
    _, dsn = db
    gpus = [Gpu(0), Gpu(1)]
    claims.append(claim_slot(dsn, gpus, wait_s=0))
    claims.append(claim_slot(dsn, gpus, wait_s=0))
    assert {c.gpu.index for c in claims} == {0, 1}
    with pytest.raises(SlotError, match="all 2 GPU slots are taken"):
        claim_slot(dsn, gpus, wait_s=0)
    assert slots_in_use(dsn, gpus) == {(c.gpu.index, c.slot): c.backend_pid for c in claims}


def test_workers_per_gpu_spreads_over_gpus_before_doubling_up(db, claims):
    _, dsn = db
    gpus = [Gpu(0), Gpu(1)]
    for _ in range(4):
        claims.append(claim_slot(dsn, gpus, per_gpu=2, wait_s=0))
    assert [(c.gpu.index, c.slot) for c in claims] == [(0, 0), (1, 0), (0, 1), (1, 1)]


def test_a_released_slot_is_taken_again(db, claims):
    _, dsn = db
    first = claim_slot(dsn, [Gpu(0)], wait_s=0)
    first.release()
    claims.append(claim_slot(dsn, [Gpu(0)], wait_s=0))
    assert claims[0].gpu.index == 0


def test_a_killed_workers_slot_frees_up_for_a_waiting_one(db, claims):
    """A worker process holding GPU 0 is SIGKILLed; a waiting claimer then gets GPU 0."""
    storage, dsn = db
    env = {**os.environ, "DLNN_GPU_COUNT": "1", "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    code = (CLAIMER +
            f"m.claim_gpu_slot({storage!r}); print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        with pytest.raises(SlotError):
            claim_slot(dsn, [Gpu(0)], wait_s=0)
        proc.send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        claims.append(claim_slot(dsn, [Gpu(0)], wait_s=20, poll_s=0.2))
        assert claims[0].gpu.index == 0 and time.monotonic() - t0 < 20
    finally:
        proc.kill()
        proc.wait()


def test_claim_gpu_slot_pins_cuda_visible_devices(db, claims):
    storage, _ = db
    env = {"DLNN_GPU_COUNT": "2", "WORKERS_PER_GPU": "1"}
    claim = claim_gpu_slot(storage, env=env)
    claims.append(claim)
    assert env["CUDA_VISIBLE_DEVICES"] == str(claim.gpu.index) and env["DLNN_GPU_SLOT"] == f"{claim.gpu.index}/0"
    other = {"DLNN_GPU_COUNT": "2"}
    claims.append(claim_gpu_slot(storage, env=other))
    assert {env["CUDA_VISIBLE_DEVICES"], other["CUDA_VISIBLE_DEVICES"]} == {"0", "1"}


@pytest.mark.parametrize("device, env", [
    ("cpu", {"DLNN_GPU_COUNT": "2"}),
    ("cuda:1", {"DLNN_GPU_COUNT": "2"}),
    ("auto", {"DLNN_GPU_COUNT": "2", "CUDA_VISIBLE_DEVICES": "1"}),
    ("auto", {"DLNN_GPU_COUNT": "2", "DLNN_GPU_SLOTS": "off"}),
    ("auto", {"DLNN_GPU_COUNT": "0"}),
])
def test_claim_gpu_slot_is_a_no_op_where_nothing_is_to_choose(db, device, env):
    storage, dsn = db
    before = dict(env)
    assert claim_gpu_slot(storage, device=device, env=env) is None
    assert env == before
    assert slots_in_use(dsn, [Gpu(0), Gpu(1)]) == {}


def test_storage_without_postgresql(tmp_path):
    sqlite = f"sqlite:///{tmp_path}/x.db"
    assert claim_gpu_slot(sqlite, env={"DLNN_GPU_COUNT": "1"}) is None  # one slot: nothing to coordinate
    with pytest.raises(SlotError, match="DLNN_GPU_LOCK_URL"):
        claim_gpu_slot(sqlite, env={"DLNN_GPU_COUNT": "2"})
    with pytest.raises(SlotError, match="DLNN_GPU_LOCK_URL"):
        claim_gpu_slot("grpc://proxy:13000", env={"DLNN_GPU_COUNT": "1", "WORKERS_PER_GPU": "2"})


def test_lock_url_for_a_proxy_comes_from_dlnn_gpu_lock_url(db, claims):
    _, dsn = db
    env = {"DLNN_GPU_COUNT": "2", "DLNN_GPU_LOCK_URL": dsn}
    claims.append(claim_gpu_slot("grpc://127.0.0.1:1", env=env))
    assert env["CUDA_VISIBLE_DEVICES"] == "0"


def test_gpus_with_uuids_never_collide_across_hosts(db, claims):
    """Two hosts share one database; their GPU 0s are different GPUs (UUIDs), so both take slot 0."""
    _, dsn = db
    claims.append(claim_slot(dsn, [Gpu(0, "GPU-aaaa")], wait_s=0))
    claims.append(claim_slot(dsn, [Gpu(0, "GPU-bbbb")], wait_s=0))
    assert [c.gpu.visible_id for c in claims] == ["GPU-aaaa", "GPU-bbbb"]
    # Without UUIDs, DLNN_GPU_HOST keeps hosts apart the same way.
    claims.append(claim_slot(dsn, [Gpu(0)], namespace="host-a", wait_s=0))
    claims.append(claim_slot(dsn, [Gpu(0)], namespace="host-b", wait_s=0))


def test_the_holder_re_takes_its_slot_after_its_session_is_killed(db, claims):
    _, dsn = db
    claim = claim_slot(dsn, [Gpu(0), Gpu(1)], wait_s=0, keepalive_s=0.2)
    claims.append(claim)
    old_pid = claim.backend_pid
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    admin.cursor().execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    admin.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        held = slots_in_use(dsn, [Gpu(0), Gpu(1)])
        if held.get((claim.gpu.index, 0)) not in (None, old_pid):
            break
        time.sleep(0.1)
    assert held == {(claim.gpu.index, 0): claim.backend_pid} and claim.backend_pid != old_pid


def test_settings_and_parsing():
    assert gpu_slot.parse_nvidia_smi("0, GPU-11\n1, GPU-22\n") == [Gpu(0, "GPU-11"), Gpu(1, "GPU-22")]
    assert gpu_slot.lock_url("postgresql+psycopg2://u@h:5432/db", {}) == "postgresql://u@h:5432/db"
    assert gpu_slot.lock_url("sqlite:///dlnn.db", {}) is None
    assert gpu_slot.list_gpus({"DLNN_GPU_COUNT": "3"}) == [Gpu(0), Gpu(1), Gpu(2)]
    for env, msg in [({"WORKERS_PER_GPU": "0"}, "WORKERS_PER_GPU: '0'"), ({"WORKERS_PER_GPU": "two"}, "positive integer"),
                     ({"DLNN_GPU_SLOT_WAIT": "soon"}, "DLNN_GPU_SLOT_WAIT")]:
        with pytest.raises(SlotError, match=msg):
            gpu_slot.settings_from_env(env)
    with pytest.raises(SlotError, match="DLNN_GPU_COUNT"):
        gpu_slot.list_gpus({"DLNN_GPU_COUNT": "-1"})
    keys = {gpu_slot.slot_key(g, s, "h") for g, s in gpu_slot.slot_order([Gpu(i) for i in range(8)], 4)}
    assert len(keys) == 32 and all(-(1 << 63) <= k < (1 << 63) for k in keys)


# --------------------------------------------------------------------- file locks (DLNN_GPU_LOCK_DIR)


def test_file_locks_spread_over_gpus_and_a_full_host_finds_none(tmp_path, claims):
    """The compose workers' form: flocks in a directory the host's workers share, no database connection."""
    lock_dir = str(tmp_path / "slots")
    gpus = [Gpu(0), Gpu(1)]
    for _ in range(4):
        claims.append(gpu_slot.claim_slot_file(lock_dir, gpus, per_gpu=2, wait_s=0))
    assert [(c.gpu.index, c.slot) for c in claims] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    with pytest.raises(SlotError, match="all 4 GPU slots are taken"):
        gpu_slot.claim_slot_file(lock_dir, gpus, per_gpu=2, wait_s=0)
    assert set(gpu_slot.file_slots_in_use(lock_dir, gpus, 2)) == {(0, 0), (1, 0), (0, 1), (1, 1)}
    claims.pop(1).release()
    assert set(gpu_slot.file_slots_in_use(lock_dir, gpus, 2)) == {(0, 0), (0, 1), (1, 1)}
    claims.append(gpu_slot.claim_slot_file(lock_dir, gpus, per_gpu=2, wait_s=0))
    assert (claims[-1].gpu.index, claims[-1].slot) == (1, 0)


def test_a_killed_workers_file_lock_frees_its_slot(tmp_path, claims):
    """SIGKILL leaves no chance to clean up: the kernel drops the flock with the process."""
    lock_dir = str(tmp_path / "slots")
    env = {**os.environ, "DLNN_GPU_COUNT": "1", "DLNN_GPU_LOCK_DIR": lock_dir, "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    code = (CLAIMER +
            "m.claim_gpu_slot('sqlite:///unused.db'); print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        assert list(gpu_slot.file_slots_in_use(lock_dir, [Gpu(0)]).values()) == [f"{os.uname().nodename} pid {proc.pid}"]
        with pytest.raises(SlotError):
            gpu_slot.claim_slot_file(lock_dir, [Gpu(0)], wait_s=0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        claims.append(gpu_slot.claim_slot_file(lock_dir, [Gpu(0)], wait_s=5, poll_s=0.1))
    finally:
        proc.kill()
        proc.wait()


def test_claim_gpu_slot_with_a_lock_dir_needs_no_postgresql(tmp_path, claims):
    env = {"DLNN_GPU_COUNT": "2", "DLNN_GPU_LOCK_DIR": str(tmp_path / "slots")}
    claim = claim_gpu_slot("grpc://127.0.0.1:1", env=env)
    claims.append(claim)
    assert isinstance(claim, gpu_slot.FileSlotClaim) and env["CUDA_VISIBLE_DEVICES"] == "0"
    other = {**env}
    del other["CUDA_VISIBLE_DEVICES"]
    claims.append(claim_gpu_slot(f"sqlite:///{tmp_path}/x.db", env=other))
    assert other["CUDA_VISIBLE_DEVICES"] == "1"
