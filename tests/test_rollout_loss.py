"""The rollout loss's integrators and its window batch: each integrator converges at its order on
a system with a known solution, and a cheaper rollout loss still trains."""

import math

import pytest
import torch

from dlnn_core.config import INTEGRATORS, ConfigError, TrainConfig
from dlnn_core.rollout import STEPS, rollout, rollout_loss, trapezoid_loss


def oscillator_error(name: str, dt: float) -> float:
    """|q(T) − cos T| of q̈ = −q from q = 1, q̇ = 0, integrated to T = 2."""
    steps = round(2.0 / dt)
    q, _ = rollout(lambda q, v: -q, torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), dt, steps,
                   step=STEPS[name])
    return abs(q[0, -1, 0].item() - math.cos(2.0))


@pytest.mark.parametrize("name, order", [("rk4", 4), ("midpoint", 2), ("euler", 1)])
def test_each_integrator_converges_at_its_order(name, order):
    coarse, fine = oscillator_error(name, 0.02), oscillator_error(name, 0.01)
    assert math.log2(coarse / fine) == pytest.approx(order, abs=0.3)


def test_every_configured_integrator_is_implemented():
    assert set(INTEGRATORS) == set(STEPS) | {"trapezoid"}
    with pytest.raises(ConfigError, match="rollout_integrator.*'midpoint'"):
        TrainConfig(rollout_integrator="leapfrog")


def test_the_rollout_loss_is_zero_on_the_true_solution_and_not_elsewhere():
    dt, k = 0.01, 5
    t = torch.arange(1, k + 1, dtype=torch.float64) * dt
    future_q, future_v = torch.cos(t)[None, :, None], -torch.sin(t)[None, :, None]
    q0, v0 = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    exact = rollout_loss(lambda q, v: -q, q0, v0, future_q, future_v, dt, (False,), "rk4")
    wrong = rollout_loss(lambda q, v: -1.2 * q, q0, v0, future_q, future_v, dt, (False,), "rk4")
    assert exact.item() < 1e-18 and wrong.item() > 1e-8


def test_a_cheap_rollout_loss_trains(tmp_path):
    """16 windows of semi-implicit Euler instead of one RK4 window per sample: still a finished run."""
    from dlnn_core.train import fit

    cfg = TrainConfig().with_flat({"data.system": "damped_pendulum", "data.kind": "trajectories", "data.n_train": 4, "data.n_val": 2,
                                   "data.n_test": 2, "data.n_rollout": 2, "data.rollout_steps": 20, "data.duration": 2.0,
                                   "data.noise": 0.01, "data.derivatives": "spline", "model.hidden": 16, "model.form": "structured",
                                   "epochs": 3, "batch_size": 64, "rollout_horizon": 3, "rollout_batch": 16, "rollout_integrator": "euler",
                                   "device": "cpu"})
    result = fit(cfg, cache_dir=tmp_path)
    assert result.status == "ok" and math.isfinite(result.metrics["val_rel_mse"])


def test_the_trapezoid_loss_is_second_order_on_the_true_dynamics_and_sees_a_wrong_one():
    """q̈ = −q observed exactly: over k = 4 steps the trapezoid rule errs by O(dt³), so the squared error
    falls 2⁶× when dt halves; a model 20 % off is seen."""
    def loss(dt, stiffness=1.0):
        k = 4
        t = torch.arange(0, k + 1, dtype=torch.float64) * dt + 0.3
        q, v = torch.cos(t)[None, :, None], -torch.sin(t)[None, :, None]
        return trapezoid_loss(lambda q, v: -stiffness * q, q[:, 0], v[:, 0], q[:, 1:], v[:, 1:], dt).item()

    assert math.log2(loss(0.02) / loss(0.01)) == pytest.approx(6, abs=0.3)
    assert loss(0.02, stiffness=1.2) > 1e3 * loss(0.02)


def test_the_trapezoid_loss_evaluates_the_model_once():
    calls = []

    def accel(q, v):
        calls.append(q.shape)
        return -q

    q0, v0 = torch.zeros(16, 2), torch.zeros(16, 2)
    trapezoid_loss(accel, q0, v0, torch.zeros(16, 4, 2), torch.zeros(16, 4, 2), 0.02)
    assert calls == [torch.Size([16 * 5, 2])]
