"""Bad inputs refused at launch with one message naming the field, trials that cannot outlive
the study, files that stay where the user said, and full disks that say so (issue 14)."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from service_support import fake_fit, storage_url, tiny_spec, wait_until, write_spec  # noqa: F401 (storage_url is a fixture)

from dlnn_core import ConfigError
from dlnn_core.config import LIMITS, PRESETS, TrainConfig
from dlnn_studies.cli import main as cli
from dlnn_studies.study.launch import launch
from dlnn_studies.spec.schema import SpecError, load_spec, parse_spec
from dlnn_studies.store.urls import normalize_url
from dlnn_studies.study.worker import run_worker


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(tomllib.loads(text))
    return info.value.messages


def _work(url, name, tmp_path, fit, **kw):
    logs: list[str] = []
    kw.setdefault("timeout", 180)
    assert run_worker(url, name, fit_fn=fit, install_signals=False, artifacts=tmp_path / "artifacts", log=logs.append, **kw) == 0
    return logs


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=normalize_url(url)).get_trials(deepcopy=False)


# ----------------------------------------------------------------------------- 3. launch-time bounds


def test_every_numeric_setting_has_a_documented_limit():
    """LIMITS is the one table: every numeric setting has a bound or an explicit None with its
    reason, and the integer flag matches the setting's type."""
    for cfg in (TrainConfig(), *PRESETS.values()):
        flat = cfg.to_flat()
        numeric = {k for k, v in flat.items() if not isinstance(v, (str, bool))}
        assert numeric <= set(LIMITS), numeric - set(LIMITS)
        for key, value in flat.items():
            if isinstance(value, int) and not isinstance(value, bool):
                assert LIMITS[key].integer, key
    assert set(LIMITS) <= set(TrainConfig().to_flat())
    for key, limit in LIMITS.items():
        assert len(limit.why) > 20 and not limit.why.startswith("as "), key
        if limit.high is not None:
            assert limit.high >= (TrainConfig().to_flat()[key] or 0), key  # the defaults are within bounds


@pytest.mark.parametrize("key, value", [("model.hidden", 10**9), ("model.depth", 65), ("data.n_train", 10**12),
                                        ("epochs", 10**12), ("data.n_rollout", 10**6), ("seed", 2**40)])
def test_settings_above_their_bound_are_refused(key, value):
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_flat({key: value, "batch_size": 1})
    assert info.value.field == key and "at most" in str(info.value)


def test_batch_larger_than_the_training_set_is_an_error_not_a_clamp():
    with pytest.raises(ConfigError, match=r"batch_size: 512 is not allowed; expected at most the 256 training samples"):
        TrainConfig().with_flat({"data.n_train": 256, "batch_size": 512})
    assert TrainConfig().with_flat({"data.n_train": 256, "batch_size": 256}).batch_size == 256
    # trajectories: the training set is n_train trajectories × their samples
    traj = {"data.kind": "trajectories", "data.n_train": 2, "data.duration": 1.0, "data.rate_hz": 10.0}
    assert TrainConfig().with_flat({**traj, "batch_size": 22}).train_samples == 22
    with pytest.raises(ConfigError, match="batch_size: 23"):
        TrainConfig().with_flat({**traj, "batch_size": 23})


def test_integer_settings_refuse_float_bounds_and_steps():
    space = "[space.model.hidden]\nlow = 16\nhigh = 64\nstep = 16.0\n[space.model.depth]\nlow = 1.5\nhigh = 3\n"
    problems = _problems(tiny_spec(space=space))
    assert "space.model.hidden.step: 16.0 must be an integer (model.hidden takes whole numbers; write 16)" in problems
    assert "space.model.depth.low: 1.5 must be an integer (model.depth takes whole numbers)" in problems
    assert len(problems) == 2


def test_space_extremes_and_base_are_checked_against_the_limits():
    space = ("[space.model.hidden]\nlow = 16\nhigh = 1_000_000_000\n[space.epochs]\nchoices = [10, 1_000_000_000_000]\n"
             "[space.data.n_train]\nvalue = 1_000_000_000_000\n")
    problems = _problems(tiny_spec(space=space))
    assert any(p.startswith("space.model.hidden.high: 1000000000 is not allowed; expected at most 65,536") for p in problems)
    assert any(p.startswith("space.epochs.choices[1]: 1000000000000 is not allowed; expected at most 1,000,000") for p in problems)
    assert any(p.startswith("space.data.n_train.value: 1000000000000 is not allowed") for p in problems)
    problems = _problems(tiny_spec().replace("epochs = 2", "epochs = 1_000_000_000_000"))
    assert any(p.startswith("base.epochs: 1000000000000 is not allowed; expected at most 1,000,000") for p in problems)


def test_batch_size_against_the_training_set_at_launch(tmp_path, capsys):
    # base alone: the tiny base trains on 256 states
    problems = _problems(tiny_spec().replace("batch_size = 128", "batch_size = 512"))
    assert any(p.startswith("base.batch_size: 512 is not allowed; expected at most the 256 training samples") for p in problems)
    # the largest searched batch against the smallest searched training set
    space = "[space.batch_size]\nchoices = [64, 512]\n[space.data.n_train]\nlow = 128\nhigh = 1024\n"
    problems = _problems(tiny_spec(space=space))
    assert problems == ["space.batch_size: the largest batch_size (512) does not fit the smallest data.n_train (128): "
                        "512 is not allowed; expected at most the 128 training samples (data.n_train = 128)"]
    # every combination fits: no false alarm although 512 > the base's 256
    ok = "[space.batch_size]\nchoices = [64, 512]\n[space.data.n_train]\nlow = 512\nhigh = 1024\n"
    assert parse_spec(tomllib.loads(tiny_spec(space=ok))).trials == 6
    path = write_spec(tmp_path, tiny_spec(space=space))
    assert cli.main(["launch", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 1
    assert "does not fit the smallest data.n_train" in capsys.readouterr().err and not (tmp_path / "x.db").exists()


def test_a_trial_stops_within_an_epoch_of_the_study_timeout(storage_url, tmp_path):
    """Without the check a 2000-epoch trial of 10 ms epochs runs 20 s past a 1 s study timeout."""
    text = tiny_spec(trials=5, epochs=2000).replace("trials = 5", "trials = 5\ntimeout_s = 1.0")
    launch(load_spec(write_spec(tmp_path, text)), storage_url, log=lambda m: None)
    start = time.monotonic()
    _work(storage_url, "tiny", tmp_path, fake_fit(epochs_delay=0.01))
    assert time.monotonic() - start < 10
    trials = _trials(storage_url, "tiny")
    assert len(trials) == 1
    t = trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "timeout"
    assert t.user_attrs["reason"].startswith("study timeout reached at epoch ")
    epoch = int(t.user_attrs["reason"].split("epoch ")[1].split()[0])
    assert 2 <= epoch < 2000 and max(t.intermediate_values) == epoch  # its learning curve is kept
    assert (t.datetime_complete - t.datetime_start).total_seconds() < 5.0  # not the 20 s of its 2000 epochs


# ----------------------------------------------------------------------------- 4. paths and names


def _finished_study(url, tmp_path, name="tiny"):
    launch(load_spec(write_spec(tmp_path, tiny_spec(name=name, trials=3))), url, log=lambda m: None)
    _work(url, name, tmp_path, fake_fit())


def _files(root):
    """Files under root, less the SQLite storage's own (its -wal/-shm come and go with its connections)."""
    return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("dlnn.db")}


def test_export_stays_inside_out_whatever_the_stored_name(storage_url, tmp_path):
    """Studies created through the Optuna API (with database access) may carry any name."""
    from dlnn_studies.study.export import export

    _finished_study(storage_url, tmp_path)
    out = tmp_path / "a" / "b" / "out"
    outside = tmp_path / "abs" / "target"
    bad = ["../../x", str(outside), "..", ".", "a/../../../y", "sp ace\nnew-line"]
    for name in bad:
        optuna.copy_study(from_study_name="tiny", from_storage=normalize_url(storage_url), to_storage=normalize_url(storage_url),
                          to_study_name=name)
    before = _files(tmp_path) - _files(out) if out.exists() else _files(tmp_path)
    folders = []
    for name in bad:
        result = export(storage_url, name, top=1, out=out)
        assert result.folder.resolve().parent == out.resolve(), (name, result.folder)
        assert (result.folder / "summary.md").exists() and result.items[0].config_path.parent == result.folder
        folders.append(result.folder.name)
    assert len(set(folders)) == len(bad)  # different unsafe names never share a folder
    assert _files(tmp_path) - _files(out) == before  # nothing written outside out
    assert not (tmp_path / "a" / "x").exists() and not outside.exists() and not (tmp_path / "y").exists()
    assert export(storage_url, "tiny", top=1, out=out).folder == out / "tiny"  # valid names are used as they are


def test_study_names_are_checked_the_same_way_wherever_they_enter(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    rule = "must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit"
    assert _problems(tiny_spec(name="../x")) == [f"study.name: '../x' {rule}"]
    path = write_spec(tmp_path, tiny_spec())
    for argv, field in ((["launch", str(path), "--name", "../x"], "--name"), (["run", str(path), "--name", "/abs/x"], "--name"),
                        (["refine", "tiny", "--name", "a b"], "--name")):
        assert cli.main([*argv, "--storage", url]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f": error: {field}: " in err and rule in err, err
    assert not (tmp_path / "x.db").exists()  # refused before the storage is touched


# ----------------------------------------------------------------------------- 5. clean errors


def _one_line_error(capsys, *needles):
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_a_spec_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes(tiny_spec().replace('name = "tiny"', 'name = "tiny"\ndescription = "Pr\u00fcfung"').encode("latin-1"))
    assert cli.main(["launch", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 1
    _one_line_error(capsys, "latin1.toml: the spec is not UTF-8 text (byte", "save it as UTF-8")


@pytest.mark.parametrize("value", ["1e12", "1000000000000"])
def test_train_refuses_a_huge_setting_before_allocating_it(value, tmp_path, capsys):
    assert cli.main(["train", "structured_adam", "--set", f"data.n_train={value}", "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    _one_line_error(capsys, "data.n_train: 1000000000000 is not allowed; expected at most 100,000,000")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_dashboard_port_is_checked_before_anything_is_created(port, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dashboard", "--port", port, "--artifacts", str(tmp_path / "art")]) == 1
    _one_line_error(capsys, "argument --port:", "is not a port number (1-65535)")
    assert list(tmp_path.iterdir()) == []


def test_long_values_are_shortened_in_messages(tmp_path, capsys):
    from dlnn_core.errors import shorten

    long = "n" * 10_000
    assert len(shorten(long, 80)) == 80 and shorten("short", 80) == "short"
    url = f"sqlite:///{tmp_path / 'x.db'}"
    path = write_spec(tmp_path, tiny_spec())
    assert cli.main(["launch", str(path), "--name", long, "--storage", url]) == 1
    assert len(_one_line_error(capsys, "--name: 'nnn")) < 300
    assert cli.main(["launch", str(path), "--storage", url]) == 0
    capsys.readouterr()
    for argv in (["status", long], ["export", long], ["work", long], ["refine", long]):
        assert cli.main([*argv, "--storage", url]) == 1
        assert len(_one_line_error(capsys, "no study named 'nnn")) < 300, argv
    assert cli.main(["train", "structured_adam", "--set", f"optimizer.name={long}"]) == 1
    assert len(_one_line_error(capsys, "optimizer.name: 'nnn")) < 400
    assert cli.main(["launch", str(path), "--storage", url, "--bogus", long]) == 1
    assert len(_one_line_error(capsys, "unrecognized arguments")) < 400


# ----------------------------------------------------------------------------- 6. full disks


class _FullDiskStore(optuna.artifacts.FileSystemArtifactStore):
    """An artifact store on a disk that fills up mid-write: a partial file, then ENOSPC."""

    def write(self, artifact_id, content_body):
        with open(f"{self._base_path}/{artifact_id}", "wb") as f:
            f.write(content_body.read(3))
        raise OSError(errno.ENOSPC, "No space left on device")


def _fit_with_checkpoint(inner):
    """fake_fit that also writes a checkpoint file, so the worker uploads it."""
    from dataclasses import replace

    def fit(config, report=None, out_dir=None, metrics=None):
        result = inner(config, report=report, out_dir=out_dir)
        path = Path(out_dir) / "model.pt"
        path.write_bytes(b"checkpoint" * 100)
        return replace(result, checkpoint=str(path))

    return fit


def test_every_artifact_failure_is_recorded_and_partial_files_removed(storage_url, tmp_path, monkeypatch):
    import dlnn_studies.study.plots
    import dlnn_studies.study.worker

    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    monkeypatch.setattr(dlnn_studies.study.worker, "artifact_store", lambda path: _FullDiskStore(str(store_dir)))
    monkeypatch.setattr(dlnn_studies.study.plots, "rollout_png", lambda checkpoint, out: Path(out).write_bytes(b"png" * 100) and Path(out))
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=2))), storage_url, log=lambda m: None)
    _work(storage_url, "tiny", tmp_path, _fit_with_checkpoint(fake_fit()))
    trials = _trials(storage_url, "tiny")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # a full artifact disk never fails a trial
    for t in trials:
        errors = t.user_attrs["artifact_error"]
        assert [e.split(":")[0] for e in errors] == ["model.pt", "rollout.png"], errors
        assert all("OSError: [Errno 28] No space left on device" in e for e in errors)
    assert list(store_dir.iterdir()) == []  # no 0-byte or partial file left behind


def test_a_full_tmpdir_says_so(storage_url, tmp_path, monkeypatch):
    import shutil
    import tempfile

    import dlnn_studies.store.disk

    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=3))), storage_url, log=lambda m: None)
    calls = {"n": 0}
    inner = fake_fit()

    def fit(config, report=None, out_dir=None, metrics=None):
        calls["n"] += 1
        if calls["n"] == 1:  # an OSError from our own writes (config.json, metrics.json)
            raise OSError(errno.ENOSPC, "No space left on device")
        if calls["n"] == 2:  # torch.save on a full disk hides the errno; TMPDIR is (nearly) full
            monkeypatch.setattr(dlnn_studies.store.disk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return inner(config, report=report, out_dir=out_dir)

    _work(storage_url, "tiny", tmp_path, fit)
    monkeypatch.undo()
    first, second, third = sorted(_trials(storage_url, "tiny"), key=lambda t: t.number)
    assert first.state == second.state == TrialState.FAIL
    assert first.user_attrs["reason"].startswith("no space left on device while writing the trial's checkpoint and run files")
    assert "OSError: [Errno 28] No space left on device" in first.user_attrs["reason"]
    assert second.user_attrs["reason"].startswith(
        f"no space left on device in TMPDIR={tempfile.gettempdir()} (0.0 MiB free) while writing the trial's checkpoint and run files")
    assert third.state == TrialState.COMPLETE


def test_a_full_tmpdir_before_training_says_so(tmp_path, monkeypatch):
    import tempfile

    url = f"sqlite:///{tmp_path / 'x.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=1))), url, log=lambda m: None)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/dlnn-trial0-x")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", full)
    _work(url, "tiny", tmp_path, fake_fit())
    monkeypatch.undo()
    (t,) = _trials(url, "tiny")
    assert t.state == TrialState.FAIL and t.user_attrs["status"] == "error"
    assert t.user_attrs["reason"].startswith("no space left on device") and "while writing the trial's temporary directory" in t.user_attrs["reason"]


# ----------------------------------------------------------------------------- 2. database outage

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A PostgreSQL server of the test's own (initdb in a temporary directory, its own port), so
    the test can really stop the database without touching the shared one."""

    def __init__(self):
        import os
        import tempfile

        from service_support import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="dlnn-own-pg-"))
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0  # initdb and postgres refuse to run as root
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{tool} failed: {proc.stdout}\n{proc.stderr}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "immediate") -> None:
        self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _running_mid_trial(url: str) -> set[int]:
    """Ids of the RUNNING trials that have reported at least two epochs."""
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=2)
    except psycopg2.OperationalError:
        return set()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT t.trial_id FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                        "WHERE t.state = 'RUNNING' GROUP BY t.trial_id HAVING count(*) >= 2")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.skipif(not (PG_BIN / "initdb").exists(), reason="needs PostgreSQL 15's server binaries to run a database of its own")
def test_trials_cut_by_a_database_outage_are_requeued_when_it_is_back(tmp_path):
    """The database stops mid-trial for longer than the heartbeat grace period, twice. With
    max_retry = 0 the heartbeat path may not retry anything, so every cut trial must come back
    through the worker's own re-queue: the study still ends with its whole budget complete."""
    pg = OwnPostgres()
    try:
        pg.start()
        text = tiny_spec(trials=6, epochs=8).replace("grace_period = 3", "grace_period = 3\nmax_retry = 0")
        launch(load_spec(write_spec(tmp_path, text)), pg.url, log=lambda m: None)
        done: dict = {}

        def work():
            try:
                done["logs"] = _work(pg.url, "tiny", tmp_path, fake_fit(epochs_delay=0.25), timeout=300)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                done["error"] = exc

        thread = threading.Thread(target=work)
        thread.start()
        cut_ids: set[int] = set()
        for _ in range(2):  # each time a new trial: the last one may still be RUNNING until the worker is back
            cut_ids |= wait_until(lambda: _running_mid_trial(pg.url) - cut_ids, timeout=120, interval=0.05,
                                  what="a new trial in mid-training")
            pg.stop()
            time.sleep(6)  # > grace_period (3 s): the heartbeat of the cut trial goes stale
            pg.start()
        thread.join(360)
        assert not thread.is_alive() and "error" not in done, done.get("error")
        trials = _trials(pg.url, "tiny")
        counted = [t for t in trials if "retry_history" not in t.system_attrs]
        cut = [t for t in trials if t.state == TrialState.FAIL]
        summary = [(t.number, t.state.name, t.user_attrs.get("reason"), t.system_attrs.get("retry_history")) for t in trials]
        summary += done.get("logs", [])
        assert len(counted) == 6 and len(cut) >= 2, "\n".join(map(str, summary))
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 6, summary  # none lost
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], summary
        retried = {t.system_attrs["retry_history"][-1] for t in trials if "retry_history" in t.system_attrs}
        assert {t.number for t in cut} <= retried, summary  # every cut trial was re-queued
        assert all("connection lost" in (t.user_attrs.get("reason") or "") for t in cut), summary
    finally:
        pg.remove()
