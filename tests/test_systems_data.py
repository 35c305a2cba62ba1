"""Systems, trajectories, rollouts, datasets and their input errors."""

import math

import numpy as np
import pytest
import torch

from dlnn_core import ConfigError, DataConfig, ModelConfig, build_model, get_system, load_data
from dlnn_core.rollout import rollout
from dlnn_core.data import generate, integrate
from dlnn_core.metrics import angle_difference, state_error, valid_prediction_steps, valid_steps_each


def test_oscillator_rollout_and_solver_match_analytic_solution():
    system = get_system("damped_oscillator", rho=0.3, k=2.0)
    q0, v0 = np.array([[1.0], [-0.5]]), np.array([[0.0], [1.5]])
    t = np.arange(0, 801) * 0.01
    exact_q, exact_v = system.solution(q0[:, 0], v0[:, 0], t)
    q, v = rollout(system.eom, torch.from_numpy(q0), torch.from_numpy(v0), 0.01, 800)
    assert np.abs(q[..., 0].numpy() - exact_q).max() < 1e-8
    assert np.abs(v[..., 0].numpy() - exact_v).max() < 1e-8
    traj = integrate(system, q0, v0, duration=8.0, rate_hz=100.0)
    assert np.abs(traj.q[..., 0] - exact_q).max() < 1e-9


def test_overdamped_and_critical_oscillator_solutions():
    for rho in (2.0, 5.0):  # critical (ρ = 2√(km)) and overdamped
        system = get_system("damped_oscillator", rho=rho)
        t = np.linspace(0, 5, 51)
        exact_q, _ = system.solution(np.array([1.0]), np.array([0.5]), t)
        traj = integrate(system, np.array([[1.0]]), np.array([[0.5]]), 5.0, 10.0)
        assert np.abs(traj.q[0, :, 0] - exact_q[0]).max() < 1e-9


@pytest.mark.parametrize("name", ["damped_pendulum", "damped_double_pendulum", "damped_spring_pendulum"])
def test_energy_conserved_without_damping(name):
    system = get_system(name, rho=0.0)
    q0 = torch.tensor([[0.3] * system.n], dtype=torch.float64) + torch.tensor([[1.5 if not a else 0.0 for a in system.angles]], dtype=torch.float64)
    v0 = torch.full((1, system.n), 0.5, dtype=torch.float64)
    q, v = rollout(system.eom, q0, v0, 0.01, 500)
    energy = system.energy(q[0], v[0])
    assert (energy - energy[0]).abs().max() < 1e-6 * (1 + energy[0].abs())


@pytest.mark.parametrize("name", ["damped_pendulum", "damped_double_pendulum", "damped_spring_pendulum"])
def test_energy_lost_at_rate_of_dissipation(name):
    """E(0) − E(T) = ∫ q̇·∂D/∂q̇ dt = ∫ 2D dt along the true trajectory."""
    system = get_system(name, rho=0.3)
    q0 = np.array([[0.5] * system.n]) + np.array([[1.5 if not a else 0.0 for a in system.angles]])
    traj = integrate(system, q0, np.full((1, system.n), 0.3), duration=4.0, rate_hz=400.0)
    q, v = torch.from_numpy(traj.q[0]), torch.from_numpy(traj.qdot[0])
    energy = system.energy(q, v).numpy()
    power = system.power_loss(q, v).numpy()
    lost = np.concatenate([[0.0], np.cumsum((power[1:] + power[:-1]) / 2 * np.diff(traj.t))])
    assert lost[-1] > 0.2  # a real loss, in energy units
    np.testing.assert_allclose(energy[0] - energy, lost, atol=1e-4 * lost[-1])


def test_pendulum_damping_leaves_a_useful_fraction_of_energy():
    """DOMAIN.md: m = l = 1, q0 = 1 rad, 8 s, ρ = 0.1 keeps about 45 % of the energy above rest."""
    system = get_system("damped_pendulum", rho=0.1)
    traj = integrate(system, np.array([[1.0]]), np.array([[0.0]]), 8.0, 30.0)
    e = system.energy(torch.from_numpy(traj.q[0]), torch.from_numpy(traj.qdot[0])).numpy() + 9.81
    assert 0.35 < e[-1] / e[0] < 0.55


def test_angles_compared_modulo_two_pi():
    a, b = torch.tensor([[math.pi - 0.1, 1.0]]), torch.tensor([[-math.pi + 0.1, 1.0 + 2 * math.pi]])
    d = angle_difference(a, b, (True, False))
    assert d[0, 0].item() == pytest.approx(-0.2, abs=1e-6)
    assert d[0, 1].item() == pytest.approx(-2 * math.pi, abs=1e-6)
    errors = state_error(a[:, None], a[:, None], b[:, None], a[:, None], (True, True))
    assert errors.item() == pytest.approx(0.2, abs=1e-5)
    assert valid_prediction_steps(torch.tensor([[0.0, 0.1, 0.5, 0.2]]), 0.3) == 2
    errors = torch.tensor([[0.0, 0.1, 0.5, 0.2], [0.0, 0.1, 0.2, 0.2], [0.4, 0.0, 0.0, 0.0]])
    assert valid_steps_each(errors, 0.3).tolist() == [2, 4, 0]  # never over: the whole rollout
    assert valid_prediction_steps(errors, 0.3) == 2


SMALL = dict(n_train=64, n_val=32, n_test=32, n_rollout=2, duration=2.0)


@pytest.mark.parametrize("kind", ["states", "trajectories"])
def test_datasets_bit_identical_for_same_seed_and_differ_across_seeds(kind, tmp_path):
    cfg = DataConfig(system="damped_double_pendulum", kind=kind, noise=0.01, rollout_steps=40,  # 500-step chaotic rollouts cost 20 s
                     **{**SMALL, "n_train": 3 if kind == "trajectories" else 64, "n_val": 2 if kind == "trajectories" else 32, "n_test": 2 if kind == "trajectories" else 32})
    a, b, c = generate(cfg, 7), generate(cfg, 7), generate(cfg, 8)
    for split in ("train", "val", "test", "ood"):
        for key in ("q", "qdot", "qddot"):
            x, y, z = (getattr(getattr(s, split), key) for s in (a, b, c))
            assert np.array_equal(x, y)
            assert not np.array_equal(x, z)
    assert np.array_equal(a.rollouts["ood"].q, b.rollouts["ood"].q)
    cached_first, cached_again = load_data(cfg, 7, tmp_path), load_data(cfg, 7, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    assert np.array_equal(cached_first.train.q, a.train.q) and np.array_equal(cached_again.train.qddot, a.train.qddot)
    assert np.array_equal(cached_again.rollouts["test"].qdot, a.rollouts["test"].qdot)


def test_splits_use_independent_streams():
    base = generate(DataConfig(system="damped_pendulum", **SMALL), 1)
    bigger_val = generate(DataConfig(system="damped_pendulum", **{**SMALL, "n_val": 64}), 1)
    assert np.array_equal(base.train.q, bigger_val.train.q)
    assert np.array_equal(base.test.q, bigger_val.test.q)
    assert not np.array_equal(base.train.q[:32], base.val.q)


def test_exact_targets_angles_noise_and_ood():
    cfg = DataConfig(system="damped_spring_pendulum", noise=0.05, **SMALL)
    splits = generate(cfg, 0)
    system = splits.system
    test = splits.test
    assert np.allclose(test.qddot, system.eom(torch.from_numpy(test.q), torch.from_numpy(test.qdot)).numpy(), atol=1e-12)
    train = splits.train
    residual = train.qddot - system.eom(torch.from_numpy(train.q), torch.from_numpy(train.qdot)).numpy()
    assert 0.01 < residual.std()  # noise on training observations only
    assert (np.abs(splits.val.q[:, 1]) <= math.pi).all()
    energy = lambda s: system.energy(torch.from_numpy(s.q), torch.from_numpy(s.qdot)).numpy()  # noqa: E731
    assert energy(splits.ood).min() > energy(test).max()


def test_trajectory_states_wrap_angles_and_targets_are_exact():
    cfg = DataConfig(system="damped_pendulum", kind="trajectories", n_train=4, n_val=2, n_test=2, n_rollout=2, duration=3.0)
    splits = generate(cfg, 0)
    assert splits.train.q.shape == (4 * 91, 1)
    assert (np.abs(splits.train.q) <= math.pi).all()
    eom = splits.system.eom(torch.from_numpy(splits.train.q), torch.from_numpy(splits.train.qdot)).numpy()
    assert np.allclose(splits.train.qddot, eom, atol=1e-12)


def test_savgol_estimates_converge_to_truth_as_noise_vanishes():
    errors = []
    for noise in (1e-2, 1e-3, 1e-4, 0.0):
        cfg = DataConfig(system="damped_pendulum", kind="trajectories", derivatives="savgol", noise=noise, rate_hz=100.0,
                         n_train=4, n_val=2, n_test=2, n_rollout=2, duration=3.0, savgol_window=15, savgol_order=4)
        train = generate(cfg, 0).train
        truth = get_system("damped_pendulum").eom(torch.from_numpy(train.q), torch.from_numpy(train.qdot)).numpy()
        errors.append(np.sqrt(np.mean((train.qddot - truth) ** 2) / np.mean(truth**2)))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-3 and errors[0] > 10 * errors[-1]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ConfigError, match="damped_pendulum"):
        get_system("pendulm")
    with pytest.raises(ConfigError, match="rho.*≥ 0"):
        get_system("damped_pendulum", rho=-0.1)
    with pytest.raises(ConfigError, match="data.params.mass"):
        DataConfig(system="damped_pendulum", params={"mass": 2.0})
    with pytest.raises(ConfigError, match="data.kind"):
        DataConfig(kind="movies")
    with pytest.raises(ConfigError, match="data.n_train"):
        DataConfig(n_train=0)
    with pytest.raises(ConfigError, match="second derivative"):
        ModelConfig(activation="relu")
    with pytest.raises(ConfigError, match="swish"):
        ModelConfig(activation="sigmoidal")
    with pytest.raises(ConfigError, match="model.form"):
        ModelConfig(form="hamiltonian")
    assert ModelConfig(kind="mlp", activation="relu")  # the MLP baseline never differentiates twice


def test_model_kinds_and_forms_build_and_run():
    system = get_system("damped_double_pendulum")
    q, v = torch.randn(5, 2), torch.randn(5, 2)
    for kind in ("dlnn", "lnn", "mlp"):
        for form in ("free", "structured"):
            model = build_model(ModelConfig(kind=kind, form=form, hidden=8), system)
            assert model(q, v).shape == (5, 2)
            assert (model.dissipation is None) == (kind != "dlnn")


def test_structured_dissipation_is_non_negative_and_mass_positive():
    system = get_system("damped_spring_pendulum")
    model = build_model(ModelConfig(form="structured", hidden=16), system).double()
    q, v = torch.randn(256, 2, dtype=torch.float64), 3 * torch.randn(256, 2, dtype=torch.float64)
    assert (model.dissipation(q, v) >= 0).all()
    from dlnn_core.lagrangian import euler_lagrange_terms
    eig = torch.linalg.eigvalsh(euler_lagrange_terms(model.lagrangian, None, q, v).hessian_vv)
    assert (eig > 0).all()
