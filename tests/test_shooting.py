"""Multiple shooting after the epochs (`shooting_iters`): it recovers a damped oscillator's constants
from its trajectories alone, leaves a model whose fit breaks as it was, is refused where there are no
trajectories, runs inside `fit` reproducibly, its record in the run's history, and with `shooting_check`
keeps the weights that score best on a held-out score."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dlnn_core.config import ConfigError, TrainConfig
from dlnn_core.pack import pack_key
from dlnn_core.shooting import polish, segments
from dlnn_core.systems import damped_oscillator


class Oscillator(nn.Module):
    """q̈ = −k q − ρ q̇ with log k and log ρ as its parameters."""

    def __init__(self, k: float, rho: float):
        super().__init__()
        self.log_k = nn.Parameter(torch.tensor(math.log(k), dtype=torch.float64))
        self.log_rho = nn.Parameter(torch.tensor(math.log(rho), dtype=torch.float64))

    def forward(self, q, v):
        return -self.log_k.exp() * q - self.log_rho.exp() * v


def oscillator_trajectories(count=3, steps=60, dt=0.1):
    """Exact trajectories of q̈ = −q − 0.1 q̇ from random states: q, q̇ [count, steps, 1]."""
    rng = np.random.default_rng(0)
    q0, v0 = rng.uniform(-1, 1, count), rng.uniform(-1, 1, count)
    q, v = damped_oscillator(k=1.0, rho=0.1).solution(q0, v0, np.arange(steps) * dt)
    return torch.from_numpy(q)[..., None], torch.from_numpy(v)[..., None]


def test_segments_are_consecutive_and_share_their_end_samples():
    q = torch.arange(10, dtype=torch.float64).reshape(1, 10, 1)
    q0, v0, observed = segments(q, q, 3)
    assert observed[..., 0].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert q0[:, 0].tolist() == [0, 3, 6] and v0.shape == (3, 1)


def test_shooting_recovers_the_constants_from_trajectories_alone():
    """Started at half the stiffness and three times the damping, and from initial states 0.05 off,
    the fit finds k = 1 and ρ = 0.1: the positions decide both, no q̈ or q̇ target is used."""
    q, v = oscillator_trajectories()
    model = Oscillator(k=0.5, rho=0.3)
    record = polish(model, q, v + 0.05, 0.1, 10, 200, (False,))
    assert model.log_k.exp().item() == pytest.approx(1.0, rel=1e-5)
    assert model.log_rho.exp().item() == pytest.approx(0.1, rel=1e-4)
    assert record["kept"] and record["segments"] == 3 * 5 and record["loss_after"] < 1e-12 < record["loss_before"]


def test_a_fit_that_breaks_leaves_the_model_as_it_was():
    class Breaks(Oscillator):
        calls = 0

        def forward(self, q, v):
            Breaks.calls += 1
            return super().forward(q, v) * (math.nan if Breaks.calls > 400 else 1.0)

    q, v = oscillator_trajectories()
    model = Breaks(k=0.5, rho=0.3)
    record = polish(model, q, v, 0.1, 10, 20, (False,))
    assert not record["kept"] and record["loss_after"] is None
    assert model.log_k.exp().item() == pytest.approx(0.5) and model.log_rho.exp().item() == pytest.approx(0.3)


def test_a_checked_fit_keeps_the_best_scoring_weights_it_passed_through():
    """The fit takes k from 0.5 to 1; a score that peaks at k = 0.75 must leave the model at the checked
    k nearest 0.75, neither the start nor the fit's end."""
    q, v = oscillator_trajectories()
    model = Oscillator(k=0.5, rho=0.3)
    seen = []

    def score():
        seen.append(model.log_k.exp().item())
        return -abs(seen[-1] - 0.75)

    record = polish(model, q, v + 0.05, 0.1, 10, 200, (False,), score=score, check_every=1)
    assert seen[0] == pytest.approx(0.5) and seen[-1] == pytest.approx(1.0, rel=1e-5)  # before the fit and at its end
    best = min(seen, key=lambda k: abs(k - 0.75))
    assert model.log_k.exp().item() == best and 0.5 < best < 0.99
    assert record["selected_evaluation"] == record["scores"][seen.index(best)][0] > 0
    checked = [e for e, _ in record["scores"]]
    assert checked[:-1] == list(range(record["evaluations"] + 1)) and checked[-1] == record["evaluations"]  # each, and the end
    assert model.log_k.requires_grad and model.training  # scoring left the model as the fit needs it


def test_a_checked_fit_that_never_beats_its_start_leaves_the_model_as_it_was():
    q, v = oscillator_trajectories()
    model = Oscillator(k=0.5, rho=0.3)
    record = polish(model, q, v, 0.1, 10, 50, (False,), score=lambda: -model.log_k.exp().item(), check_every=10)
    assert record["selected_evaluation"] == 0 and record["kept"]
    assert model.log_k.exp().item() == pytest.approx(0.5) and model.log_rho.exp().item() == pytest.approx(0.3)


TINY = {"data.system": "damped_pendulum", "data.kind": "trajectories", "data.n_train": 4, "data.n_val": 2, "data.n_test": 2,
        "data.n_rollout": 2, "data.rollout_steps": 50, "data.duration": 2.0, "data.noise": 0.01, "data.derivatives": "spline",
        "model.hidden": 16, "model.form": "structured", "epochs": 3, "batch_size": 64, "device": "cpu"}


def test_shooting_needs_trajectories_and_a_segment_that_fits_them():
    with pytest.raises(ConfigError, match="shooting_iters.*data.kind = 'trajectories'"):
        TrainConfig().with_flat({"data.kind": "states", "shooting_iters": 10})
    with pytest.raises(ConfigError, match=r"shooting_segment.*\[1, 60\]"):
        TrainConfig().with_flat({**TINY, "shooting_iters": 10, "shooting_segment": 100})
    with pytest.raises(ConfigError, match="shooting_iters.*an integer >= 0"):
        TrainConfig().with_flat({**TINY, "shooting_iters": -1})
    with pytest.raises(ConfigError, match="shooting_check.*an integer >= 0"):
        TrainConfig().with_flat({**TINY, "shooting_iters": 10, "shooting_check": -1})
    assert TrainConfig().with_flat({**TINY, "shooting_segment": 100}).shooting_segment == 100  # unused while shooting is off


def test_fit_shoots_after_the_epochs_reproducibly(tmp_path):
    from dlnn_core.train import evaluate_checkpoint, fit

    cfg = TrainConfig().with_flat({**TINY, "shooting_iters": 15, "shooting_segment": 8})
    assert pack_key(cfg) is None  # a full-batch fit of its own: the trial trains alone
    seen = []
    first = fit(cfg, out_dir=tmp_path / "a", cache_dir=tmp_path, progress=seen.append)
    record = first.history[-1]
    assert first.status == "ok" and record["phase"] == "shooting" and record["kept"]
    assert record["loss_after"] < record["loss_before"] and record["segments"] == 4 * 7
    assert [r["done"] for r in seen if r.get("phase") == "shooting"][-1] == 15
    again = fit(cfg, out_dir=tmp_path / "b", cache_dir=tmp_path)
    assert again.metrics["test_valid_steps"] == first.metrics["test_valid_steps"]
    assert again.metrics["val_rel_mse"] == first.metrics["val_rel_mse"]
    plain = fit(TrainConfig().with_flat(TINY), cache_dir=tmp_path)
    assert plain.metrics["val_rel_mse"] != first.metrics["val_rel_mse"]  # the shooting fit changed the weights
    reloaded = evaluate_checkpoint(first.checkpoint, cache_dir=tmp_path)
    assert reloaded["test_valid_steps"] == first.metrics["test_valid_steps"]  # the checkpoint holds the shot weights


def test_fit_with_shooting_check_selects_on_the_validation_rollouts(tmp_path):
    from dlnn_core.train import fit

    cfg = TrainConfig().with_flat({**TINY, "shooting_iters": 15, "shooting_segment": 8, "shooting_check": 4})
    result = fit(cfg, cache_dir=tmp_path)
    record = result.history[-1]
    checked = [e for e, _ in record["scores"]]
    assert checked[:5] == [0, 4, 8, 12, 16] and checked[-1] == record["evaluations"]  # before, every 4, and the end
    best = max(s for _, s in record["scores"])
    assert record["selected_evaluation"] == checked[[s for _, s in record["scores"]].index(best)]
    assert result.metrics["val_valid_steps"] == pytest.approx(best, abs=0.5)  # the kept weights (one batch with test here)
    unchecked = fit(TrainConfig().with_flat({**TINY, "shooting_iters": 15, "shooting_segment": 8}), cache_dir=tmp_path).history[-1]
    assert unchecked["selected_evaluation"] is None and unchecked["scores"] == []


def test_noisy_trajectories_keep_their_measured_angles_through_the_cache(tmp_path):
    """What shooting fits: the training split's angles as measured (noise of the stated size about the
    truth), beside the smoothed q the epochs train on, read back from the cache as written."""
    from dlnn_core.data import generate, load_data

    cfg = TrainConfig().with_flat(TINY).data
    fresh, cached = load_data(cfg, 0, tmp_path), load_data(cfg, 0, tmp_path)
    assert np.array_equal(fresh.train.observed, cached.train.observed) and fresh.val.observed is None
    truth = generate(TrainConfig().with_flat({**TINY, "data.noise": 0.0}).data, 0).train.q
    measured_error = np.angle(np.exp(1j * (fresh.train.observed - truth)))
    assert np.std(measured_error) == pytest.approx(0.01, rel=0.1)  # data.noise, drawn once
    assert np.std(np.angle(np.exp(1j * (fresh.train.q - truth)))) < 0.7 * np.std(measured_error)  # the spline smooths
    exact = TrainConfig().with_flat({**TINY, "data.derivatives": "exact"}).data
    assert load_data(exact, 0, tmp_path).train.observed is None  # q is itself the measurement
