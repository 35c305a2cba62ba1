"""The shipped example of a mechanism known only from recordings (examples/coulomb_pendulum):
its data files are what make_data.py writes, and a study on the file runs end to end as a user
would run it on several hosts: launch publishes the file to the artifact store, two workers
train from the store, report and export, then `dlnn train` of the exported config in a working
directory that holds only the artifact store reproduces the trial's metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from service_support import REPO, dlnn, spawn

from dlnn_core.datafiles import file_sha256, read_trajectory_file
from dlnn_studies.study import records

EXAMPLE = REPO / "examples" / "coulomb_pendulum"


@pytest.mark.slow
def test_the_example_files_are_what_make_data_writes(tmp_path):
    """Both formats hold the same 20 irregular noisy trajectories; regenerating them with the
    script gives the committed data (so the files and the declaration cannot drift apart)."""
    npz, csv = (read_trajectory_file(EXAMPLE / "data" / f"runs.{s}") for s in ("npz", "csv"))
    assert len(npz.t) == len(csv.t) == 20 and npz.names == csv.names == ("theta",) and npz.angles == (True,)
    lengths = [len(t) for t in npz.t]
    assert len(set(lengths)) > 10 and min(lengths) >= 120  # irregular, each at least 4 s at 30 Hz
    for a, b in zip(npz.q, csv.q):
        np.testing.assert_array_equal(a, b)
    copy = tmp_path / "examples" / "coulomb_pendulum"
    copy.mkdir(parents=True)
    for name in ("make_data.py", "study.toml"):
        shutil.copy(EXAMPLE / name, copy / name)
    subprocess.run([sys.executable, str(copy / "make_data.py")], check=True, capture_output=True, cwd=tmp_path,
                   env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    # The same trajectories to far below the data's noise (0.01 rad): the ODE solve's last digits differ
    # between CPUs, and with them the CSV's bytes and the npz's (which also carries its write time).
    for suffix, committed in (("csv", csv), ("npz", npz)):
        again = read_trajectory_file(copy / "data" / f"runs.{suffix}")
        assert [len(t) for t in again.t] == lengths, suffix
        for a, b in zip(again.q + again.t, committed.q + committed.t):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_study_on_the_recorded_file_runs_on_two_workers_and_retrains_elsewhere(tmp_path):
    launch_host, worker_host, train_host = (tmp_path / h for h in ("launch-host", "worker-host", "train-host"))
    (launch_host / "examples" / "coulomb_pendulum" / "data").mkdir(parents=True)
    shutil.copy(EXAMPLE / "data" / "runs.csv", launch_host / "examples" / "coulomb_pendulum" / "data" / "runs.csv")
    spec = (EXAMPLE / "measured.toml").read_text().replace("trials = 16", "trials = 4").replace("epochs = 8", "epochs = 3")
    (launch_host / "measured.toml").write_text(spec)
    worker_host.mkdir()
    train_host.mkdir()
    url, store = f"sqlite:///{tmp_path / 'dlnn.db'}", str(tmp_path / "store")
    common = ("--storage", url, "--artifacts", store)

    out = dlnn("launch", "measured.toml", *common, cwd=launch_host).stdout
    assert "coulomb_measured" in out
    # Workers on another host: no data file there, only the store (and their own cache).
    procs = [spawn("work", "coulomb_measured", *common, "--threads", "1", cwd=worker_host, log=tmp_path / f"w{i}.log",
                   DLNN_CACHE_DIR=str(tmp_path / f"cache{i}")) for i in range(2)]
    codes = [p.wait(600) for p in procs]
    logs = "\n".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs
    study = optuna.load_study(study_name="coulomb_measured", storage=url)
    trials = study.get_trials()
    assert len(trials) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}, logs
    assert len({records.trial_worker(t)["id"] for t in trials}) == 2  # both workers trained
    best = study.best_trial
    assert records.trial_config(best)["data"]["file_sha256"] == file_sha256(EXAMPLE / "data" / "runs.csv")

    report = dlnn("report", "coulomb_measured", "--out", "reports", *common, cwd=launch_host).stdout
    text = (launch_host / "reports" / "coulomb_measured" / "report.md").read_text()
    assert "report.md" in report and "measured trajectories, no true system" in text and "Held-out test rollouts" in text and "No rollout figure" not in text

    dlnn("export", "coulomb_measured", "--top", "1", "--out", "exports", *common, cwd=launch_host)
    exported = next(p for p in (launch_host / "exports" / "coulomb_measured").glob("rank01-*.yaml") if not p.name.endswith(".meta.yaml"))
    shutil.copy(exported, train_host / exported.name)
    dlnn("train", exported.name, "--artifacts", store, "--out", "run", "--no-progress", cwd=train_host,
         DLNN_CACHE_DIR=str(tmp_path / "train-cache"))
    assert not (train_host / "examples").exists()  # the bytes came from the store, into the cache
    retrained = json.loads((train_host / "run" / "metrics.json").read_text())["metrics"]
    stored = records.trial_metrics(best)
    for key in ("val_rel_mse", "test_rel_mse", "test_rollout_error", "ood_rel_mse"):
        assert retrained[key] == pytest.approx(stored[key], rel=1e-6), key
    assert retrained["ood_rule"] == stored["ood_rule"] == "extreme"
