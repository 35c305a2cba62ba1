"""Where artifacts live: the stores behind every command's `--artifacts` (urls.py reads the value).

An artifact store holds the trials' checkpoints and plots, the report's figures and each study's
dataset file. It is either

- a directory (`dlnn_artifacts`, `/data/artifacts`, `file:///data/artifacts`) that every worker
  and the dashboard can reach (a docker volume, a network file system), or
- S3-compatible object storage, `s3://BUCKET/PREFIX` (AWS S3, MinIO, Ceph, R2, ...), through
  Optuna's own `Boto3ArtifactStore`, so a fleet on many hosts needs no shared file system.

For S3, boto3 reads everything else from its standard environment: the endpoint of a
non-AWS server from `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), credentials from
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or `AWS_PROFILE`, an instance role, ...), the
region from `AWS_DEFAULT_REGION`. Credentials never go into the URL: one that carries them is
refused, so they cannot end up in a process list, a log or the stored provenance.

The bucket must exist; `open_store` checks that once, so a worker with a wrong bucket, endpoint
or credentials stops at start with the reason instead of failing every trial's upload.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from dlnn_core.atomic import write_atomic

from ..errors import UsageError
from .optuna_private import artifact_path
from .urls import ENDPOINT_ENVS, StoreURL, parse_artifacts

# ------------------------------------------------------------------------------------ stores


class DirectoryStore(optuna.artifacts.FileSystemArtifactStore):
    """Optuna's file-system store, with writes that are atomic (a unique temporary file in the same
    directory, then a rename): the dashboard or a worker reading an artifact while another process
    writes it sees the whole file or none, and a crash mid-write leaves no half file under the key.
    Keys may name a subfolder (`datasets/<sha256>`), which is created."""

    def __init__(self, base_path: str | Path):
        super().__init__(Path(base_path))
        self.location = str(base_path)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        write_atomic(artifact_path(self, artifact_id), lambda f: shutil.copyfileobj(content_body, f, 1 << 20), suffix=".partial")

    def exists(self, artifact_id: str) -> bool:
        return artifact_path(self, artifact_id).is_file()

    def __repr__(self) -> str:
        return f"DirectoryStore({self.location!r})"


class S3Store:
    """Optuna's `Boto3ArtifactStore` on BUCKET, with every key under PREFIX/ (several studies or
    deployments can share one bucket). An S3 upload is atomic by itself: an object is visible only
    once it is complete. Thread-safe (a boto3 client is), so `--jobs N` threads share one."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None):
        import boto3

        # A session of its own: boto3's default session is not thread-safe and keeps the credentials it first found.
        self.client = client or boto3.session.Session().client("s3")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # avoid_buf_copy=False (Optuna's default): upload_fileobj may close the file it is given
        self._store = optuna.artifacts.Boto3ArtifactStore(bucket, self.client)
        self.location = str(StoreURL("s3", bucket=bucket, prefix=self.prefix))

    def key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._store.open_reader(self.key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._store.write(self.key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self._store.remove(self.key(artifact_id))

    def exists(self, artifact_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(artifact_id))
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or \
                    exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def check(self) -> None:
        """The bucket exists and these credentials reach it; else a UsageError that says which."""
        import botocore.exceptions as bx

        endpoint = self.client.meta.endpoint_url
        where = f"{self.location} (endpoint {endpoint})"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bx.NoCredentialsError:
            raise UsageError(f"artifact store {where}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                             "(or AWS_PROFILE) in the environment") from None
        except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as exc:
            raise UsageError(f"artifact store {where}: cannot reach the endpoint ({exc}); for a non-AWS server set "
                             f"{ENDPOINT_ENVS[1]}") from None
        except bx.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status == 404 or code in ("404", "NoSuchBucket"):
                raise UsageError(f"artifact store {where}: bucket {self.bucket!r} does not exist; create it first "
                                 f"(e.g. `aws s3 mb s3://{self.bucket}`)") from None
            if status == 403 or code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise UsageError(f"artifact store {where}: access denied ({code}); check the credentials in the environment") from None
            raise UsageError(f"artifact store {where}: {code or status}: {exc}") from None
        except bx.BotoCoreError as exc:  # a malformed endpoint URL, a missing region, ...
            raise UsageError(f"artifact store {where}: {exc}") from None

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"


def open_store(url: str | os.PathLike, *, check: bool = True):
    """The artifact store an `--artifacts` value names (see `parse_artifacts`): a directory is
    created if missing; an S3 bucket is checked (unless `check=False`)."""
    parsed = parse_artifacts(url)
    if parsed.kind == "dir":
        path = Path(parsed.path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"artifact store {parsed.path}: cannot create the directory ({exc.strerror or exc})") from None
        return DirectoryStore(path)
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise UsageError(f"--artifacts {parsed}: S3 needs boto3 (pip install boto3)") from None
    store = S3Store(parsed.bucket, parsed.prefix)
    if check:
        store.check()
    return store


def describe(store: Any) -> str:
    """Where a store is, for messages: its URL, or its type for a store built elsewhere."""
    inner = getattr(store, "store", None)  # CleanArtifactStore and other wrappers
    return getattr(store, "location", None) or (describe(inner) if inner is not None else type(store).__name__)


def exists(store: Any, artifact_id: str) -> bool:
    """Whether the store holds `artifact_id` (cheaply where the store can say; else by opening it)."""
    if hasattr(store, "exists"):
        return store.exists(artifact_id)
    inner = getattr(store, "store", None)
    if inner is not None and hasattr(inner, "exists"):
        return inner.exists(artifact_id)
    try:
        reader = store.open_reader(artifact_id)
    except optuna.artifacts.exceptions.ArtifactNotFound:
        return False
    with contextlib.suppress(Exception):
        reader.close()
    return True
