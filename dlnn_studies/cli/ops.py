"""Container entry commands that sit around `dlnn`: launch every configured study, wait for the storage.

  python -m dlnn_studies.cli.ops launch   `dlnn launch` each spec named in DLNN_STUDIES (names or paths,
                                        space- or comma-separated; default: every studies/*.toml)
  python -m dlnn_studies.cli.ops wait [--study NAME] [--timeout S]
                                        block until the storage has the schema (and the study): the init
                                        step of Kubernetes worker and dashboard pods, which have no depends_on
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

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


def _dlnn(argv: list[str]) -> int:
    from .main import main  # imported here: `wait` must not need the whole service

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc if isinstance(rc, int) else (0 if rc is None else 1)


def launch_all(env: Mapping[str, str] = os.environ) -> int:
    """`dlnn launch` every configured spec (idempotent); non-zero if any failed, after trying them all."""
    try:
        paths = spec_paths(env.get(ENV_STUDIES))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = [str(p) for p in paths if _dlnn(["launch", str(p)]) != 0]
    if failed:
        print(f"error: launching {', '.join(failed)} failed (see above); workers will not start", file=sys.stderr)
        return 1
    print(f"dlnn: launched {len(paths)} stud{'y' if len(paths) == 1 else 'ies'}: {', '.join(p.stem for p in paths)}",
          flush=True)
    return 0


def storage_state(url: str, study: str | None = None) -> str | None:
    """None when the storage has the schema (and `study`), else why not yet."""
    from ..store import proxy_client as proxy

    try:
        if proxy.is_proxy_url(url):
            storage = proxy.connect(url, timeout=5)
            try:
                if study is not None:
                    storage.get_study_id_from_name(study)
            finally:
                storage.close()
            return None
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dlnn_studies.cli.ops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("launch", help="dlnn launch every spec in $DLNN_STUDIES (default: studies/*.toml)")
    wait = sub.add_parser("wait", help="wait until the storage has the schema (and --study)")
    wait.add_argument("--storage", default=os.environ.get("DLNN_STORAGE"), help="default $DLNN_STORAGE")
    wait.add_argument("--study", default=None)
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    args = parser.parse_args(argv)
    if args.command == "launch":
        return launch_all()
    if not args.storage:
        parser.error("no storage: pass --storage URL or set DLNN_STORAGE")
    return wait_for(args.storage, args.study, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
