"""Trajectory files (dlnn_core/datafiles.py): both formats round-trip, every bad file gets one
message naming the problem and where it is, targets/splits/ood follow their documented rules,
training on a file runs end to end without metrics that need the true system, and a spec naming
a bad file creates no study."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
from service_support import write_spec

from dlnn_core import ConfigError, DataConfig, TrainConfig, fit, load_data
from dlnn_core import datafiles as df
from dlnn_core import file_dataset
from dlnn_core.data import integrate
from dlnn_core.evaluate import rollout_metrics
from dlnn_core.systems import get_system
from dlnn_core.train import evaluate_checkpoint
from dlnn_studies.cli import main as cli
from dlnn_studies.spec.schema import SpecError, load_spec

RATE = 30.0
LENGTHS = (31, 45, 24, 38, 27, 41, 33, 36)


def _pendulum_trajectories(lengths=LENGTHS, seed=0):
    """Damped pendulum trajectories of different lengths and start times, exact q̇ and q̈."""
    system = get_system("damped_pendulum")
    rng = np.random.default_rng(seed)
    amplitude = np.linspace(0.3, 1.6, len(lengths))[:, None]  # trajectory 7 swings widest
    traj = integrate(system, amplitude, rng.uniform(-0.5, 0.5, (len(lengths), 1)), (max(lengths) - 1) / RATE, RATE)
    t = [traj.t[:n] + 0.25 * i for i, n in enumerate(lengths)]
    q = [traj.q[i, :n] for i, n in enumerate(lengths)]
    v = [traj.qdot[i, :n] for i, n in enumerate(lengths)]
    a = [system.eom(torch.from_numpy(q[i]), torch.from_numpy(v[i])).numpy() for i in range(len(lengths))]
    return system, t, q, v, a


@pytest.fixture(scope="module")
def pendulum():
    return _pendulum_trajectories()


@pytest.fixture
def pendulum_file(pendulum, tmp_path):
    _, t, q, v, a = pendulum
    return df.write_trajectory_file(tmp_path / "pendulum.npz", t, q, v, a, names=["theta"], angles=[True])


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", ["npz", "csv"])
@pytest.mark.parametrize("derivatives", [True, False])
def test_both_formats_round_trip_ragged_trajectories(pendulum, tmp_path, suffix, derivatives):
    _, t, q, v, a = pendulum
    path = df.write_trajectory_file(tmp_path / f"x.{suffix}", t, q, v if derivatives else None, a if derivatives else None,
                                    names=["theta"], angles=[True])
    tf = df.read_trajectory_file(path)
    assert tf.count == len(LENGTHS) and tf.lengths == LENGTHS and tf.names == ("theta",) and tf.angles == (True,)
    assert tf.dt == pytest.approx(1 / RATE, rel=1e-9)
    assert tf.sha256 == df.file_sha256(path)
    for i in range(len(LENGTHS)):
        np.testing.assert_array_equal(tf.t[i], t[i])  # exact: csv writes repr(float)
        np.testing.assert_array_equal(tf.q[i], q[i])
        if derivatives:
            np.testing.assert_array_equal(tf.qdot[i], v[i])
            np.testing.assert_array_equal(tf.qddot[i], a[i])
    assert (tf.qdot is None) == (tf.qddot is None) == (not derivatives)


def test_npz_with_shared_times_and_no_optional_arrays(tmp_path):
    q = np.random.default_rng(0).normal(size=(3, 12, 2))
    np.savez(tmp_path / "plain.npz", t=np.arange(12) * 0.1, q=q)
    tf = df.read_trajectory_file(tmp_path / "plain.npz")
    assert tf.names == ("q1", "q2") and tf.angles == (False, False) and tf.lengths == (12, 12, 12)
    np.testing.assert_array_equal(tf.q[2], q[2])


# ----------------------------------------------------------------------------- bad files


def _npz(tmp_path, **arrays):
    base = {"t": np.arange(20) * 0.1, "q": np.zeros((3, 20, 2))}
    base.update(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def _csv(tmp_path, text):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


def _rows(n=12, dt=0.1, tid="a", start=0.0):
    return "".join(f"{tid},{start + k * dt!r},{float(np.sin(k * dt))!r}\n" for k in range(n))


def _nan_at(shape, where, value=np.nan):
    a = np.zeros(shape)
    a[where] = value
    return a


BAD_NPZ = {
    "missing q": (dict(q=None), "missing array 'q'"),
    "missing t": (dict(t=None), "missing array 't'"),
    "unknown array": (dict(qd=np.zeros((3, 20, 2))), "unknown array 'qd'; known: t, q, qdot"),
    "q not 3-d": (dict(q=np.zeros((20, 2))), "array 'q' has shape (20, 2); expected [N, T, n]"),
    "t shape": (dict(t=np.arange(19) * 0.1), "array 't' has shape (19,); expected [T] = (20,) or [N, T] = (3, 20)"),
    "qdot shape": (dict(qdot=np.zeros((3, 20, 1))), "array 'qdot' has shape (3, 20, 1); expected q's shape (3, 20, 2)"),
    "angle mask length": (dict(angles=np.array([True, False, True])), "angle mask 'angles' has 3 entries; expected one per coordinate (2)"),
    "names count": (dict(names=np.array(["x"])), "array 'names' has 1 entries; q has 2 coordinates"),
    "lengths range": (dict(lengths=np.array([20, 21, 5])), "lengths[1] = 21 is outside [1, 20]"),
    "object array": (dict(lengths=np.array([np.zeros(2), 1], dtype=object)), "array 'lengths' is an object array"),
    "nan in q": (dict(q=_nan_at((3, 20, 2), (2, 5, 1))), "trajectory 2, sample 5, column 'q_q2': value is nan"),
    "inf in qddot": (dict(qddot=_nan_at((3, 20, 2), (1, 7, 0), np.inf)), "trajectory 1, sample 7, column 'qddot_q1': value is inf"),
    "nan in t": (dict(t=_nan_at((3, 20), (0, 3))), "trajectory 0, sample 3, column 't'"),
    "time not increasing": (dict(t=np.r_[np.arange(10), np.arange(9, 19)] * 0.1), "trajectory 0: time is not increasing at sample 10 (t = 0.9 after 0.9)"),
    "one sample": (dict(lengths=np.array([20, 1, 20])), "trajectory 1 has 1 sample; every trajectory needs at least 2"),
    "non-uniform": (dict(t=np.r_[np.arange(15) * 0.1, 1.4 + np.arange(1, 6) * 0.13]),
                    "trajectory 0 is not uniformly sampled: its time steps deviate from their median (0.1 s) by up to 30 % (first at sample 15)"),
    "two rates": (dict(t=np.stack([np.arange(20) * 0.1, np.arange(20) * 0.1, np.arange(20) * 0.2])),
                  "trajectory 2 is sampled every 0.2 s, the file's trajectories every 0.1 s; one file needs one sampling step"),
}


@pytest.mark.parametrize("case", BAD_NPZ, ids=list(BAD_NPZ))
def test_bad_npz_files_name_the_problem_and_where(tmp_path, case):
    arrays, message = BAD_NPZ[case]
    path = _npz(tmp_path, **arrays)
    with pytest.raises(df.DataFileError) as info:
        df.read_trajectory_file(path)
    assert str(info.value).startswith(f"data.file: {path}: ") and message in str(info.value), str(info.value)
    assert isinstance(info.value, ConfigError) and info.value.field == "data.file"


HEADER = "trajectory,t,q_x\n"
BAD_CSV = {
    "no header": ("# just a comment\n", "has no header line"),
    "missing t": ("trajectory,q_x\na,1\n", "missing column 't'"),
    "unknown column": ("trajectory,t,q_x,speed\n", "line 1: unknown column 'speed'"),
    "partial velocities": ("trajectory,t,q_x,q_y,qdot_x\n", "the qdot_ columns name x but the q_ columns name x, y"),
    "not a number": (HEADER + _rows(3) + "a,0.3,oops\n", "line 5: trajectory 'a', sample 3, column 'q_x': 'oops' is not a number"),
    "nan": (HEADER + _rows(4) + "a,0.4,nan\n" + _rows(5, start=0.5), "trajectory 'a', sample 4, column 'q_x', line 6: value is nan"),
    "empty cell": (HEADER + "a,0.0,\n", "sample 0, column 'q_x': '' is not a number"),
    "ragged row": (HEADER + "a,0.0,1,2\n", "line 2: 4 fields; the header has 3"),
    "time backwards": (HEADER + _rows(6) + _rows(6, tid="b") + "b,0.45,1\n",
                       "trajectory 'b': time is not increasing at sample 6, line 14 (t = 0.45 after 0.5)"),
    "unknown angle": ("# angles: y\n" + HEADER + _rows(3), "the '# angles:' line names 'y', which is not a coordinate; coordinates: x"),
    "no rows": (HEADER, "has no data rows"),
}


@pytest.mark.parametrize("case", BAD_CSV, ids=list(BAD_CSV))
def test_bad_csv_files_name_the_problem_and_where(tmp_path, case):
    text, message = BAD_CSV[case]
    path = _csv(tmp_path, text)
    with pytest.raises(df.DataFileError) as info:
        df.read_trajectory_file(path)
    assert message in str(info.value), str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(df.DataFileError, match="no such file"):
        df.read_trajectory_file(tmp_path / "nope.npz")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(df.DataFileError, match="unknown format '.txt'; expected one of .npz, .csv"):
        df.read_trajectory_file(tmp_path / "x.txt")
    (tmp_path / "garbled.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(df.DataFileError, match="cannot be read as .npz"):
        df.read_trajectory_file(tmp_path / "garbled.npz")


def test_trajectories_shorter_than_the_derivative_window_are_refused(pendulum, tmp_path):
    _, t, q, _, _ = pendulum
    t, q = list(t), list(q)
    t[3], q[3] = t[3][:9], q[3][:9]
    path = df.write_trajectory_file(tmp_path / "short.csv", t, q, names=["theta"])
    cfg = DataConfig(file=str(path))  # DataConfig itself does not read the file
    with pytest.raises(df.DataFileError) as info:
        load_data(cfg, 0)
    assert ("trajectory 3 has 9 samples (0.267 s), fewer than the Savitzky–Golay window data.savgol_window = 11 samples "
            "(0.333 s at 30 Hz) that estimates q̇ and q̈") in str(info.value)
    assert load_data(DataConfig(file=str(path), savgol_window=9, savgol_order=3), 0).train.q.shape[1] == 1


def test_too_few_trajectories_for_the_split(pendulum, tmp_path):
    _, t, q, v, a = pendulum
    path = df.write_trajectory_file(tmp_path / "three.npz", t[:3], q[:3], v[:3], a[:3])
    with pytest.raises(df.DataFileError, match=r"has 3 trajectories, too few for data.file_split = \[0.6, 0.2, 0.1, 0.1\] "
                                               r"\(each of its 4 splits needs at least one trajectory: 4 or more\)"):
        load_data(DataConfig(file=str(path)), 0)
    assert load_data(DataConfig(file=str(path), file_split=(0.4, 0.3, 0.3, 0.0)), 0).ood is None


def test_a_pinned_file_that_changed_is_refused(pendulum_file, pendulum):
    sha = df.file_sha256(pendulum_file)
    cfg = DataConfig(file=str(pendulum_file), file_sha256=sha)
    assert load_data(cfg, 0).train.q.shape[0] > 0
    _, t, q, v, a = pendulum
    df.write_trajectory_file(pendulum_file, t, [x + 1e-3 for x in q], v, a)
    with pytest.raises(ConfigError) as info:
        load_data(cfg, 0)
    assert info.value.field == "data.file_sha256" and f"the config pins data.file_sha256 = {sha}" in str(info.value)


# ----------------------------------------------------------------------------- DataConfig


def test_a_file_replaces_the_system_and_its_generator_settings(pendulum_file):
    cfg = DataConfig(file=str(pendulum_file))
    assert cfg.system == "" and cfg.kind == "trajectories"
    assert TrainConfig.from_flat(TrainConfig(data=cfg).to_flat()).data == cfg  # round trip through a trial's params
    bad = {"system": ("damped_oscillator", "to be left out when data.file is set"),
           "noise": (0.01, "its default 0.0 when data.file is set"),
           "n_train": (10, "its default 2048 when data.file is set"),
           "params": ({"rho": 0.1}, "its default {} when data.file is set"),
           "kind": ("bogus", "'trajectories' (or left out)")}
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError) as info:
            DataConfig(file=str(pendulum_file), **{key: value})
        assert info.value.field == f"data.{key}" and message in str(info.value)
    with pytest.raises(ConfigError, match="data.file: 'x.txt'"):
        DataConfig(file="x.txt")
    with pytest.raises(ConfigError, match="'' unless data.file is set"):
        DataConfig(file_sha256="0" * 64)
    with pytest.raises(ConfigError, match="data.file_split"):
        DataConfig(file=str(pendulum_file), file_split=(0.5, 0.5, 0.0, 0.0))
    with pytest.raises(ConfigError, match="rollout_horizon"):
        TrainConfig(data=cfg, rollout_horizon=2)


# ----------------------------------------------------------------------------- targets, splits, ood


def test_given_targets_are_used_as_they_are_and_missing_ones_estimated(pendulum, tmp_path):
    _, t, q, v, a = pendulum
    cfg = DataConfig(file=str(df.write_trajectory_file(tmp_path / "g.npz", t, q, v, a)))
    given = load_data(cfg, 0)
    ids = file_dataset.split_indices(df.read_trajectory_file(cfg.file), cfg, 0)
    for name in ("train", "val", "test", "ood"):
        np.testing.assert_array_equal(getattr(given, name).qddot, np.concatenate([a[i] for i in ids[name]]))
        np.testing.assert_array_equal(getattr(given, name).qdot, np.concatenate([v[i] for i in ids[name]]))
    # Savitzky–Golay from q alone on smooth 30 Hz data: close to the exact q̈, not equal.
    estimated = load_data(DataConfig(file=str(df.write_trajectory_file(tmp_path / "e.npz", t, q))), 0)
    rel = np.sqrt(np.mean((estimated.train.qddot - given.train.qddot) ** 2) / np.mean(given.train.qddot ** 2))
    assert 0 < rel < 0.05, rel
    np.testing.assert_array_equal(estimated.train.q, given.train.q)  # q itself is kept
    # derivatives = "savgol" estimates (and smooths) even what the file gives.
    smoothed = load_data(DataConfig(file=cfg.file, derivatives="savgol"), 0)
    assert not np.array_equal(smoothed.train.qdot, given.train.qdot)
    np.testing.assert_allclose(smoothed.train.qddot, estimated.train.qddot, atol=1e-9)


def test_splits_by_trajectory_from_the_seed_with_the_extremes_held_out(pendulum_file):
    cfg = DataConfig(file=str(pendulum_file))
    tf = df.read_trajectory_file(pendulum_file)
    a, b, c = (file_dataset.split_indices(tf, cfg, seed) for seed in (0, 0, 1))
    assert a == b and a != c
    for split in (a, c):
        assert sorted(sum(split.values(), [])) == list(range(8))  # every trajectory in exactly one split
        assert {k: len(v) for k, v in split.items()} == {"train": 4, "val": 2, "test": 1, "ood": 1}
        assert split["ood"] == [7]  # the widest swing, whatever the seed
    splits = load_data(cfg, 0)
    assert splits.data_metrics["ood_rule"] == "extreme" and splits.data_metrics["ood_trajectories"] == 1.0
    assert splits.data_metrics["ood_range_excess"] > 0  # it does leave the training states' range
    assert splits.train.q.shape[0] == sum(LENGTHS[i] for i in a["train"])
    ood = splits.rollouts["ood"]
    assert ood.lengths.tolist() == [LENGTHS[7]] and ood.t[1] == pytest.approx(1 / RATE)
    assert splits.system.n == 1 and splits.system.angles == (True,) and splits.system.energy is None


def test_rollout_metrics_stop_at_each_trajectorys_end(pendulum_file):
    """The true equations of motion, rolled out on the ragged held-out trajectories, score about 0
    error and are valid for every sample each trajectory has (padding neither counts nor breaks)."""
    splits = load_data(DataConfig(file=str(pendulum_file), file_split=(0.5, 0.125, 0.375, 0.0)), 0)
    system = get_system("damped_pendulum")

    class Truth(torch.nn.Module):
        def forward(self, q, v):
            return system.eom(q, v)

    metrics = rollout_metrics(Truth(), splits, ("test",), torch.float64, "cpu")
    assert metrics["test_rollout_error"] < 1e-5
    assert metrics["test_valid_steps"] == pytest.approx(np.mean(splits.rollouts["test"].lengths))
    assert "test_energy_error" not in metrics and "test_rollout_error_100" not in metrics


# ----------------------------------------------------------------------------- end to end


def test_training_on_a_file_end_to_end(pendulum_file, tmp_path):
    config = TrainConfig.from_dict({"data": {"file": str(pendulum_file)}, "epochs": 2, "batch_size": 64,
                                    "model": {"form": "structured", "hidden": 16}})
    result = fit(config, out_dir=tmp_path / "run")
    assert result.ok and result.epochs_run == 2
    m = result.metrics
    assert m["ood_rule"] == "extreme" and m["ood_trajectories"] == 1.0
    for key in ("val_rel_mse", "test_rel_mse", "ood_rel_mse", "test_rollout_error", "ood_rollout_error", "test_valid_steps",
                "dissipation_share", "rollout_error"):
        assert np.isfinite(m[key]), key
    for absent in ("dissipation_rel_error", "true_dissipation_share", "energy_error", "test_energy_error", "ood_energy_error"):
        assert absent not in m
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["metrics"]["ood_rule"] == "extreme" and saved["config"]["data"]["file"] == str(pendulum_file)
    again = evaluate_checkpoint(result.checkpoint)  # the checkpoint rebuilds its model from the file
    assert again["test_rel_mse"] == pytest.approx(m["test_rel_mse"], rel=1e-5)
    with pytest.raises(ConfigError, match=r"batch_size: 4096 is not allowed; expected at most the \d+ training samples"):
        fit(config.with_flat({"batch_size": 4096}))


def test_without_an_ood_split_the_metrics_say_none(pendulum_file):
    config = TrainConfig.from_dict({"data": {"file": str(pendulum_file), "file_split": [0.5, 0.25, 0.25, 0.0]}, "epochs": 1,
                                    "batch_size": 64, "model": {"kind": "mlp", "hidden": 8}})
    m = fit(config).metrics
    assert m["ood_rule"] == "none" and m["ood_trajectories"] == 0.0
    assert not [k for k in m if k.startswith("ood_") and k not in ("ood_rule", "ood_trajectories")]


# ----------------------------------------------------------------------------- specs


FILE_SPEC = """
[study]
name = "measured"
[budget]
trials = 2
[objective]
metric = "{metric}"
[base]
epochs = 1
batch_size = 32
[base.data]
file = "{file}"
[base.model]
form = "structured"
hidden = 8
[space.optimizer.lr]
low = 1e-4
high = 1e-2
log = true
"""


def test_a_spec_naming_a_bad_file_creates_no_study(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _npz(tmp_path, q=_nan_at((3, 20, 2), (2, 5, 1)))
    path = write_spec(tmp_path, FILE_SPEC.format(metric="val_rel_mse", file="bad.npz"))
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    assert cli.main(["launch", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dlnn launch: error: ") and "Traceback" not in err
    assert "base.data.file: bad.npz: trajectory 2, sample 5, column 'q_q2': value is nan" in err
    assert not (tmp_path / "dlnn.db").exists()


def test_a_spec_on_a_file_refuses_metrics_and_batches_it_cannot_give(pendulum_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path, FILE_SPEC.format(metric="val_rel_mse", file=pendulum_file.name)))
    assert spec.raw["base"]["data"]["file"] == pendulum_file.name  # the name as written (launch pins its hash)
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, FILE_SPEC.format(metric="dissipation_rel_error", file=pendulum_file.name)))
    assert "objective: dissipation_rel_error needs the true system's equations" in str(info.value)
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, FILE_SPEC.format(metric="val_rel_mse", file=pendulum_file.name).replace("batch_size = 32", "batch_size = 5000")))
    assert "base.batch_size: 5000 is not allowed; expected at most the" in str(info.value)


def test_a_study_on_a_file_runs_and_is_read_back_without_it(pendulum, tmp_path, capsys, monkeypatch):
    """launch (publishes the file by hash) → a worker with the real fit on the fetched bytes (rollout
    plot included) → report; then, with the file gone, status and export still read the study (its
    stored spec is not re-checked against the file)."""
    from dlnn_studies.study.report import report
    from dlnn_studies.study.launch import launch
    from dlnn_studies.study.service import stored_spec
    from dlnn_studies.store.storage import close_storage, open_storage
    from dlnn_studies.study.worker import run_worker

    _, t, q, v, a = pendulum
    data = df.write_trajectory_file(tmp_path / "data" / "runs.csv", t, q, v, a, names=["theta"], angles=[True])
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLNN_CACHE_DIR", str(tmp_path / "cache"))  # the worker's verified copy of the published file
    text = FILE_SPEC.format(metric="test_rollout_error", file="data/runs.csv") + '[[baseline]]\nname = "adam"\nparams = {"optimizer.lr" = 1e-3}\n'
    spec = load_spec(write_spec(tmp_path, text))
    launch(spec, url, log=lambda m: None, artifacts=str(tmp_path / "artifacts"))  # publishes the file by its hash
    logs: list[str] = []
    assert run_worker(url, "measured", fit_fn=None, install_signals=False, artifacts=tmp_path / "artifacts", log=logs.append, timeout=180) == 0
    study = optuna.load_study(study_name="measured", storage=url)
    done = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2, logs
    assert {tr.user_attrs["ood_rule"] for tr in done} == {"extreme"}
    assert all("energy_error" not in tr.user_attrs and "dissipation_rel_error" not in tr.user_attrs for tr in done)
    written = report(url, "measured", tmp_path / "reports", artifacts=tmp_path / "artifacts", save_to_study=False)
    text = written.markdown.read_text()
    assert "Held-out test rollouts" in text and "No rollout figure" not in text, text[:3000]  # from the ragged file trajectories
    assert "ood split: rule `extreme`; ood trajectories: 1;" in text

    pinned = df.file_sha256(data)
    data.unlink()
    storage = open_storage(url)
    try:
        assert stored_spec(storage, "measured").base.data.file_sha256 == pinned
    finally:
        close_storage(storage)
    assert cli.main(["status", "measured", "--storage", url]) == 0
    assert cli.main(["export", "measured", "--storage", url, "--out", str(tmp_path / "exports"), "--artifacts", str(tmp_path / "artifacts")]) == 0
    assert "no such file" not in capsys.readouterr().err
