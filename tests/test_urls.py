"""store/urls.py, where every address is read: the storage's kind, its password hidden, the lock URL
libpq opens, and the defaults from the environment. (gRPC addresses: test_proxy.py; artifact stores:
test_datasets.py.)"""

from __future__ import annotations

import pytest

from dlnn_studies.store import urls


@pytest.mark.parametrize("url, scheme", [
    ("postgresql+psycopg2://u@h:5432/db", "postgresql"), ("postgres://u@h/db", "postgres"), ("sqlite:///dlnn.db", "sqlite"),
    (" GRPC://proxy:13000", "grpc"), (None, "sqlite"), ("", "sqlite"), ("dlnn.db", ""),
])
def test_scheme(url, scheme):
    assert urls.scheme(url) == scheme


def test_the_kinds_of_storage():
    assert urls.is_grpc("grpc://proxy:13000") and urls.is_grpc("GRPC://proxy") and not urls.is_grpc("sqlite:///grpc.db")
    assert urls.is_sqlite("sqlite:///x.db") and urls.is_sqlite(None) and not urls.is_sqlite("dlnn.db")
    assert urls.is_postgres("postgresql+psycopg2://u@h/db") and not urls.is_postgres("sqlite:///postgresql.db")


def test_the_lock_url_is_libpqs_form_of_a_postgresql_url():
    assert urls.libpq_url("postgresql+psycopg2://u:pw@h:5432/db") == "postgresql://u:pw@h:5432/db"
    assert urls.libpq_url("postgres://u@h/db") == "postgresql://u@h/db"
    assert urls.libpq_url("sqlite:///x.db") is None and urls.libpq_url(None) is None


def test_redact_hides_the_password_only():
    shown = urls.redact("postgresql+psycopg2://dlnn:s3cret@db:5432/studies")
    assert "s3cret" not in shown and shown.startswith("postgresql+psycopg2://dlnn:") and shown.endswith("@db:5432/studies")
    assert urls.redact("sqlite:///dlnn.db") == "sqlite:///dlnn.db"


def test_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(urls.ENV_STORAGE, raising=False)
    monkeypatch.delenv(urls.ENV_ARTIFACTS, raising=False)
    assert urls.storage_url(None) == urls.DEFAULT_STORAGE and urls.storage_url("sqlite:///a.db") == "sqlite:///a.db"
    assert urls.artifacts_url(None) == urls.DEFAULT_ARTIFACTS and urls.artifacts_url(None, default=None) is None
    monkeypatch.setenv(urls.ENV_STORAGE, "grpc://proxy:1")
    monkeypatch.setenv(urls.ENV_ARTIFACTS, "s3://bucket/prefix/")
    assert urls.storage_url(None) == "grpc://proxy:1" and urls.artifacts_url(None) == "s3://bucket/prefix"
