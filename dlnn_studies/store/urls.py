"""Every address the service takes, read in one place: the study storage (a SQLAlchemy database URL,
or `grpc://host:port` for Optuna's gRPC storage proxy), the PostgreSQL URL of the GPU slot locks, and
the artifact store (a directory, `file:///PATH` or `s3://BUCKET/PREFIX`).

Plain string handling: commands read and check their arguments without importing Optuna, a database
driver or boto3 (SQLAlchemy's URL parser is imported only to hide a password)."""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import UsageError

# ------------------------------------------------------------------------------------ storage

ENV_STORAGE = "DLNN_STORAGE"
DEFAULT_STORAGE = "sqlite:///dlnn.db"
GRPC = "grpc"  # the scheme of Optuna's gRPC storage proxy
DEFAULT_PROXY_PORT = 13000


def storage_url(flag: str | None) -> str:
    """--storage, else $DLNN_STORAGE, else the embedded SQLite file in the working directory."""
    return flag or os.environ.get(ENV_STORAGE) or DEFAULT_STORAGE


def scheme(url: str | None) -> str:
    """The URL's scheme without its driver, lower case: "postgresql" for `postgresql+psycopg2://…`;
    "sqlite" for no URL at all (the default storage), "" for text that is no URL."""
    text = (url or "").strip()
    name, sep, _ = text.partition("://")
    if not text:
        return "sqlite"
    return name.split("+")[0].lower() if sep else ""


def is_grpc(url: str | None) -> bool:
    """True for `grpc://…`: the storage is a gRPC proxy, not a database."""
    return scheme(url) == GRPC


def is_postgres(url: str | None) -> bool:
    return scheme(url) in ("postgresql", "postgres")


def is_sqlite(url: str | None) -> bool:
    return scheme(url) == "sqlite"


def in_memory_sqlite(url: str) -> bool:
    """`sqlite://` or `sqlite:///:memory:`: a database that exists only inside its connection, so
    another connection (another pooled one, one after the pool is disposed, another thread's or
    process's) sees an empty one. A storage needs several: Optuna's schema check holds two at once."""
    import sqlalchemy.engine
    from sqlalchemy import exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except exc.ArgumentError:
        return False
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def normalize_url(url: str) -> str:
    """The URL SQLAlchemy opens: `postgresql://` means psycopg (3) to SQLAlchemy 2.1 and the project
    ships psycopg2, so a PostgreSQL URL without a driver gets whichever of the two is installed."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        rest = url.split("://", 1)[1]
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def libpq_url(url: str | None) -> str | None:
    """The libpq form (`postgresql://…`, no SQLAlchemy driver) of a PostgreSQL URL; None for any other."""
    url = (url or "").strip()
    if not is_postgres(url):
        return None
    return "postgresql://" + url.partition("://")[2]


def redact(url: str) -> str:
    """The URL with its password hidden, for messages and provenance."""
    import sqlalchemy.engine

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


@dataclass(frozen=True)
class ProxyAddress:
    """Where a gRPC storage proxy listens."""

    host: str
    port: int = DEFAULT_PROXY_PORT

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{GRPC}://{host}:{self.port}"


def parse_proxy_url(url: str) -> ProxyAddress:
    """Parse `grpc://host[:port]` (port default 13000); ValueError naming what is wrong."""
    text = (url or "").strip()
    if not is_grpc(text):
        raise ValueError(f"storage: {url!r} is not a gRPC proxy address; expected grpc://host:port")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"storage: {url!r} has a bad port; expected grpc://host:port with port 1-65535") from None
    if not parts.hostname:
        raise ValueError(f"storage: {url!r} has no host; expected grpc://host:port")
    if parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"storage: {url!r} is not allowed; expected only grpc://host:port (the proxy holds the credentials)")
    if port == 0:
        raise ValueError(f"storage: {url!r} has a bad port; expected grpc://host:port with port 1-65535")
    return ProxyAddress(parts.hostname, port or DEFAULT_PROXY_PORT)


# ---------------------------------------------------------------------------------- artifacts

ENV_ARTIFACTS = "DLNN_ARTIFACTS"
DEFAULT_ARTIFACTS = "dlnn_artifacts"
SCHEMES = ("a directory path", "file:///PATH", "s3://BUCKET/PREFIX")
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # boto3's own order: the service-specific one first

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")  # S3's bucket naming rules (3-63 chars)


@dataclass(frozen=True)
class StoreURL:
    """A parsed `--artifacts` value: kind "dir" (path) or "s3" (bucket, prefix without slashes at its ends)."""

    kind: str
    path: str = ""
    bucket: str = ""
    prefix: str = ""

    def __str__(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return self.path


class ArtifactsURLError(UsageError):
    """A refused --artifacts value: `shown` (the value as the message quotes it, never a secret) and
    `reason` kept apart, so argparse's message, which names the flag itself, is built from them."""

    def __init__(self, shown: str, reason: str):
        self.shown, self.reason = shown, reason
        super().__init__(f"--artifacts {shown}: {reason}")


def parse_artifacts(text: str | os.PathLike) -> StoreURL:
    """A directory path, `file:///PATH` or `s3://BUCKET[/PREFIX]`; anything else is a UsageError
    that names the accepted forms."""
    if isinstance(text, os.PathLike):
        return StoreURL("dir", path=os.fspath(text))
    if not isinstance(text, str) or not text.strip():
        raise ArtifactsURLError(repr(text), f"expected {', '.join(SCHEMES)}")
    text = text.strip()
    name, sep, rest = text.partition("://")
    if not sep:
        return StoreURL("dir", path=text)
    name = name.lower()
    if name == "file":
        if not rest.startswith("/"):
            raise ArtifactsURLError(repr(text), "a file URL needs an absolute path (file:///data/artifacts)")
        return StoreURL("dir", path=rest)
    if name != "s3":
        raise ArtifactsURLError(repr(text), f"unknown scheme {name!r}; expected {', '.join(SCHEMES)}")
    bucket, _, prefix = rest.partition("/")
    if "@" in bucket or ":" in bucket:  # checked first: the message must not repeat a secret
        raise ArtifactsURLError("s3://...", f"credentials or a port do not belong in the URL; set AWS_ACCESS_KEY_ID / "
                         f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and {ENDPOINT_ENVS[1]} in the environment")
    if any(c in rest for c in "?#"):
        raise ArtifactsURLError(repr(text), f"an s3 URL takes no query or fragment (the endpoint comes from "
                         f"{' or '.join(ENDPOINT_ENVS)})")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ArtifactsURLError(repr(text), f"{bucket!r} is not an S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ArtifactsURLError(repr(text), f"the prefix {prefix!r} has an empty, '.' or '..' part")
    return StoreURL("s3", bucket=bucket, prefix=prefix)


def argument(text: str) -> str:
    """argparse `type=` for --artifacts: the normalized URL, or the parser's own error (exit 1)."""
    import argparse

    try:
        return str(parse_artifacts(text))
    except ArtifactsURLError as exc:
        raise argparse.ArgumentTypeError(f"{exc.shown}: {exc.reason}") from None


def artifacts_url(flag: str | None, default: str | None = DEFAULT_ARTIFACTS) -> str | None:
    """--artifacts, else $DLNN_ARTIFACTS, else `default` (the directory ./dlnn_artifacts; None
    where a command needs no store unless told, as `dlnn train`). Parsed here, so a bad value is
    refused before anything else happens."""
    value = flag or os.environ.get(ENV_ARTIFACTS) or default
    if value is None:
        return None
    return str(parse_artifacts(value))
