"""A real S3-compatible server for the tests: moto's server mode (`python -m moto.server`) as its
own process on 127.0.0.1 and a free port, reached over HTTP by boto3 exactly as a MinIO or AWS
endpoint would be (the endpoint and the throwaway credentials come from the AWS_* environment,
as in production). Every test gets a bucket of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from service_support import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_MAX_ATTEMPTS": "2"}
CLEARED = ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """http://127.0.0.1:PORT of a moto server process that lives as long as the test session."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start (exit {proc.poll()}): {log.read_text()[-2000:]}")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, tmp_path):
    """The AWS_* environment pointing at the moto server (for this process and the `dlnn`
    processes it starts); no shared config or credentials file of the machine is read."""
    for key in CLEARED:
        monkeypatch.delenv(key, raising=False)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}


@pytest.fixture
def s3_url(s3_env):
    """s3://<new bucket>/dlnn: an empty store on the moto server."""
    import boto3

    bucket = f"dlnn-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/dlnn"


def s3_objects(url: str) -> dict[str, bytes]:
    """Every object under the store's prefix: key (without the prefix) -> bytes."""
    import boto3

    bucket, _, prefix = url[len("s3://"):].partition("/")
    client = boto3.client("s3")
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def env_for_processes(extra: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in CLEARED}
    out.update(extra)
    return out
