"""GPU slot claiming: every worker picks a free (GPU, slot) itself, so `--scale worker=N` uses all GPUs.

Compose hands every replica the same device reservation, so the worker containers see all GPUs and each
worker takes a lock per (GPU, slot) that it holds for its lifetime, then sets CUDA_VISIBLE_DEVICES before
torch starts CUDA. When a worker dies its lock goes with it and the slot is free for the next worker. The
lock is one of:
- a file lock (flock) in DLNN_GPU_LOCK_DIR, a directory every worker on the host shares (compose: the
  host-local `gpu-slots` volume). It costs no database connection, and the kernel drops it when the
  process dies, however it dies. It must be local to the host (not NFS): the GPUs are the host's.
- else a PostgreSQL advisory lock on a session kept open for the worker's lifetime (one more database
  connection per GPU worker); it works across hosts and containers without a shared directory.
This module must not import torch: of the project it reads only dlnn_core/device.py and store/urls.py.

Environment (all optional):
  WORKERS_PER_GPU       slots per GPU (default 1); small DLNNs leave a GPU mostly idle, so 2-4 pays.
  DLNN_GPU_COUNT        number of GPUs; default: `nvidia-smi`, else the /dev/nvidiaN device files.
  DLNN_GPU_SLOTS        "off" disables claiming (Kubernetes: the device plugin already assigns GPUs).
  DLNN_GPU_LOCK_DIR     directory for file locks, shared by the workers of one host; default: PostgreSQL.
  DLNN_GPU_LOCK_URL     PostgreSQL URL for the locks when DLNN_STORAGE is not PostgreSQL (gRPC proxy).
  DLNN_GPU_HOST         lock namespace when GPU UUIDs are unknown (set one per host on multi-host setups).
  DLNN_GPU_SLOT_WAIT    seconds to wait for a free slot; empty = forever, 0 = fail at once.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from dlnn_core.device import parse_device

from ..store.urls import libpq_url, scheme

log = logging.getLogger("dlnn.gpu_slot")

OFF_VALUES = frozenset({"0", "off", "false", "no", "none"})
KEEPALIVE_S = 30.0  # how often the holder pings its lock session (and re-takes the lock after a DB restart)


class SlotError(RuntimeError):
    """A GPU slot could not be claimed (bad setting, no PostgreSQL, or every slot taken)."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as this host numbers it; `uuid` (from nvidia-smi) makes lock keys unique across hosts."""

    index: int
    uuid: str | None = None

    @property
    def visible_id(self) -> str:
        """The CUDA_VISIBLE_DEVICES value: the UUID when known (immune to CUDA vs nvidia-smi ordering)."""
        return self.uuid or str(self.index)


@dataclass(frozen=True)
class Settings:
    """The slot settings read from the environment, validated once."""

    per_gpu: int = 1
    namespace: str = "default"
    wait_s: float | None = None
    enabled: bool = True
    lock_dir: str | None = None  # file locks here; None: PostgreSQL advisory locks


def settings_from_env(env: Mapping[str, str] = os.environ) -> Settings:
    """Read and validate WORKERS_PER_GPU, DLNN_GPU_HOST, DLNN_GPU_SLOT_WAIT, DLNN_GPU_SLOTS, DLNN_GPU_LOCK_DIR."""
    per_gpu = _positive_int(env, "WORKERS_PER_GPU", default=1)
    wait_raw = env.get("DLNN_GPU_SLOT_WAIT", "").strip()
    try:
        wait_s = float(wait_raw) if wait_raw else None
    except ValueError:
        raise SlotError(f"DLNN_GPU_SLOT_WAIT: {wait_raw!r} is not allowed; expected seconds (a number) or empty") from None
    if wait_s is not None and wait_s < 0:
        raise SlotError(f"DLNN_GPU_SLOT_WAIT: {wait_raw!r} is not allowed; expected seconds >= 0 or empty")
    enabled = env.get("DLNN_GPU_SLOTS", "on").strip().lower() not in OFF_VALUES
    lock_dir = env.get("DLNN_GPU_LOCK_DIR", "").strip() or None
    return Settings(per_gpu, env.get("DLNN_GPU_HOST", "").strip() or "default", wait_s, enabled, lock_dir)


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise SlotError(f"{name}: {raw!r} is not allowed; expected a positive integer")
    return int(raw)


def list_gpus(env: Mapping[str, str] = os.environ) -> list[Gpu]:
    """The GPUs this process can see: DLNN_GPU_COUNT, else nvidia-smi, else /dev/nvidiaN; [] on a CPU host."""
    raw = env.get("DLNN_GPU_COUNT", "").strip()
    if raw:
        if not raw.isdigit():
            raise SlotError(f"DLNN_GPU_COUNT: {raw!r} is not allowed; expected a non-negative integer")
        return [Gpu(i) for i in range(int(raw))]
    gpus = _nvidia_smi_gpus()
    if gpus is not None:
        return gpus
    # Without nvidia-smi, count the device nodes the container runtime mounted (not /dev/nvidiactl etc.).
    return [Gpu(i) for i in range(len([p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p)]))]


def _nvidia_smi_gpus() -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,uuid", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=index,uuid --format=csv,noheader` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            gpus.append(Gpu(int(parts[0]), parts[1] or None))
    return sorted(gpus, key=lambda g: g.index)


def lock_url(storage_url: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The libpq URL for the locks: DLNN_GPU_LOCK_URL, else the storage URL if it is PostgreSQL, else None.

    SQLAlchemy's `postgresql+psycopg2://` becomes libpq's `postgresql://`; a password left out of the URL
    comes from PGPASSWORD, as libpq does it."""
    return libpq_url(env.get("DLNN_GPU_LOCK_URL", "").strip() or storage_url)


def slot_key(gpu: Gpu, slot: int, namespace: str = "default") -> int:
    """A signed 64-bit advisory-lock key for (GPU, slot): by GPU UUID when known, else by namespace + index."""
    ident = f"uuid:{gpu.uuid}" if gpu.uuid else f"host:{namespace}:{gpu.index}"
    digest = hashlib.blake2b(f"dlnn-gpu-slot|{ident}|{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def slot_order(gpus: list[Gpu], per_gpu: int) -> list[tuple[Gpu, int]]:
    """Slot 0 of every GPU first, then slot 1 …, so workers spread over GPUs before they double up."""
    return [(gpu, slot) for slot in range(per_gpu) for gpu in gpus]


def _connect(dsn: str):
    import psycopg2

    conn = psycopg2.connect(dsn, connect_timeout=10, application_name="dlnn-gpu-slot",
                            keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3)
    conn.autocommit = True  # no open transaction: idle-in-transaction timeouts never hit the holder
    with conn.cursor() as cur:
        # Server-side keepalives free a dead host's locks in about a minute instead of hours.
        for setting in ("tcp_keepalives_idle = 30", "tcp_keepalives_interval = 10", "tcp_keepalives_count = 3",
                        "idle_session_timeout = 0"):
            try:
                cur.execute("SET " + setting)
            except psycopg2.Error:  # older server or a setting it does not know: keepalives are best effort
                pass
    return conn


class SlotClaim:
    """A held (GPU, slot): the lock lives as long as this object's PostgreSQL session does.

    A background thread pings the session every KEEPALIVE_S seconds and, if the database restarted, takes
    the same lock again on a new session."""

    def __init__(self, dsn: str, gpu: Gpu, slot: int, key: int, conn, keepalive_s: float = KEEPALIVE_S):
        self.dsn, self.gpu, self.slot, self.key = dsn, gpu, slot, key
        self._conn = conn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, args=(keepalive_s,), name="dlnn-gpu-slot", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"SlotClaim(gpu={self.gpu.index}, slot={self.slot}, visible={self.gpu.visible_id!r})"

    @property
    def backend_pid(self) -> int:
        """The PostgreSQL backend holding the lock (what pg_locks shows)."""
        return self._conn.get_backend_pid()

    def _keep(self, every_s: float) -> None:
        import psycopg2

        while not self._stop.wait(every_s):
            try:
                with self._conn.cursor() as cur:
                    cur.execute("SELECT 1")
                continue
            except psycopg2.Error:
                pass
            try:  # the session is gone (database restart, network): take the same slot on a new one
                conn = _connect(self.dsn)
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                    (got,) = cur.fetchone()
                self._conn = conn
                if got:
                    log.warning("GPU slot session was lost; re-took GPU %s slot %s", self.gpu.index, self.slot)
                else:
                    log.warning("GPU slot session was lost and GPU %s slot %s is now held by another worker; "
                                "both share the GPU until one exits", self.gpu.index, self.slot)
            except psycopg2.Error as exc:
                log.warning("GPU slot keepalive: database unreachable (%s); retrying", exc)

    def release(self) -> None:
        """Give the slot back now (normally the process exit does it)."""
        self._stop.set()
        try:
            self._conn.close()
        except Exception:  # already closed or broken: the slot is free either way
            pass


def claim_slot(dsn: str, gpus: list[Gpu], per_gpu: int = 1, namespace: str = "default",
               wait_s: float | None = None, poll_s: float = 10.0, keepalive_s: float = KEEPALIVE_S) -> SlotClaim:
    """Take the first free (GPU, slot) with pg_try_advisory_lock on a session kept open by the claim.

    Waits for a slot to free up (a dead worker's) for `wait_s` seconds (None: forever), then raises."""
    if not gpus:
        raise SlotError("no GPUs to claim a slot on")
    import psycopg2

    try:
        conn = _connect(dsn)
    except psycopg2.Error as exc:
        raise SlotError(f"GPU slots: cannot connect to PostgreSQL for the slot locks: {exc}".strip()) from exc

    def take(gpu: Gpu, slot: int) -> SlotClaim | None:
        key = slot_key(gpu, slot, namespace)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            return SlotClaim(dsn, gpu, slot, key, conn, keepalive_s) if cur.fetchone()[0] else None

    try:
        return _first_free(take, gpus, per_gpu, wait_s, poll_s)
    except SlotError:
        conn.close()
        raise


def _first_free(take, gpus: list[Gpu], per_gpu: int, wait_s: float | None, poll_s: float):
    """Try `take(gpu, slot)` on every slot in order until one returns a claim; while all are taken,
    wait for one to free up (a dead worker's) for `wait_s` seconds (None: forever), then raise."""
    order = slot_order(gpus, per_gpu)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    told = False
    while True:
        for gpu, slot in order:
            claim = take(gpu, slot)
            if claim is not None:
                return claim
        if deadline is not None and time.monotonic() >= deadline:
            raise SlotError(f"all {len(order)} GPU slots are taken ({len(gpus)} GPUs x WORKERS_PER_GPU={per_gpu}); "
                            "stop a worker, raise WORKERS_PER_GPU, or scale down")
        if not told:
            log.warning("all %d GPU slots are taken (%d GPUs x WORKERS_PER_GPU=%d); waiting for one to free up",
                        len(order), len(gpus), per_gpu)
            told = True
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))


class FileSlotClaim:
    """A held (GPU, slot) as an flock on a file in a directory the host's workers share: the kernel
    releases it when the process exits or is killed, so a dead worker's slot frees itself, and it
    holds no database connection. (A child forked without exec inherits the lock until it exits.)"""

    def __init__(self, path: str, gpu: Gpu, slot: int, key: int, fd: int):
        self.path, self.gpu, self.slot, self.key = path, gpu, slot, key
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"FileSlotClaim(gpu={self.gpu.index}, slot={self.slot}, visible={self.gpu.visible_id!r}, path={self.path!r})"

    def release(self) -> None:
        """Give the slot back now (normally the process exit does it)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def slot_file(directory: str, key: int) -> str:
    return os.path.join(directory, f"gpu-slot-{key & 0xFFFFFFFFFFFFFFFF:016x}.lock")


def _try_flock(path: str) -> int | None:
    """The open descriptor holding an exclusive flock on `path`, or None if another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def claim_slot_file(directory: str, gpus: list[Gpu], per_gpu: int = 1, namespace: str = "default",
                    wait_s: float | None = None, poll_s: float = 10.0) -> FileSlotClaim:
    """Take the first free (GPU, slot) as an flock on its file in `directory` (created if missing).

    Waits for a slot to free up for `wait_s` seconds (None: forever), then raises."""
    if not gpus:
        raise SlotError("no GPUs to claim a slot on")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise SlotError(f"DLNN_GPU_LOCK_DIR: cannot create {directory!r} for the slot locks: {exc}") from None

    def take(gpu: Gpu, slot: int) -> FileSlotClaim | None:
        key = slot_key(gpu, slot, namespace)
        path = slot_file(directory, key)
        try:
            fd = _try_flock(path)
        except OSError as exc:
            raise SlotError(f"DLNN_GPU_LOCK_DIR: cannot lock {path!r}: {exc}") from None
        if fd is None:
            return None
        with contextlib.suppress(OSError):  # who holds it, for `dlnn gpu-slot`
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        return FileSlotClaim(path, gpu, slot, key, fd)

    return _first_free(take, gpus, per_gpu, wait_s, poll_s)


def file_slots_in_use(directory: str, gpus: list[Gpu], per_gpu: int = 1, namespace: str = "default") -> dict[tuple[int, int], str]:
    """{(GPU index, slot): holder} for the slots whose file lock is held now."""
    held = {}
    for gpu, slot in slot_order(gpus, per_gpu):
        path = slot_file(directory, slot_key(gpu, slot, namespace))
        if not os.path.exists(path):
            continue
        fd = _try_flock(path)
        if fd is not None:
            os.close(fd)
            continue
        with contextlib.suppress(OSError), open(path) as handle:
            held[(gpu.index, slot)] = handle.read().strip() or "?"
        held.setdefault((gpu.index, slot), "?")
    return held


_held: list[SlotClaim | FileSlotClaim] = []  # keeps the claim (its session or file) alive for the life of the process


def claim_gpu_slot(storage_url: str | None = None, device: str = "auto",
                   env: MutableMapping[str, str] = os.environ) -> SlotClaim | FileSlotClaim | None:
    """The one call `dlnn work` makes before torch touches CUDA: claim a slot and pin CUDA_VISIBLE_DEVICES.

    A no-op (returns None) for CPU workers, an explicit `cuda:K` device, an already set CUDA_VISIBLE_DEVICES,
    DLNN_GPU_SLOTS=off, or a host without GPUs. With DLNN_GPU_LOCK_DIR the lock is a file lock there;
    otherwise storage other than PostgreSQL cannot hold the locks: with one slot in all that is fine, with
    more it needs DLNN_GPU_LOCK_URL or DLNN_GPU_LOCK_DIR (SlotError otherwise)."""
    parsed = parse_device(device or "auto", "--device")
    settings = settings_from_env(env)
    if not settings.enabled or parsed.kind == "cpu" or parsed.index is not None or "CUDA_VISIBLE_DEVICES" in env:
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise SlotError("claim_gpu_slot() must run before CUDA is initialised (call it before any torch.cuda use)")
    gpus = list_gpus(env)
    if not gpus:
        return None
    if settings.lock_dir is not None:
        claim = claim_slot_file(settings.lock_dir, gpus, settings.per_gpu, settings.namespace, settings.wait_s)
    else:
        dsn = lock_url(storage_url, env)
        if dsn is None:
            if len(gpus) * settings.per_gpu == 1:
                return None
            raise SlotError(f"{len(gpus)} GPUs but storage {scheme(storage_url)!r} cannot hold GPU slot locks: use "
                            "PostgreSQL, set DLNN_GPU_LOCK_DIR or DLNN_GPU_LOCK_URL, pin CUDA_VISIBLE_DEVICES, "
                            "or set DLNN_GPU_SLOTS=off")
        claim = claim_slot(dsn, gpus, settings.per_gpu, settings.namespace, settings.wait_s)
    env["CUDA_VISIBLE_DEVICES"] = claim.gpu.visible_id
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # index fallback: number GPUs as nvidia-smi does
    env["DLNN_GPU_SLOT"] = f"{claim.gpu.index}/{claim.slot}"
    _held.append(claim)
    print(f"dlnn: GPU slot claimed: GPU {claim.gpu.index} slot {claim.slot} of {settings.per_gpu} "
          f"(CUDA_VISIBLE_DEVICES={claim.gpu.visible_id})", file=sys.stderr, flush=True)
    return claim


def slots_in_use(dsn: str, gpus: list[Gpu], per_gpu: int = 1, namespace: str = "default") -> dict[tuple[int, int], int]:
    """{(GPU index, slot): backend pid} for the slots held now in this database (for `dlnn gpu-slot`)."""
    wanted = {slot_key(g, s, namespace): (g.index, s) for g, s in slot_order(gpus, per_gpu)}
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT (classid::bigint << 32) | objid::bigint, pid FROM pg_locks "
                        "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            rows = cur.fetchall()
    finally:
        conn.close()
    held = {}
    for raw, pid in rows:
        key = raw - (1 << 64) if raw >= (1 << 63) else raw
        if key in wanted:
            held[wanted[key]] = pid
    return held
