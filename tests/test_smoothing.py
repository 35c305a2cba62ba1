"""The target estimators (dlnn_core/smoothing.py) against a signal whose derivatives are known in closed form."""

import numpy as np
import pytest
import torch

from dlnn_core.config import ConfigError
from dlnn_core.data import DataConfig, generate
from dlnn_core.smoothing import ESTIMATORS, savgol, spline

RATE = 50.0


def signal(noise: float, seed: int = 0):
    """Two coordinates of damped oscillations at 50 Hz for 8 s, with noise on q: (q noisy, q, q̇, q̈)."""
    t = np.arange(0, 8.0, 1 / RATE)
    e = np.exp(-0.2 * t)
    q = np.stack([e * np.sin(3 * t), 0.5 * np.cos(5 * t)], axis=-1)
    v = np.stack([e * (3 * np.cos(3 * t) - 0.2 * np.sin(3 * t)), -2.5 * np.sin(5 * t)], axis=-1)
    a = np.stack([e * (-9 * np.sin(3 * t) - 1.2 * np.cos(3 * t) + 0.04 * np.sin(3 * t)), -12.5 * np.cos(5 * t)], axis=-1)
    return q + noise * np.random.default_rng(seed).standard_normal(q.shape), q, v, a


def rel(estimate, truth):
    inner = slice(10, -10)  # both estimators are worst at the ends; compare the interior
    return float(np.sqrt(np.mean((estimate[inner] - truth[inner]) ** 2) / np.mean(truth[inner] ** 2)))


class Cfg:
    savgol_window, savgol_order = 11, 3


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_each_estimator_recovers_exact_derivatives(name):
    noisy, q, v, a = signal(0.0)
    qe, ve, ae = ESTIMATORS[name](noisy, 1 / RATE, Cfg(), 0.0)
    assert rel(qe, q) < 1e-3 and rel(ve, v) < 1e-3 and rel(ae, a) < 3e-2


def test_spline_beats_savgol_on_noisy_accelerations():
    """At 1 % noise the Savitzky–Golay window of 11 amplifies noise into q̈; the spline, told the noise level, smooths it."""
    errors = {"savgol": [], "spline": []}
    for seed in range(3):
        noisy, q, v, a = signal(0.01, seed)
        errors["savgol"].append(rel(savgol(noisy, 1 / RATE, Cfg(), 0.01)[2], a))
        errors["spline"].append(rel(spline(noisy, 1 / RATE, Cfg(), 0.01)[2], a))
    assert max(errors["spline"]) < 0.5 * min(errors["savgol"]), errors


def test_spline_on_a_file_chooses_its_smoothing_by_cross_validation():
    """A trajectory file states no noise level: generalized cross-validation picks the smoothing."""
    noisy, q, v, a = signal(0.01)
    gcv = rel(spline(noisy, 1 / RATE, Cfg(), None)[2], a)
    raw = rel(spline(noisy, 1 / RATE, Cfg(), 1e-6)[2], a)  # an almost interpolating spline: the noise, differentiated twice
    assert gcv < 0.2 * raw


def test_batched_trajectories_match_one_at_a_time():
    batch = np.stack([signal(0.01, s)[0] for s in range(2)])  # [N, T, n]
    together = spline(batch, 1 / RATE, Cfg(), 0.01)
    for i in range(2):
        alone = spline(batch[i], 1 / RATE, Cfg(), 0.01)
        assert all(np.allclose(x[i], y) for x, y in zip(together, alone))


def test_the_spline_is_a_data_setting():
    cfg = DataConfig(system="damped_pendulum", kind="trajectories", derivatives="spline", noise=0.01, rate_hz=RATE,
                     n_train=2, n_val=1, n_test=1, n_rollout=1, duration=2.0)
    splits = generate(cfg, 0)
    assert splits.train.q.shape == (2 * 101, 1) and np.isfinite(splits.train.qddot).all()
    truth = splits.system.eom(torch.from_numpy(splits.val.q), torch.from_numpy(splits.val.qdot)).numpy()
    assert rel(splits.val.qddot, truth) < 1e-2  # the noise-free splits are interpolated, not smoothed as if noisy
    with pytest.raises(ConfigError, match=r"data\.derivatives.*'spline'"):
        DataConfig(kind="trajectories", derivatives="kalman")
