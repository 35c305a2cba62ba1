"""The dataset cache heals: a truncated, empty, garbled, incomplete or altered cache file is
found out before use and regenerated atomically with a warning naming the file; processes
regenerating the same file at once do not corrupt each other (issue 14, item 1)."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from service_support import REPO, env

from dlnn_core.data import HASH_KEY, DataConfig, _read_cache, _expected_shapes, cache_path, generate, load_data

CFG = DataConfig(system="damped_oscillator", n_train=32, n_val=16, n_test=16, n_rollout=2, rollout_steps=10)
TRAJ = DataConfig(system="damped_pendulum", kind="trajectories", n_train=2, n_val=2, n_test=2, n_rollout=2,
                  rollout_steps=10, duration=1.0)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(path):
    path.write_bytes(b"")


def _garbage(path):
    path.write_bytes(b"\x00not a zip file at all\xff" * 64)


def _missing_array(path):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "train.q"}
    np.savez(path, **arrays)


def _wrong_shape(path):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["val.qdot"] = arrays["val.qdot"][:-1]
    np.savez(path, **arrays)


def _altered_values(path):
    """Every array present with the right shape and the old hash, but a value changed."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["train.qddot"] = arrays["train.qddot"] + 1.0
    np.savez(path, **arrays)


def _no_hash(path):
    """A file written before caches carried a hash."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != HASH_KEY}
    np.savez(path, **arrays)


def _flipped_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("cfg", [CFG, TRAJ], ids=["states", "trajectories"])
def test_a_fresh_cache_file_verifies(cfg, tmp_path):
    first = load_data(cfg, 3, tmp_path)
    path = cache_path(cfg, 3, tmp_path)
    arrays, problem = _read_cache(path, _expected_shapes(cfg))
    assert problem is None and set(arrays) >= set(_expected_shapes(cfg)) | {HASH_KEY}
    assert np.array_equal(load_data(cfg, 3, tmp_path).train.q, first.train.q)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("damage", [_truncate, _empty, _garbage, _missing_array, _wrong_shape, _altered_values, _no_hash,
                                    _flipped_byte])
def test_a_bad_cache_file_is_regenerated_with_a_warning(damage, tmp_path):
    truth = generate(CFG, 5)
    load_data(CFG, 5, tmp_path)
    path = cache_path(CFG, 5, tmp_path)
    damage(path)
    with pytest.warns(RuntimeWarning, match=rf"dataset cache file .*{path.name} is unusable"):
        splits = load_data(CFG, 5, tmp_path)
    for name in ("train", "val", "test", "ood"):
        for key in ("q", "qdot", "qddot"):
            assert np.array_equal(getattr(getattr(splits, name), key), getattr(getattr(truth, name), key))
    assert np.array_equal(splits.rollouts["ood"].q, truth.rollouts["ood"].q)
    _, problem = _read_cache(path, _expected_shapes(CFG))
    assert problem is None  # healed on disk: the next reader uses it silently
    assert zipfile.is_zipfile(path) and [p.name for p in tmp_path.iterdir()] == [path.name]


RACE = """
import sys, time, warnings
import numpy as np
from dlnn_core.data import DataConfig, load_data
cfg = DataConfig(system="damped_pendulum", kind="trajectories", n_train=6, n_val=3, n_test=3, n_rollout=3, rollout_steps=60, duration=3.0)
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    splits = load_data(cfg, 11, sys.argv[1])
print(float(np.abs(splits.train.q).sum()))
"""


@pytest.mark.parametrize("start", ["missing", "corrupt"])
def test_processes_regenerating_one_file_at_once_both_succeed(start, tmp_path):
    cfg = DataConfig(system="damped_pendulum", kind="trajectories", n_train=6, n_val=3, n_test=3, n_rollout=3, rollout_steps=60,
                     duration=3.0)
    path = cache_path(cfg, 11, tmp_path)
    if start == "corrupt":
        path.write_bytes(b"PK\x03\x04 half a zip")
    go = time.time() + 3.0  # both start generating at the same moment, after the interpreters are up
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(tmp_path), str(go)], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [proc.communicate(timeout=240) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    sums = {out.strip() for out, _ in results}
    assert len(sums) == 1, sums
    _, problem = _read_cache(path, _expected_shapes(cfg))
    assert problem is None
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.warns(RuntimeWarning, match=r"cannot write the dataset cache file .*No space left on device"):
        splits = load_data(CFG, 5, tmp_path)
    assert np.array_equal(splits.train.q, generate(CFG, 5).train.q)
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too
