"""Data that reaches every worker (issue 15 §2): the artifact-store URL, dataset files published
once by their sha256 and fetched into a verified local cache, the launch pin, workers and
`dlnn train` using only the pinned bytes, and trial artifacts, reports and the dashboard on S3.

The store contract runs on both backends: a directory and a real S3-compatible server (moto's
server mode, its own process on 127.0.0.1; see s3_support.py)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from s3_support import env_for_processes, s3_endpoint, s3_env, s3_objects, s3_url  # noqa: F401
from service_support import REPO, fake_fit, tiny_spec, write_spec

from dlnn_studies.cli import main as cli
from dlnn_studies.store import datasets
from dlnn_studies.store.artifacts import DirectoryStore, S3Store, exists, open_store
from dlnn_studies.store.urls import StoreURL, artifacts_url, parse_artifacts
from dlnn_studies.errors import UsageError

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["dir", "s3"])
def store_url(request, tmp_path):
    """Every store test runs on a directory and on the S3 server."""
    if request.param == "dir":
        return str(tmp_path / "artifacts")
    return request.getfixturevalue("s3_url")


@pytest.fixture
def data_file_field(monkeypatch):
    """A DataConfig with `file` and `file_sha256`. Until the DataConfig that reads dataset files
    is merged (issue 15 §1), a subclass with those two fields stands in for it; once it is, this
    fixture changes nothing and the tests run on the real one."""
    from dlnn_core import config as config_module
    from dlnn_core.data import DataConfig

    if {"file", "file_sha256"} <= {f.name for f in dataclasses.fields(DataConfig)}:
        return
    stand_in = dataclasses.make_dataclass("DataConfig", [("file", str, dataclasses.field(default="")),
                                                         ("file_sha256", str, dataclasses.field(default=""))],
                                          bases=(DataConfig,), frozen=True)
    monkeypatch.setitem(config_module._SECTIONS, "data", stand_in)


def blob(size: int = 300_000, seed: int = 0) -> bytes:
    """Arbitrary bytes (a dataset file's stand-in), different per seed."""
    out, h = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        h = hashlib.sha256(h).digest()
        out += h
    return bytes(out[:size])


@functools.lru_cache(maxsize=None)
def trajectories(seed: int) -> bytes:
    """A valid trajectory file's bytes (.npz: 8 trajectories of 60 samples), different per seed:
    launch reads and checks the file a spec names (dlnn_core/datafiles.py)."""
    rng = np.random.default_rng(seed)
    t = np.arange(60) / 30.0
    q = np.cumsum(rng.normal(scale=0.05, size=(8, 60, 1)), axis=1)
    buffer = io.BytesIO()
    np.savez(buffer, t=t, q=q)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Counting:
    """A store wrapper that counts reads and writes."""

    def __init__(self, store):
        self.store, self.reads, self.writes = store, 0, 0
        self.location = store.location

    def open_reader(self, artifact_id):
        self.reads += 1
        return self.store.open_reader(artifact_id)

    def write(self, artifact_id, body):
        self.writes += 1
        self.store.write(artifact_id, body)

    def remove(self, artifact_id):
        self.store.remove(artifact_id)

    def exists(self, artifact_id):
        return self.store.exists(artifact_id)


# ----------------------------------------------------------------------------- the URL


def test_one_parser_for_every_artifacts_value(tmp_path, monkeypatch):
    assert parse_artifacts("dlnn_artifacts") == StoreURL("dir", path="dlnn_artifacts")
    assert parse_artifacts(tmp_path) == StoreURL("dir", path=str(tmp_path))
    assert parse_artifacts("file:///data/art") == StoreURL("dir", path="/data/art")
    assert parse_artifacts("s3://my-bucket") == StoreURL("s3", bucket="my-bucket")
    assert parse_artifacts("s3://my.bucket/team/dlnn/") == StoreURL("s3", bucket="my.bucket", prefix="team/dlnn")
    assert str(parse_artifacts("s3://my-bucket/a/b")) == "s3://my-bucket/a/b"
    bad = {"gs://b/p": "unknown scheme", "s3://AKIA:secret@bucket/p": "credentials", "s3://bucket:9000/p": "credentials",
           "s3://Bad_Bucket/p": "bucket name", "s3://b/p": "bucket name", "s3://bucket/p?endpoint=x": "query",
           "s3://bucket/a//b": "empty", "s3://bucket/a/../b": "'..'", "file://relative": "absolute", "  ": "expected"}
    for text, words in bad.items():
        with pytest.raises(UsageError, match=words):
            parse_artifacts(text)
    monkeypatch.delenv("DLNN_ARTIFACTS", raising=False)
    assert artifacts_url(None) == "dlnn_artifacts" and artifacts_url(None, default=None) is None
    monkeypatch.setenv("DLNN_ARTIFACTS", "s3://env-bucket/x/")
    assert artifacts_url(None) == "s3://env-bucket/x" and artifacts_url("other") == "other"
    monkeypatch.setenv("DLNN_ARTIFACTS", "ftp://x")
    with pytest.raises(UsageError, match="unknown scheme"):
        artifacts_url(None)


def test_every_command_with_artifacts_takes_an_s3_url_and_refuses_a_bad_one(tmp_path, capsys):
    parser = cli.build_parser()
    takes = sorted(name for name, sub in parser._subparsers._group_actions[0].choices.items()
                   if any("--artifacts" in a.option_strings for a in sub._actions))
    assert takes == ["dashboard", "export", "launch", "lr-find", "report", "run", "train", "verify", "work"]
    for command in (["work", "x"], ["dashboard"], ["report", "x"], ["export", "x"], ["launch", "spec.toml"], ["train", "c.yaml"]):
        assert cli.main([*command, "--artifacts", "s3://key:secret@bucket/p", "--storage", f"sqlite:///{tmp_path}/none.db"]
                        if command[0] not in ("train",) else [*command, "--artifacts", "s3://key:secret@bucket/p"]) == 1
        err = capsys.readouterr().err
        assert "credentials" in err and "secret" not in err.replace("AWS_SECRET", ""), err


def test_an_s3_store_says_what_is_wrong_at_once(s3_env, monkeypatch, tmp_path):
    with pytest.raises(UsageError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket/p")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UsageError, match="no S3 credentials"):
        open_store("s3://no-such-bucket/p")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    from service_support import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(UsageError, match="cannot reach the endpoint"):
        open_store("s3://some-bucket/p")


# ----------------------------------------------------------------------------- publish / fetch (both stores)


def test_publish_once_then_fetch_a_verified_cached_copy(store_url, tmp_path):
    data = blob()
    src = tmp_path / "pendulum.npz"
    src.write_bytes(data)
    store = Counting(open_store(store_url))
    digest = datasets.publish(store, src)
    assert digest == sha(data) and store.writes == 1
    assert datasets.publish(store, src) == digest and store.writes == 1  # idempotent: the intact copy is kept
    cache = tmp_path / "cache"
    path = datasets.fetch(store, digest, cache, name="pendulum.npz")
    assert path == cache / f"{digest}.npz" and path.read_bytes() == data
    reads = store.reads
    assert datasets.fetch(store, digest, cache, name="pendulum.npz") == path and store.reads == reads  # reused, not downloaded
    path.write_bytes(data[:1000])  # a cached copy that went bad is noticed and replaced
    assert datasets.fetch(store, digest, cache, name="pendulum.npz").read_bytes() == data and store.reads == reads + 1
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary files left


def test_a_missing_or_corrupt_dataset_is_an_error_that_names_it(store_url, tmp_path):
    store = open_store(store_url)
    missing = sha(b"never published")
    with pytest.raises(datasets.DatasetMissing) as info:
        datasets.fetch(store, missing, tmp_path / "cache", name="data/flight.csv")
    assert missing in str(info.value) and store_url in str(info.value) and "flight.csv" in str(info.value)
    src = tmp_path / "d.csv"
    src.write_bytes(blob(5000))
    digest = datasets.publish(store, src)
    store.write(datasets.dataset_key(digest), io.BytesIO(b"half a fi"))  # another process's bad write under the key
    with pytest.raises(datasets.DatasetCorrupt, match="other bytes"):
        datasets.fetch(store, digest, tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written, nothing wrong left in the cache
    assert datasets.publish(store, src) == digest  # publishing again heals it
    assert datasets.fetch(store, digest, tmp_path / "cache").read_bytes() == src.read_bytes()
    with pytest.raises(UsageError, match="not the pinned"):
        datasets.publish(store, src, sha256=missing)
    with pytest.raises(UsageError, match="64 lowercase hex"):
        datasets.fetch(store, "abc", tmp_path / "cache")


class _Breaks(io.RawIOBase):
    """A body that delivers some bytes, then fails (a dropped connection)."""

    def __init__(self, data: bytes, after: int):
        self.data, self.after, self.pos = data, after, 0

    def readable(self):
        return True

    def read(self, n=-1):
        if self.pos >= self.after:
            raise ConnectionResetError("connection dropped")
        n = min(n if n and n > 0 else len(self.data), self.after - self.pos)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_interrupted_transfers_leave_no_half_file(store_url, tmp_path):
    data = blob(3 << 20)
    store = open_store(store_url)
    key = datasets.dataset_key(sha(data))
    with pytest.raises(ConnectionResetError):
        store.write(key, _Breaks(data, 1 << 20))
    assert not exists(store, key)  # an upload cut midway leaves nothing under the key
    if isinstance(store, DirectoryStore):
        assert [p.name for p in Path(store_url, "datasets").iterdir()] == []

    class DropsDownload(Counting):
        def open_reader(self, artifact_id):
            return _Breaks(data, 1 << 20)

    store.write(key, io.BytesIO(data))
    cache = tmp_path / "cache"
    with pytest.raises(ConnectionResetError):
        datasets.fetch(DropsDownload(store), sha(data), cache)
    assert list(cache.iterdir()) == []  # a download cut midway leaves nothing in the cache
    assert datasets.fetch(store, sha(data), cache).read_bytes() == data


def test_concurrent_workers_never_see_half_a_file(store_url, tmp_path, s3_env):
    """Four processes fetch the same 8 MiB dataset into one cache while a watcher reads the cache
    path: whenever the file is there, it is whole."""
    data = blob(8 << 20)
    src = tmp_path / "big.npz"
    src.write_bytes(data)
    digest = datasets.publish(open_store(store_url), src)
    cache = tmp_path / "shared-cache"
    target = datasets.cache_path(digest, cache, "big.npz")
    code = ("import sys; from dlnn_studies.store.artifacts import open_store; from dlnn_studies.store.datasets import fetch;"
            "print(fetch(open_store(sys.argv[1]), sys.argv[2], sys.argv[3], 'big.npz'))")
    env = env_for_processes({**s3_env, "PYTHONPATH": str(REPO)})
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                seen.append(sha(target.read_bytes()))
            except FileNotFoundError:
                pass

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, store_url, digest, str(cache)], env=env, cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        stop.set()
        watcher.join()
    assert all(p.returncode == 0 for p in procs), outs
    assert {o.strip() for o, _ in outs} == {str(target)}
    assert set(seen) <= {digest}
    assert [p.name for p in cache.iterdir()] == [target.name]


def test_resolve_uses_a_local_file_only_if_its_hash_matches(tmp_path, store_url, capsys):
    data, other = blob(seed=1), blob(seed=2)
    store = open_store(store_url)
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    local = work / "data" / "x.npz"
    local.write_bytes(other)  # a file with the right name but other bytes
    pinned = sha(data)
    cache = tmp_path / "cache"
    messages = []
    with pytest.raises(datasets.DatasetMissing) as info:
        datasets.resolve("data/x.npz", pinned, None, cache, base_dir=work, log=messages.append)
    text = str(info.value)
    assert "data/x.npz" in text and pinned in text and "holds other bytes" in text and "--artifacts" in text
    assert messages and "not using it" in messages[0]
    with pytest.raises(datasets.DatasetMissing, match=store_url.replace(".", r"\.")):
        datasets.resolve("data/x.npz", pinned, store, cache, base_dir=work)  # not in the store either
    src = tmp_path / "orig.npz"
    src.write_bytes(data)
    datasets.publish(store, src)
    path = datasets.resolve("data/x.npz", pinned, store, cache, base_dir=work)
    assert path.read_bytes() == data and path.parent == cache  # the store's bytes, never the local file's
    # without a store: a cached copy, or the local file when it matches (then cached, surviving a later edit)
    assert datasets.resolve("data/x.npz", pinned, None, cache, base_dir=work) == path
    local.write_bytes(other)
    cache2 = tmp_path / "cache2"
    local.write_bytes(data)
    got = datasets.resolve("data/x.npz", pinned, None, cache2, base_dir=work)
    local.write_bytes(other)
    assert got.read_bytes() == data
    assert datasets.resolve("data/x.npz", None, None, cache2, base_dir=work) == local  # not pinned: the file as it is


# ----------------------------------------------------------------------------- launch


GENERATED = 'system = "damped_oscillator"\nn_train = 256\nn_val = 128\nn_test = 128\nn_rollout = 2\nrollout_steps = 20\n'


def _spec(tmp_path: Path, file: str | None, extra_data: str = "", name: str = "withdata", sha256: str | None = None) -> Path:
    text = tiny_spec(name=name, trials=3)
    if file is not None:  # the file replaces the system and the generator's settings
        pin = f'file_sha256 = "{sha256}"\n' if sha256 else ""
        assert GENERATED in text
        text = text.replace('[base.data]\n' + GENERATED, f'[base.data]\nfile = "{file}"\n{pin}{extra_data}')
    return write_spec(tmp_path, text, filename=f"{name}.toml")


def _stored(url: str, name: str) -> dict:
    from dlnn_studies.study.service import SPEC_ATTR

    return optuna.load_study(study_name=name, storage=url).user_attrs[SPEC_ATTR]


def test_launch_publishes_the_file_and_pins_its_hash(store_url, tmp_path, monkeypatch, data_file_field):
    from dlnn_studies.study.launch import launch
    from dlnn_studies.spec.schema import load_spec

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    Path("flight.npz").write_bytes(trajectories(seed=3))
    logs = []
    launched = launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=store_url, log=logs.append)
    assert launched.created
    stored = _stored(url, "withdata")
    assert stored["base"]["data"] == {**stored["base"]["data"], "file": "flight.npz", "file_sha256": sha(trajectories(seed=3))}
    key = datasets.dataset_key(sha(trajectories(seed=3)))
    held = s3_objects(store_url) if store_url.startswith("s3://") else {key: (Path(store_url) / key).read_bytes()}
    assert held[key] == trajectories(seed=3)
    assert any("is in the artifact store" in m for m in logs)
    if store_url.startswith("s3://"):
        assert any(f"dlnn work withdata --storage {url} --artifacts {store_url}" in m for m in logs)

    from dlnn_studies.study.status import format_status, status

    assert f"data: flight.npz (sha256 {sha(trajectories(seed=3))})" in format_status(status(url, "withdata"))

    # the same file again: nothing changes
    again = launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=store_url, log=lambda m: None)
    assert not again.created and "nothing changed" in again.message

    # the file changed after launch: refused, with both hashes and the way out
    Path("flight.npz").write_bytes(trajectories(seed=4))
    with pytest.raises(UsageError) as info:
        launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=store_url, log=lambda m: None)
    text = str(info.value)
    assert sha(trajectories(seed=3)) in text and sha(trajectories(seed=4)) in text and "--name withdata-v2" in text and "--update" in text
    assert _stored(url, "withdata")["base"]["data"]["file_sha256"] == sha(trajectories(seed=3))

    # --update while no trial has started: the new bytes are published and pinned
    updated = launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=store_url, update=True, log=lambda m: None)
    assert "data:" in updated.message and sha(trajectories(seed=4)) in updated.message
    assert _stored(url, "withdata")["base"]["data"]["file_sha256"] == sha(trajectories(seed=4))
    assert datasets.fetch(open_store(store_url), sha(trajectories(seed=4)), tmp_path / "c").read_bytes() == trajectories(seed=4)

    # once a trial has run, the data of the study never changes
    study = optuna.load_study(study_name="withdata", storage=url)
    trial = study.ask()
    study.tell(trial, 1.0)
    Path("flight.npz").write_bytes(trajectories(seed=5))
    with pytest.raises(UsageError, match="1 of its trials already ran"):
        launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=store_url, update=True, log=lambda m: None)
    assert _stored(url, "withdata")["base"]["data"]["file_sha256"] == sha(trajectories(seed=4))


def test_launch_compiles_the_spec_once_and_pins_and_renames_it_as_a_fresh_compile_would(tmp_path, monkeypatch, data_file_field):
    """--name and the data pin edit the compiled spec; the result equals compiling the edited TOML,
    and the data file is hashed twice: to pin it, and by the upload that checks the bytes it sends
    (compiling the pinned spec again would read and hash it a third time)."""
    from dlnn_core import datafiles
    from dlnn_studies.study import launch as launch_module
    from dlnn_studies.spec import schema

    monkeypatch.chdir(tmp_path)
    Path("flight.npz").write_bytes(trajectories(seed=3))
    spec = schema.load_spec(_spec(tmp_path, "flight.npz"))
    compiles, hashes = [], []
    parse, file_sha = schema.parse_spec, datafiles.file_sha256
    monkeypatch.setattr(schema, "parse_spec", lambda *a, **k: compiles.append(1) or parse(*a, **k))
    monkeypatch.setattr(datasets, "sha256_file", lambda path: hashes.append(path) or file_sha(path))
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    launch_module.launch(spec, url, name="renamed", artifacts=str(tmp_path / "artifacts"), log=lambda m: None)
    assert compiles == [] and len(hashes) == 2
    kept = launch_module._pinned(launch_module._renamed(spec, "renamed"), sha(trajectories(seed=3)))
    raw = json.loads(json.dumps(spec.raw))
    raw["study"]["name"] = "renamed"
    raw["base"]["data"]["file_sha256"] = sha(trajectories(seed=3))
    assert kept == parse(raw, source="edited")
    assert _stored(url, "renamed") == kept.raw
    with pytest.raises(UsageError, match="--name"):
        launch_module._renamed(spec, "no spaces allowed")


def test_launch_refuses_what_it_cannot_pin_and_creates_nothing(tmp_path, monkeypatch, data_file_field):
    from dlnn_studies.study.launch import launch
    from dlnn_studies.spec.schema import load_spec

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    art = str(tmp_path / "art")
    with pytest.raises(UsageError, match="base.data.file: nope.npz: no such file"):  # the spec's check, before launch
        launch(load_spec(_spec(tmp_path, "nope.npz")), url, artifacts=art, log=lambda m: None)
    Path("d.npz").write_bytes(trajectories(seed=6))
    with pytest.raises(UsageError, match="pins data.file_sha256"):
        launch(load_spec(_spec(tmp_path, "d.npz", sha256=sha(b"other"))), url, artifacts=art, log=lambda m: None)
    with pytest.raises(UsageError, match="--artifacts"):
        launch(load_spec(_spec(tmp_path, "d.npz")), url, artifacts=None, log=lambda m: None)
    Path("d.npz").unlink()
    with pytest.raises(datasets.DatasetMissing, match="does not hold its pinned bytes"):  # pinned, not here, not in the store
        launch(load_spec(_spec(tmp_path, "d.npz", sha256=sha(trajectories(seed=6)))), url, artifacts=art, log=lambda m: None)
    assert optuna.get_all_study_names(storage=url) == []
    # a pinned spec launches from a host without the file once the store holds its bytes
    src = tmp_path / "elsewhere.npz"
    src.write_bytes(trajectories(seed=6))
    datasets.publish(open_store(art), src)
    assert launch(load_spec(_spec(tmp_path, "d.npz", sha256=sha(trajectories(seed=6)))), url, artifacts=art, log=lambda m: None).created


# ----------------------------------------------------------------------------- workers, export, train


def _checkpointing_fit(seen: list):
    """fake_fit that records the data file it was given (path and the hash of its bytes) and
    writes a checkpoint, so the worker uploads it."""
    inner = fake_fit()

    def fit(config, report=None, out_dir=None, metrics=None):
        path = Path(config.data.file)
        seen.append((str(path), sha(path.read_bytes())))
        result = inner(config, report, out_dir)
        checkpoint = Path(out_dir) / "model.pt"
        checkpoint.write_bytes(b"weights of " + path.name.encode())
        return dataclasses.replace(result, checkpoint=str(checkpoint))

    return fit


def test_workers_train_on_the_pinned_bytes_and_export_carries_the_hash(store_url, tmp_path, monkeypatch, data_file_field, capsys):
    from dlnn_studies.study.export import export
    from dlnn_studies.study.launch import launch
    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.cli.train import load_train_config, local_data
    from dlnn_studies.study.worker import run_worker

    launch_dir, worker_dir = tmp_path / "launch-host", tmp_path / "worker-host"
    launch_dir.mkdir()
    worker_dir.mkdir()
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    data = trajectories(seed=7)
    (launch_dir / "flight.npz").write_bytes(data)
    monkeypatch.chdir(launch_dir)
    launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=store_url, log=lambda m: None)

    # another host: a file of the same name holds other bytes; the worker never uses it
    monkeypatch.chdir(worker_dir)
    (worker_dir / "flight.npz").write_bytes(trajectories(seed=8))
    seen = []
    cache = tmp_path / "worker-cache"
    logs = []
    assert run_worker(url, "withdata", fit_fn=_checkpointing_fit(seen), install_signals=False, artifacts=store_url,
                      log=logs.append, plots=False, data_cache=cache) == 0
    assert seen and {h for _, h in seen} == {sha(data)} and {p for p, _ in seen} == {str(cache / f"{sha(data)}.npz")}
    study = optuna.load_study(study_name="withdata", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    from dlnn_studies.study import records

    for t in study.trials:  # each trial keeps the name and hash it trained on, not the cache path
        assert records.trial_config(t)["data"]["file"] == "flight.npz"
        assert records.trial_config(t)["data"]["file_sha256"] == sha(data)
        metas = optuna.artifacts.get_all_artifact_meta(t, storage=study._storage)
        assert [m.filename for m in metas] == ["model.pt"]
        with open_store(store_url).open_reader(metas[0].artifact_id) as f:  # the checkpoint is in the store (S3 too)
            assert f.read() == b"weights of " + f"{sha(data)}.npz".encode()
        assert "artifact_error" not in t.user_attrs

    # a verification study derived from the stored spec keeps the pin; its workers fetch the same bytes
    from dlnn_studies.study.verify import verify

    child, _ = verify(url, "withdata", top=1, seeds=1, log=lambda m: None)
    assert _stored(url, child)["base"]["data"]["file_sha256"] == sha(data)
    seen.clear()
    assert run_worker(url, child, fit_fn=_checkpointing_fit(seen), install_signals=False, artifacts=store_url,
                      log=lambda m: None, plots=False, data_cache=tmp_path / "cache-2") == 0
    assert seen and {h for _, h in seen} == {sha(data)}

    result = export(url, "withdata", top=1, out=tmp_path / "exports", artifacts=store_url)
    item = result.items[0]
    exported = load_train_config(str(item.config_path))
    assert (exported.data.file, exported.data.file_sha256) == ("flight.npz", sha(data))
    assert f"--artifacts {store_url}" in result.retrain(item) and f"is in {store_url}" in result.notes[0]
    meta = json.loads(json.dumps(__import__("yaml").safe_load(item.meta_path.read_text())))
    assert meta["dataset"] == {"file": "flight.npz", "sha256": sha(data)}
    assert sha(data) in item.config_path.read_text().split("\n", 3)[1]  # the header names the dataset

    # `dlnn train` elsewhere: with the store it fetches by hash; without it, the wrong local file is refused
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "train-cache"))
    monkeypatch.delenv("DLNN_ARTIFACTS", raising=False)
    local = local_data(exported, store_url)
    assert Path(local.data.file).read_bytes() == data and local.data.file_sha256 == sha(data)
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "empty-cache"))
    assert cli.main(["train", str(item.config_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "flight.npz" in err and sha(data) in err and "holds other bytes" in err
    (worker_dir / "flight.npz").write_bytes(data)  # the right bytes in place: used (and cached)
    assert Path(local_data(exported, None).data.file).read_bytes() == data


def test_a_worker_without_the_bytes_stops_at_once_and_says_which(tmp_path, monkeypatch, data_file_field):
    from dlnn_studies.study.launch import launch
    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.study.worker import run_worker

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    Path("flight.npz").write_bytes(trajectories(seed=9))
    launch(load_spec(_spec(tmp_path, "flight.npz")), url, artifacts=str(tmp_path / "art"), log=lambda m: None)
    Path("flight.npz").write_bytes(trajectories(seed=10))
    with pytest.raises(datasets.DatasetMissing) as info:  # another store: not there; the local file: other bytes
        run_worker(url, "withdata", fit_fn=fake_fit(), install_signals=False, artifacts=str(tmp_path / "other-art"),
                   log=lambda m: None, data_cache=tmp_path / "c")
    assert sha(trajectories(seed=9)) in str(info.value) and "other-art" in str(info.value)
    assert optuna.load_study(study_name="withdata", storage=url).trials == []


# ----------------------------------------------------------------------------- trial artifacts, report and dashboard on S3


def test_workers_report_and_dashboard_use_s3(s3_url, tmp_path, monkeypatch):
    """No dataset file: the service's existing artifacts (checkpoints, the report's figures) go to
    S3, and the dashboard built by `dlnn dashboard` serves them from there."""
    from wsgiref.util import setup_testing_defaults

    from dlnn_studies.ops.dashboard import build_app
    from dlnn_studies.study.report import report
    from dlnn_studies.study.launch import launch
    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.study.worker import run_worker

    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=4))), url, log=lambda m: None)
    inner = fake_fit()

    def fit(config, report=None, out_dir=None, metrics=None):
        result = inner(config, report, out_dir)
        (Path(out_dir) / "model.pt").write_bytes(b"ckpt")
        return dataclasses.replace(result, checkpoint=str(Path(out_dir) / "model.pt"))

    assert run_worker(url, "tiny", fit_fn=fit, install_signals=False, artifacts=s3_url, log=lambda m: None, plots=False) == 0
    written = report(url, "tiny", tmp_path / "reports", artifacts=s3_url)
    assert written.note_saved
    objects = s3_objects(s3_url)
    assert sum(v == b"ckpt" for v in objects.values()) == 4 and any(v.startswith(b"\x89PNG") for v in objects.values())

    app, storage = build_app(url, s3_url, "127.0.0.1")
    study = optuna.load_study(study_name="tiny", storage=url)
    trial = study.trials[0]
    meta = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)[0]
    environ = {"PATH_INFO": f"/artifacts/{study._study_id}/{trial._trial_id}/{meta.artifact_id}", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = {}
    body = b"".join(app(environ, lambda s, headers, exc=None: status.setdefault("s", s)))
    assert status["s"].startswith("200") and body == b"ckpt"
    from dlnn_studies.store.storage import close_storage

    close_storage(storage)


def test_s3_store_is_optunas_boto3_store_with_a_prefix(s3_url):
    """The canary for the upstream class this wraps: Optuna's Boto3ArtifactStore(bucket, client)."""
    import inspect

    params = list(inspect.signature(optuna.artifacts.Boto3ArtifactStore.__init__).parameters)
    assert params[:3] == ["self", "bucket_name", "client"]
    store = open_store(s3_url)
    assert isinstance(store, S3Store) and isinstance(store._store, optuna.artifacts.Boto3ArtifactStore)
    store.write("abc", io.BytesIO(b"x"))
    assert s3_objects(s3_url) == {"abc": b"x"} and store.exists("abc") and not store.exists("abd")
    store.remove("abc")
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        store.open_reader("abc")
