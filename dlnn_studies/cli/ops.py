"""The operator commands of `dlnn`: what containers and hosts run around the study commands.

  dlnn launch-all           `dlnn launch` each spec named in DLNN_STUDIES (names or paths, space- or
                            comma-separated; default: every studies/*.toml): the compose/Kubernetes launch step
  dlnn wait [--study NAME] [--timeout S]
                            block until the storage has the schema (and the study): the init step of
                            Kubernetes worker and dashboard pods, which have no depends_on
  dlnn proxy                serve the study storage to workers over gRPC (ops/proxy.py)
  dlnn gpu-slot             show the GPUs, their slots and which are held (ops/gpu_slot.py; run inside a worker)

Each entry of COMMANDS is (configure(parser), run(args) -> exit code); main.py merges them."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from dlnn_core.errors import ConfigError

from ..errors import UsageError
from ..store.urls import DEFAULT_PROXY_PORT, ENV_STORAGE, is_grpc, normalize_url

ENV_STUDIES = "DLNN_STUDIES"
STUDIES_DIR = Path("studies")


def spec_paths(value: str | None, studies_dir: Path = STUDIES_DIR) -> list[Path]:
    """The spec files named by DLNN_STUDIES: `quick` means studies/quick.toml, a path is taken as is."""
    names = [n for n in (value or "").replace(",", " ").split() if n]
    if not names:
        found = sorted(studies_dir.glob("*.toml"))
        if not found:
            raise ValueError(f"{ENV_STUDIES} is empty and {studies_dir}/ holds no *.toml spec")
        return found
    paths = [Path(n) if n.endswith(".toml") or "/" in n else studies_dir / f"{n}.toml" for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        known = ", ".join(p.stem for p in sorted(studies_dir.glob("*.toml"))) or "none"
        raise ValueError(f"{ENV_STUDIES}: no spec file {', '.join(missing)}; known in {studies_dir}/: {known}")
    return paths


def _launch(path: Path) -> int:
    """`dlnn launch PATH` as its command line runs it: options from the environment, a user error printed."""
    from .study import configure_launch, run_launch

    parser = argparse.ArgumentParser(prog="dlnn launch")
    configure_launch(parser)
    try:
        return int(run_launch(parser.parse_args([str(path)])) or 0)
    except (UsageError, ConfigError) as exc:
        print(f"dlnn launch: error: {exc}", file=sys.stderr)
        return 1


def launch_all(env: Mapping[str, str] = os.environ) -> int:
    """`dlnn launch` every configured spec (idempotent); non-zero if any failed, after trying them all."""
    try:
        paths = spec_paths(env.get(ENV_STUDIES))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = [str(p) for p in paths if _launch(p) != 0]
    if failed:
        print(f"error: launching {', '.join(failed)} failed (see above); workers will not start", file=sys.stderr)
        return 1
    print(f"dlnn: launched {len(paths)} stud{'y' if len(paths) == 1 else 'ies'}: {', '.join(p.stem for p in paths)}",
          flush=True)
    return 0


def storage_state(url: str, study: str | None = None) -> str | None:
    """None when the storage has the schema (and `study`), else why not yet."""
    try:
        if is_grpc(url):
            from ..store.proxy_client import connect

            storage = connect(url, timeout=5)
            try:
                if study is not None:
                    storage.get_study_id_from_name(study)
            finally:
                storage.close()
            return None
        import sqlalchemy

        engine = sqlalchemy.create_engine(normalize_url(url), poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                if not sqlalchemy.inspect(conn).has_table("version_info"):
                    return "no schema yet (dlnn launch has not run)"
                if study is not None and conn.execute(
                        sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": study}).first() is None:
                    return f"no study {study!r} yet"
        finally:
            engine.dispose()
        return None
    except KeyError:
        return f"no study {study!r} yet"
    except Exception as exc:  # unreachable database or proxy: keep waiting
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def wait_for(url: str, study: str | None = None, timeout_s: float = 600.0, poll_s: float = 3.0) -> int:
    """Poll until the storage is ready; 0 when it is, 1 after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        reason = storage_state(url, study)
        if reason is None:
            print(f"dlnn: storage ready{f' with study {study!r}' if study else ''}", flush=True)
            return 0
        if reason != last:
            print(f"dlnn: waiting for the storage: {reason}", file=sys.stderr, flush=True)
            last = reason
        if time.monotonic() >= deadline:
            print(f"error: storage not ready after {timeout_s:g} s: {reason}", file=sys.stderr)
            return 1
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------ commands


def _storage(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--storage", default=os.environ.get(ENV_STORAGE), metavar="URL", help=f"{what}default ${ENV_STORAGE}")


def _need_storage(args: argparse.Namespace) -> str:
    if not args.storage:
        raise UsageError("no storage: pass --storage URL or set DLNN_STORAGE")
    return args.storage


def configure_launch_all(p: argparse.ArgumentParser) -> None:
    pass


def run_launch_all(args: argparse.Namespace) -> int:
    """`dlnn launch` every spec in $DLNN_STUDIES (default: studies/*.toml): the containers' launch step."""
    return launch_all()


def configure_wait(p: argparse.ArgumentParser) -> None:
    _storage(p)
    p.add_argument("--study", default=None, help="also wait for this study")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")


def run_wait(args: argparse.Namespace) -> int:
    """Wait until the storage has the schema (and --study): the init step of pods without depends_on."""
    return wait_for(_need_storage(args), args.study, args.timeout)


def configure_proxy(p: argparse.ArgumentParser) -> None:
    _storage(p, "database URL to serve (PostgreSQL in production); ")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: a cluster service)")
    p.add_argument("--port", type=int, default=DEFAULT_PROXY_PORT, help=f"port (default {DEFAULT_PROXY_PORT})")
    p.add_argument("--threads", type=int, default=16, help="gRPC threads = database connections (default 16)")


def run_proxy(args: argparse.Namespace) -> int:
    """Serve the study storage to workers over gRPC (Optuna's storage proxy; workers use grpc://host:port)."""
    storage = _need_storage(args)
    if not 1 <= args.port <= 65535 or args.threads < 1:
        raise UsageError("--port must be 1-65535 and --threads at least 1")
    from ..ops.proxy import serve
    from ..study.service import StudyBudgets

    try:
        serve(storage, args.host, args.port, threads=args.threads, budget_of=StudyBudgets())
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
    return 0


def configure_gpu_slot(p: argparse.ArgumentParser) -> None:
    _storage(p, "PostgreSQL URL of the slot locks when DLNN_GPU_LOCK_DIR is not set; ")


def run_gpu_slot(args: argparse.Namespace) -> int:
    """Show the GPUs, the slots and which are held (run inside a worker)."""
    from ..ops.gpu_slot import SlotError, file_slots_in_use, list_gpus, lock_url, settings_from_env, slot_order, slots_in_use

    try:
        settings = settings_from_env()
        gpus = list_gpus()
        dsn = lock_url(args.storage)
        if not gpus:
            print("no GPUs visible: workers here run on the CPU and claim no slot")
            return 0
        if settings.lock_dir is not None:
            held = {k: f"held by {v}" for k, v in
                    file_slots_in_use(settings.lock_dir, gpus, settings.per_gpu, settings.namespace).items()}
        else:
            held = {k: f"held by backend pid {v}" for k, v in
                    (slots_in_use(dsn, gpus, settings.per_gpu, settings.namespace) if dsn else {}).items()}
    except SlotError as exc:
        raise UsageError(str(exc)) from None
    known = dsn or settings.lock_dir
    for gpu, slot in slot_order(gpus, settings.per_gpu):
        holder = held.get((gpu.index, slot))
        state = holder or ("free" if known else "unknown (no PostgreSQL)")
        print(f"GPU {gpu.index} slot {slot} ({gpu.visible_id}): {state}")
    return 0


COMMANDS = {
    "launch-all": (configure_launch_all, run_launch_all),
    "wait": (configure_wait, run_wait),
    "proxy": (configure_proxy, run_proxy),
    "gpu-slot": (configure_gpu_slot, run_gpu_slot),
}
