"""The Euler–Lagrange solver against hand-written equations of motion, and the methods against each other."""

import pytest
import torch

from dlnn_core import METHODS, ConfigError, euler_lagrange_acceleration, get_system, hessian_condition_number
from dlnn_core.lagrangian import euler_lagrange_terms
from dlnn_core.models import ModelConfig, build_model
from dlnn_core.systems import SYSTEMS


def random_states(system, count, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    lo_q, hi_q = torch.tensor(system.q_range, dtype=dtype).T
    lo_v, hi_v = torch.tensor(system.qdot_range, dtype=dtype).T
    q = lo_q + (hi_q - lo_q) * torch.rand(count, system.n, generator=gen, dtype=dtype)
    v = lo_v + (hi_v - lo_v) * torch.rand(count, system.n, generator=gen, dtype=dtype)
    return q, v


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_closed_form_matches_hand_written_eom(name, method):
    system = get_system(name, rho=0.3)
    q, v = random_states(system, 200 if method == "loop" else 3000)
    qddot = euler_lagrange_acceleration(system.lagrangian, system.dissipation, q, v, method=method)
    assert rel_err(qddot, system.eom(q, v)) < 1e-10


@pytest.mark.parametrize("name", ["damped_double_pendulum", "damped_spring_pendulum"])
def test_transposed_mixed_term_is_caught(name):
    """The known bug (using the transpose of ∂²L/∂q̇∂q) must be visibly wrong for n ≥ 2."""
    system = get_system(name)
    q, v = random_states(system, 2000)
    n = system.n

    def scalar(x):
        return system.lagrangian(x[None, :n], x[None, n:])[0]

    h = torch.func.vmap(torch.func.hessian(scalar))(torch.cat([q, v], 1))
    terms = euler_lagrange_terms(system.lagrangian, system.dissipation, q, v)
    correct_mixed = (h[:, n:, :n] @ v[..., None])[..., 0]
    wrong_mixed = (h[:, :n, n:] @ v[..., None])[..., 0]
    wrong = torch.linalg.solve(terms.hessian_vv, terms.rhs + correct_mixed - wrong_mixed)
    assert rel_err(wrong, system.eom(q, v)) > 0.1


def test_float32_close_to_float64():
    system = get_system("damped_double_pendulum")
    q, v = random_states(system, 500)
    a64 = euler_lagrange_acceleration(system.lagrangian, system.dissipation, q, v)
    a32 = euler_lagrange_acceleration(system.lagrangian, system.dissipation, q.float(), v.float())
    assert a32.dtype == torch.float32
    assert rel_err(a32.double(), a64) < 1e-4


def test_no_dissipation_is_plain_lnn():
    system = get_system("damped_pendulum", rho=0.0)
    q, v = random_states(system, 100)
    a = euler_lagrange_acceleration(system.lagrangian, None, q, v)
    assert rel_err(a, system.eom(q, v)) < 1e-12


@pytest.mark.parametrize("name", ["damped_pendulum", "damped_double_pendulum"])
@pytest.mark.parametrize("form", ["free", "structured"])
def test_methods_agree_on_random_networks(name, form):
    system = get_system(name)
    q, v = random_states(system, 64, seed=1)
    outputs = {}
    for method in ["autograd", "jvp", "hessian"]:
        torch.manual_seed(3)
        model = build_model(ModelConfig(form=form, hidden=32, activation="tanh"), system, method).double()
        qddot = model(q, v)
        qddot.square().sum().backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]  # L's output bias has no effect
        outputs[method] = (qddot.detach(), torch.cat([g.flatten() for g in grads]))
    ref_a, ref_g = outputs["autograd"]
    for method, (a, g) in outputs.items():
        assert rel_err(a, ref_a) < 1e-9, method
        assert rel_err(g, ref_g) < 1e-9, method


@pytest.mark.parametrize("method", ["autograd", "jvp", "hessian"])
def test_gradcheck_through_acceleration(method):
    system = get_system("damped_spring_pendulum")
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=6, depth=1, activation="tanh", shared_trunk=True), system, method).double()
    q, v = random_states(system, 3)
    params = list(model.parameters())

    def accel(*flat):
        with torch.nn.utils.stateless._reparametrize_module(model, dict(zip([n for n, _ in model.named_parameters()], flat))):
            return model(q, v)

    assert torch.autograd.gradcheck(accel, tuple(p.detach().clone().requires_grad_() for p in params), eps=1e-6, atol=1e-5)


def test_gradients_with_respect_to_states():
    """Rollout losses differentiate through q, q̇: check those gradients too."""
    system = get_system("damped_double_pendulum")
    q, v = random_states(system, 4)
    q.requires_grad_()
    v.requires_grad_()
    for method in ["autograd", "jvp", "hessian"]:
        f = lambda q, v: euler_lagrange_acceleration(system.lagrangian, system.dissipation, q, v, method=method)  # noqa: E731
        assert torch.autograd.gradcheck(f, (q, v))


def test_singular_hessian_stays_finite_and_reports_condition():
    """ReLU-like L: ∂²L/∂q̇² = 0. The regularized solve returns finite values, cond is infinite/huge."""
    lagrangian = lambda q, v: (q * v).sum(-1)  # linear in q̇: zero Hessian  # noqa: E731
    q, v = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    a = euler_lagrange_acceleration(lagrangian, None, q, v)
    assert torch.isfinite(a).all()
    assert (hessian_condition_number(lagrangian, q, v) > 1e12).all()
    nearly = lambda q, v: (q * v).sum(-1) + 1e-14 * (v**2).sum(-1)  # noqa: E731
    assert torch.isfinite(euler_lagrange_acceleration(nearly, None, q.float(), v.float())).all()


def test_condition_number_of_double_pendulum_mass_matrix():
    system = get_system("damped_double_pendulum")
    q = torch.zeros(1, 2, dtype=torch.float64)
    cond = hessian_condition_number(system.lagrangian, q, torch.zeros_like(q))
    # M(0) = [[2, 1], [1, 1]]: eigenvalues (3 ± √5) / 2
    assert cond.item() == pytest.approx((3 + 5**0.5) / (3 - 5**0.5), rel=1e-12)


def test_shape_errors_are_clear():
    system = get_system("damped_pendulum")
    with pytest.raises(ConfigError, match="same shape"):
        euler_lagrange_acceleration(system.lagrangian, None, torch.zeros(4, 1), torch.zeros(4, 2))
    with pytest.raises(ConfigError, match="method"):
        euler_lagrange_acceleration(system.lagrangian, None, torch.zeros(4, 1), torch.zeros(4, 1), method="newton")


def test_one_degree_of_freedom_solve_equals_the_regularized_normal_equations():
    """n = 1 divides instead of factorizing: the same (HᵀH + λI) x = Hᵀ rhs, λ = rcond²‖H‖²_F/n + √tiny,
    also where H = 0, and differentiable."""
    from dlnn_core.lagrangian import regularized_solve

    torch.manual_seed(0)
    h = torch.randn(9, 1, 1, dtype=torch.float64)
    h[0] = 0.0
    rhs = torch.randn(9, 1, dtype=torch.float64)
    info = torch.finfo(torch.float64)
    lam = info.eps * h.square().sum((-2, -1)) + info.tiny**0.5
    expected = torch.linalg.solve(h.mT @ h + lam[:, None, None], h.mT @ rhs.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(regularized_solve(h, rhs), expected, rtol=1e-14, atol=0)
    assert float(regularized_solve(h, rhs)[0]) == 0.0
    assert torch.autograd.gradcheck(regularized_solve, (h[1:].clone().requires_grad_(), rhs[1:].clone().requires_grad_()))
