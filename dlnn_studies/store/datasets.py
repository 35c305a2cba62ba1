"""A study's dataset file, the same bytes on every host: published once into the artifact store
under its SHA-256, fetched by that hash into a local content-addressed cache by every worker.

- `publish(store, path)`: upload once (an object under the hash that already holds those bytes
  is kept), return the hash. `launch` publishes `data.file` and records `data.file_sha256` in
  the stored spec.
- `fetch(store, sha256, cache_dir)`: the verified local copy; downloaded into a temporary file
  beside its place in the cache, hashed while it streams, renamed into place only when the hash
  matches, so concurrent workers never see half a file and a corrupt object is never used.
- `resolve(file, sha256, store, cache_dir)`: the local path to train on, for workers and
  `dlnn train`: the store's bytes by hash, a verified cached copy, or the named local file if
  its hash matches; otherwise a `DatasetMissing` that names the file, the hash and the store.

A local file whose hash differs from the pinned one is never used. The config helpers at the
end read `data.file` / `data.file_sha256` with getattr, so this module works with a DataConfig
that does not have them (then there is nothing to do). The functions that touch a store import
artifacts.py themselves: it loads Optuna's artifact stores and boto3, which the helpers never need.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import UsageError

DATASET_PREFIX = "datasets/"  # key of a dataset in the artifact store: datasets/<sha256>
CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DatasetMissing(UsageError):
    """The bytes a config pins are neither in the artifact store nor here."""


class DatasetCorrupt(UsageError):
    """The store holds other bytes under a dataset's hash."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the same value as dlnn_core.datafiles.file_sha256)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dataset_key(sha256: str) -> str:
    check_sha256(sha256)
    return f"{DATASET_PREFIX}{sha256}"


def check_sha256(sha256: Any, what: str = "data.file_sha256") -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise UsageError(f"{what} = {sha256!r}: expected 64 lowercase hex digits (a SHA-256)")
    return sha256


def short(sha256: str) -> str:
    return sha256[:12]


def default_cache_dir() -> Path:
    """Beside the generated-dataset cache ($DLNN_CACHE_DIR, else ~/.cache/dlnn-studies), in files/."""
    return Path(os.environ.get("DLNN_CACHE_DIR", Path.home() / ".cache" / "dlnn-studies")) / "files"


# ----------------------------------------------------------------------------- publish / fetch


def publish(store: Any, path: str | Path, sha256: str | None = None) -> str:
    """Upload the file once under datasets/<sha256> and return the hash. An object already under
    that key is checked (streamed and hashed) and kept when it holds these bytes; one that does
    not (a partial upload through a store without atomic writes) is replaced."""
    from .artifacts import exists

    path = Path(path)
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise UsageError(f"data.file {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    if sha256 is not None and sha256 != digest:
        raise UsageError(f"data.file {str(path)!r} has sha256 {digest}, not the pinned {sha256}")
    key = dataset_key(digest)
    if exists(store, key) and _stored_sha256(store, key) == digest:
        return digest
    with open(path, "rb") as f:
        store.write(key, f)
    return digest


def fetch(store: Any, sha256: str, cache_dir: str | Path | None = None, name: str | None = None) -> Path:
    """The local, verified copy of the dataset with this hash: cache_dir/<sha256><suffix of name>.
    A cached copy is re-hashed and reused; a missing or corrupt one is downloaded again."""
    from .artifacts import describe

    check_sha256(sha256)
    path = cache_path(sha256, cache_dir, name)
    if cached(path, sha256):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = dataset_key(sha256)
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        reader = store.open_reader(key)
    except ArtifactNotFound:
        raise DatasetMissing(f"dataset {_named(name, sha256)} is not in the artifact store {describe(store)} "
                             f"(no object {key}): run `dlnn launch SPEC --artifacts {describe(store)}` where the file "
                             "is, which publishes it") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, contextlib.closing(reader):
            while chunk := reader.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != sha256:
            raise DatasetCorrupt(f"the artifact store {describe(store)} holds other bytes under {key} (their sha256 is "
                                 f"{h.hexdigest()}); publish the file again with `dlnn launch` (it replaces a corrupt copy)")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def cache_path(sha256: str, cache_dir: str | Path | None = None, name: str | None = None) -> Path:
    """Content-addressed: the hash names the file; the suffix of the original name (.npz, .csv)
    is kept, since readers choose their format by it."""
    suffix = Path(name).suffix if name else ""
    return Path(cache_dir or default_cache_dir()) / f"{sha256}{suffix}"


def cached(path: Path, sha256: str) -> bool:
    """A cached copy that holds exactly these bytes; a corrupt one is removed."""
    try:
        if sha256_file(path) == sha256:
            return True
    except OSError:
        return False
    with contextlib.suppress(OSError):
        path.unlink()
    return False


def resolve(file: str | None, sha256: str | None, store: Any = None, cache_dir: str | Path | None = None,
            base_dir: str | Path | None = None, log: Callable[[str], None] | None = None) -> Path | None:
    """The local path to train on for a config's `data.file` pinned to `sha256`:

    1. a verified copy in the local cache (an earlier fetch on this host);
    2. the store's bytes by hash (`fetch`), when a store is given;
    3. the named file (relative paths from `base_dir`, else the working directory), only if its
       hash matches; it is then copied into the cache, so later runs survive its change.

    Without a pin the named file is used as it is (a config written by hand). Nothing found:
    a DatasetMissing that names the file, the hash and the store."""
    if not file and not sha256:
        return None
    if not sha256:
        return _local(file, base_dir)
    check_sha256(sha256)
    path = cache_path(sha256, cache_dir, file)
    if cached(path, sha256):
        return path
    if store is not None:
        with contextlib.suppress(DatasetMissing):  # not there: a matching local file still serves
            return fetch(store, sha256, cache_dir, file)
    local = _local(file, base_dir) if file else None
    if local is not None and local.is_file():
        digest = sha256_file(local)
        if digest == sha256:
            _copy_into_cache(local, path)
            return path if cached(path, sha256) else local
        if log:
            log(f"data.file {file}: its sha256 is {digest}, not the pinned {sha256}; not using it")
        changed = f"; {local} is here but holds other bytes (sha256 {short(digest)}…)"
    else:
        changed = ""
    from .artifacts import describe

    where = f"the artifact store {describe(store)}" if store is not None else "no artifact store (pass --artifacts STORE)"
    raise DatasetMissing(f"this config needs the dataset {_named(file, sha256)}: it is not in {where}, nor in the cache "
                         f"{path.parent}{changed}. Put that exact file at {file!r}, or pass --artifacts with the store the "
                         "study was launched with") from None


def _local(file: str | None, base_dir: str | Path | None) -> Path | None:
    if not file:
        return None
    path = Path(file).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _copy_into_cache(src: Path, dest: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache only costs the copy
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _stored_sha256(store: Any, key: str) -> str | None:
    try:
        reader = store.open_reader(key)
    except Exception:
        return None
    h = hashlib.sha256()
    with contextlib.closing(reader):
        while chunk := reader.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _named(name: str | None, sha256: str) -> str:
    return f"{name!r} (sha256 {sha256})" if name else f"with sha256 {sha256}"


# ----------------------------------------------------------------------------- config hooks
# The only places that know where a config keeps its dataset file. Until DataConfig has `file` and
# `file_sha256`, every one of them sees no file and changes nothing.


def config_file(config: Any) -> tuple[str | None, str | None]:
    """(data.file, data.file_sha256) of a TrainConfig; (None, None) when it names no file."""
    data = getattr(config, "data", None)
    return (getattr(data, "file", None) or None), (getattr(data, "file_sha256", None) or None)


def with_local_file(config: Any, path: Path | None) -> Any:
    """The config to hand to `fit`: data.file pointing at the verified local copy. The trial keeps
    the original config (name and hash), which is what is stored and exported."""
    if path is None or config_file(config)[0] is None:
        return config
    return config.with_flat({"data.file": str(path)})


def pin_raw(raw: Mapping[str, Any], sha256: str) -> dict:
    """The stored spec with `base.data.file_sha256` set."""
    import json

    out = json.loads(json.dumps(raw))
    out.setdefault("base", {}).setdefault("data", {})["file_sha256"] = sha256
    return out


def raw_file(raw: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """(file, file_sha256) of a stored spec's base.data, read from the raw TOML (a preset's data
    never names a file)."""
    data = ((raw or {}).get("base") or {}).get("data") or {}
    return (data.get("file") or None), (data.get("file_sha256") or None)


def localize(config: Any, store: Any = None, cache_dir: str | Path | None = None, base_dir: str | Path | None = None,
             log: Callable[[str], None] | None = None) -> Any:
    """`config` with data.file resolved (see `resolve`) to a verified local copy; unchanged when
    it names no file. For workers, `dlnn train` and `dlnn lr-find`."""
    file, sha256 = config_file(config)
    if file is None:
        return config
    return with_local_file(config, resolve(file, sha256, store, cache_dir, base_dir, log))
