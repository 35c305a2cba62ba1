"""Systems declared in a spec (expressions for T, V, D compiled by a whitelist, q̈ by Euler–Lagrange)
and systems from a user's factory (`package.module:factory`): they match the hand-written built-ins,
refuse anything outside the whitelist with the field and the symbol, and train like the built-ins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from service_support import REPO, write_spec

from dlnn_core import ConfigError, DataConfig, TrainConfig, fit, get_system
from dlnn_core.data import cache_key, cache_path, integrate
from dlnn_core.expressions import FUNCTIONS, Symbols, compile_expression
from dlnn_studies.cli import main as cli
from dlnn_studies.spec.schema import SpecError, load_spec, parse_spec

PI = [-math.pi, math.pi]
# The built-in systems, declared as a user would: each must give the hand-written equations of motion.
DECLARATIONS = {
    "damped_oscillator": dict(
        coordinates=["x"], angles=[False], params=dict(m=1.0, k=1.0, rho=0.1),
        T="0.5 * m * x_dot**2", V="0.5 * k * x**2", D="0.5 * rho * x_dot**2",
        q_range=[[-2.0, 2.0]], qdot_range=[[-2.0, 2.0]]),
    "damped_pendulum": dict(
        coordinates=["theta"], angles=[True], params=dict(m=1.0, l=1.0, g=9.81, rho=0.1),
        T="0.5 * m * l**2 * theta_dot**2", V="-m * g * l * cos(theta)", D="0.5 * rho * theta_dot**2",
        q_range=[PI], qdot_range=[[-6.0, 6.0]]),
    "damped_double_pendulum": dict(
        coordinates=["t1", "t2"], angles=[True, True], params=dict(m1=1.0, m2=1.0, l1=1.0, l2=1.0, g=9.81, rho=0.1),
        T="0.5 * (m1 + m2) * l1**2 * t1_dot**2 + 0.5 * m2 * l2**2 * t2_dot**2 + m2 * l1 * l2 * t1_dot * t2_dot * cos(t1 - t2)",
        V="-(m1 + m2) * g * l1 * cos(t1) - m2 * g * l2 * cos(t2)",
        D="0.5 * rho * (t1_dot**2 + (t2_dot - t1_dot)**2)",
        q_range=[PI, PI], qdot_range=[[-4.0, 4.0], [-4.0, 4.0]]),
    "damped_spring_pendulum": dict(
        coordinates=["r", "theta"], angles=[False, True], params=dict(m=1.0, k=20.0, l0=1.0, g=9.81, rho=0.1),
        T="0.5 * m * (r_dot**2 + r**2 * theta_dot**2)", V="0.5 * k * (r - l0)**2 - m * g * r * cos(theta)",
        D="0.5 * rho * (r_dot**2 + r**2 * theta_dot**2)",
        q_range=[[0.8, 1.8], [-math.pi / 2, math.pi / 2]], qdot_range=[[-1.5, 1.5], [-2.0, 2.0]]),
}

SPEC = '''
[study]
name = "declared"
[budget]
trials = 2
[base]
epochs = 2
batch_size = 32
[base.data]
system = "declared"
params = {{ rho = 0.3 }}
n_train = 64
n_val = 32
n_test = 32
n_rollout = 2
rollout_steps = 10
[base.data.declared]
coordinates = ["theta1", "theta2"]
angles = [true, true]
params = {{ m1 = 1.0, m2 = 1.0, l1 = 1.0, l2 = 1.0, g = 9.81, rho = 0.1 }}
T = "0.5 * (m1 + m2) * l1**2 * theta1_dot**2 + 0.5 * m2 * l2**2 * theta2_dot**2 + m2 * l1 * l2 * theta1_dot * theta2_dot * cos(theta1 - theta2)"
V = "{V}"
D = "0.5 * rho * (theta1_dot**2 + (theta2_dot - theta1_dot)**2)"
q_range = [[-3.14159, 3.14159], [-3.14159, 3.14159]]
qdot_range = [[-4.0, 4.0], [-4.0, 4.0]]
[space.optimizer.lr]
low = 1e-3
high = 1e-2
log = true
'''
GOOD_V = "-(m1 + m2) * g * l1 * cos(theta1) - m2 * g * l2 * cos(theta2)"


def box_states(system, count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lo_q, hi_q = torch.tensor(system.q_range, dtype=torch.float64).T
    lo_v, hi_v = torch.tensor(system.qdot_range, dtype=torch.float64).T
    q = lo_q + (hi_q - lo_q) * torch.rand(count, system.n, generator=gen, dtype=torch.float64)
    v = lo_v + (hi_v - lo_v) * torch.rand(count, system.n, generator=gen, dtype=torch.float64)
    return q, v


def declared(base=None, **changes):
    return {**DECLARATIONS[base or "damped_pendulum"], **changes}


def problems_of(info) -> str:
    return str(info.value)


# ----------------------------------------------------------------------------- physics


@pytest.mark.parametrize("name", sorted(DECLARATIONS))
def test_declared_builtins_match_their_hand_written_equations_of_motion(name):
    system = DataConfig(system="declared", declared=DECLARATIONS[name], params={"rho": 0.3}).make_system()
    builtin = get_system(name, rho=0.3)
    q, v = box_states(builtin, 2000)
    for fn in ("eom", "lagrangian", "energy", "dissipation", "power_loss"):
        ours, theirs = getattr(system, fn)(q, v), getattr(builtin, fn)(q, v)
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-10, fn
    assert (system.n, system.angles, system.params["rho"]) == (builtin.n, builtin.angles, 0.3)


def test_spec_declared_double_pendulum_is_rebuilt_from_the_stored_spec():
    spec = parse_spec(__import__("tomllib").loads(SPEC.format(V=GOOD_V)))
    again = parse_spec(spec.raw)  # what every worker does with the spec stored on the study
    assert again.base == spec.base and again.base.data.declared == spec.base.data.declared
    assert spec.base.with_flat(spec.base.to_flat()) == spec.base  # a trial's full flat config as overrides (verify, retries)
    system, builtin = again.base.data.make_system(), get_system("damped_double_pendulum", rho=0.3)
    q, v = box_states(builtin, 2000, seed=1)
    assert float((system.eom(q, v) - builtin.eom(q, v)).norm() / builtin.eom(q, v).norm()) < 1e-10
    assert again.base.data.declared["params"]["rho"] == 0.1 and system.params["rho"] == 0.3  # data.params overrides


@pytest.mark.parametrize("dissipation", [None, "0.0", "rho * 0 + m"])
def test_without_dissipation_energy_is_conserved(dissipation):
    decl = {k: v for k, v in declared(D=dissipation).items() if v is not None}
    system = DataConfig(system="declared", declared=decl).make_system()
    traj = integrate(system, np.array([[1.0]]), np.array([[0.5]]), duration=2.0, rate_hz=50.0)
    energy = system.energy(torch.from_numpy(traj.q[0]), torch.from_numpy(traj.qdot[0]))
    assert float((energy - energy[0]).abs().max()) < 1e-8
    q, v = box_states(system, 16)
    assert float(system.power_loss(q, v).abs().max()) == 0.0


def test_eom_is_differentiable_when_states_require_grad():
    system = DataConfig(system="declared", declared=declared()).make_system()
    q, v = box_states(system, 8)
    q.requires_grad_()
    assert not system.eom(q.detach(), v).requires_grad
    torch.autograd.gradcheck(lambda q: system.eom(q, v), (q,))


def test_non_quadratic_dissipation_loses_energy_at_its_power():
    """The example's smoothed Coulomb friction: E(0) − E(t) = ∫ q̇·∂D/∂q̇ dt (≠ ∫ 2D dt for this D)."""
    spec = load_spec(REPO / "examples" / "coulomb_pendulum" / "study.toml")
    system = spec.base.data.make_system()
    traj = integrate(system, np.array([[1.0]]), np.array([[0.0]]), duration=8.0, rate_hz=400.0)
    q, v = torch.from_numpy(traj.q[0]), torch.from_numpy(traj.qdot[0])
    energy, power = system.energy(q, v).numpy(), system.power_loss(q, v).numpy()
    lost = np.concatenate([[0.0], np.cumsum((power[1:] + power[:-1]) / 2 * np.diff(traj.t))])
    np.testing.assert_allclose(energy[0] - energy, lost, atol=1e-4 * lost[-1])
    assert 0.1 < (energy[-1] + 9.81) / (energy[0] + 9.81) < 0.5  # DOMAIN: 10–50 % of the energy left after 8 s
    assert abs(float(power[np.argmax(np.abs(traj.qdot[0, :, 0]))] / (2 * system.dissipation(q, v).max()))) < 0.9  # not Rayleigh


# ----------------------------------------------------------------------------- safety


MALICIOUS = [
    ("__import__('os').system('touch pwned')", "attribute access"),
    ("theta.__class__", "attribute access"),
    ("(lambda: 1)()", "only calls of named functions"),
    ("exec('1')", "unknown function 'exec'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("[t for t in (1, 2)][0] * theta", "subscripts"),
    ("sum(t for t in (1, 2))", "unknown function 'sum'"),
    ("theta[0]", "subscripts"),
    ("9**9**9", "exponent"),
    ("theta_dot ** 1e6", "exponent"),
    ("1e300 * 1e300 * theta", "not a finite real number"),
    ("1 / 0 + theta", "cannot be evaluated"),
    ("sqrt(-1) * theta", "cannot be evaluated"),
    ("'x' * 10", "not a number"),
    ("True * theta", "not a number"),
    ("2j * theta", "not a number"),
    ("theta if theta_dot else 1", "if/else"),
    ("theta < 1", "comparisons"),
    ("(theta := 1)", "assignments"),
    ("theta // 2", "FloorDiv"),
    ("sin(theta, 2)", "takes 1 positional argument"),
    ("sin(x=theta)", "takes 1 positional argument"),
    ("f'{theta}'", "strings"),
    ("-" * 150 + "theta", "nested more than"),
    ("(" * 300 + "theta" + ")" * 300, "not a valid expression"),
    ("theta + " * 800 + "theta", "characters long"),
    ("-" * 3990 + "theta", "nested too deeply"),
    ("1" + "0" * 3500, "cannot be evaluated"),
    ("import os", "not a valid expression"),
    ("theta; 1", "not a valid expression"),
]


@pytest.mark.parametrize("text, why", MALICIOUS, ids=[m[0][:30] for m in MALICIOUS])
def test_expressions_outside_the_whitelist_are_refused(text, why, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    symbols = Symbols(("theta",), {"m": 1.0})
    with pytest.raises(ValueError, match=why.replace("(", r"\(")):
        compile_expression(text, symbols)
    with pytest.raises(ConfigError) as info:
        DataConfig(system="declared", declared=declared(T=text))
    assert info.value.field == "data.declared.T"
    assert not (tmp_path / "pwned").exists()


def test_every_whitelisted_function_compiles_and_matches_math():
    symbols = Symbols(("x",), {})
    q = torch.tensor([[0.3], [0.45]], dtype=torch.float64)
    for name, info in FUNCTIONS.items():
        call = f"{name}({{}})" if info.arity == 1 else f"{name}({{}}, 0.7)"
        got = compile_expression(call.format("x"), symbols)(q, q).tolist()
        want = [info.math_fn(x) if info.arity == 1 else info.math_fn(x, 0.7) for x in (0.3, 0.45)]
        assert got == pytest.approx(want, rel=1e-12), name
        folded = compile_expression(call.format("0.3"), symbols)(q, q)  # constants fold in floats
        assert folded.tolist() == pytest.approx([want[0]] * 2, rel=1e-12), name
    big = torch.tensor([[800.0]], dtype=torch.float64)
    assert compile_expression("logcosh(x)", symbols)(big, big).item() == pytest.approx(800 - math.log(2))


def test_unknown_names_and_functions_name_the_expression_and_the_symbol():
    with pytest.raises(ConfigError) as info:
        DataConfig(system="declared", declared=declared(T="0.5 * m * l**2 * thetadot**2", D="rho * coss(theta_dot)"))
    text = problems_of(info)
    assert info.value.field == "data.declared.T"
    assert ("data.declared.T: unknown name 'thetadot' (did you mean 'theta_dot'?) (known: coordinates theta; "
            "velocities theta_dot; parameters g, l, m, rho; constant pi)") in text
    assert "data.declared.D: unknown function 'coss' (did you mean 'cos'?); known: abs, acos" in text  # both, in one pass
    with pytest.raises(ConfigError, match="'sin' is a function: call it"):
        DataConfig(system="declared", declared=declared(V="sin * theta"))


@pytest.mark.parametrize("changes, field, message", [
    (dict(V="-m * g * l * cos(theta) + theta_dot"), "data.declared.V", "depends on q only; it uses theta_dot"),
    (dict(T="-0.5 * m * l**2 * theta_dot**2"), "data.declared.T", "not positive definite"),
    (dict(T="m * theta_dot"), "data.declared.T", "not positive definite"),
    (dict(D="-0.5 * rho * theta_dot**2"), "data.declared.D", "D is -"),
    (dict(D="rho * theta_dot"), "data.declared.D", "< 0"),
    (dict(V="log(theta)"), "data.declared.V", "is nan at q = ["),
    (dict(angles=[True, False]), "data.declared.angles", "one true/false per coordinate (1)"),
    (dict(q_range=[[1.0, -1.0]]), "data.declared.q_range", "low < high"),
    (dict(coordinates=["theta", "theta_dot"], angles=[True, True], q_range=[PI, PI], qdot_range=[[-1, 1], [-1, 1]]),
     "data.declared.coordinates", "'theta_dot' is used twice (as a coordinate and a velocity)"),
    (dict(coordinates=["sin"]), "data.declared.coordinates", "the name of a function"),
    (dict(params={"m": "heavy"}), "data.declared.params.m", "must be a finite number"),
    (dict(qrange=[PI]), "data.declared.qrange", "unknown key (did you mean 'q_range'?)"),
    (dict(T=None), "data.declared.T", "missing (required)"),
    (dict(coordinates=None, angles=None), "data.declared.coordinates", "missing (required); data.declared.angles: missing"),
])
def test_bad_declarations_fail_with_the_field(changes, field, message):
    decl = {k: v for k, v in declared(**changes).items() if v is not None}
    with pytest.raises(ConfigError) as info:
        DataConfig(system="declared", declared=decl, params={})
    assert info.value.field == field and message in problems_of(info), problems_of(info)


def test_declaration_and_system_must_agree_and_params_override_declared_ones():
    with pytest.raises(ConfigError, match='absent unless data.system = "declared"'):
        DataConfig(system="damped_pendulum", declared=declared())
    with pytest.raises(ConfigError, match="a table declaring the system"):
        DataConfig(system="declared")
    with pytest.raises(ConfigError) as info:
        DataConfig(system="declared", declared=declared(), params={"mass": 2.0})
    assert info.value.field == "data.params.mass" and "g, l, m, rho" in str(info.value)
    with pytest.raises(ConfigError, match="not positive definite"):
        DataConfig(system="declared", declared=declared(), params={"m": 0.0})
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_flat({"data.system": "pendulum"})
    assert "declared" in str(info.value) and "package.module:factory" in str(info.value)


def test_the_declaration_is_part_of_the_cache_key():
    base = DataConfig(system="declared", declared=declared())
    assert cache_key(DataConfig(system="declared", declared=declared(params=dict(m=1, l=1, g=9.81, rho=0.1))), 0) == cache_key(base, 0)
    assert cache_key(DataConfig(system="declared", declared=declared(V="-m * g * l * cos(theta) + 0")), 0) != cache_key(base, 0)
    assert cache_key(DataConfig(system="declared", declared=declared(angles=[False])), 0) != cache_key(base, 0)
    assert cache_key(DataConfig(system="declared", declared=declared(), params={"rho": 0.2}), 0) != cache_key(base, 0)
    assert cache_key(DataConfig(), 0) == "357b6107032e540e4484"  # keys from before declared systems stay valid
    named = DataConfig(system="declared", declared=declared(name="my_pendulum"))
    assert cache_path(named, 0).name.startswith("data-my_pendulum-")


# ----------------------------------------------------------------------------- entry points


FACTORY = '''
from dlnn_core import System, get_system, system_factory


@system_factory
def spring(k=1.0, rho=0.1):
    return get_system("damped_oscillator", k=k, rho=rho)


@system_factory
def not_a_system(**params):
    return {"eom": None}


@system_factory
def broken(**params):
    raise RuntimeError("no such mechanism")


def unmarked(**params):
    return get_system("damped_oscillator")


class _Anything:
    def __getattr__(self, name):
        return True

    def __call__(self, **params):
        return get_system("damped_oscillator")


sneaky = _Anything()  # answers True to any attribute, the mark included
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_mechanisms_15b.py").write_text(FACTORY)
    (tmp_path / "bad_import_15b.py").write_text("import a_package_that_is_not_installed_15b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_mechanisms_15b"


def test_entry_point_factory_builds_the_system(factory_module):
    cfg = DataConfig(system=f"{factory_module}:spring", params={"k": 2.0})
    system = cfg.make_system()
    assert system.params["k"] == 2.0 and system.name == "damped_oscillator"
    assert cache_path(cfg, 0).name.startswith(f"data-{factory_module}_spring-")
    assert TrainConfig.from_dict(TrainConfig(data=cfg).to_dict()).data == cfg


@pytest.mark.parametrize("ref, field, message", [
    ("my_mechanisms_15b:not_a_system", "data.system", "the factory returned dict, expected a dlnn_core.System"),
    ("my_mechanisms_15b:broken", "data.system", "the factory raised RuntimeError: no such mechanism"),
    ("my_mechanisms_15b:unmarked", "data.system", "decorate it with @dlnn_core.system_factory"),
    ("my_mechanisms_15b:sneaky", "data.system", "not marked as a system factory"),
    ("my_mechanisms_15b:missing", "data.system", "has no attribute 'missing'"),
    ("not_installed_15b.mech:spring", "data.system", "cannot import 'not_installed_15b.mech' (ModuleNotFoundError"),
    ("bad_import_15b:spring", "data.system", "a_package_that_is_not_installed_15b"),
    ("os:abort", "data.system", "'os' is a standard-library module"),
    ("subprocess:run", "data.system", "standard-library"),
    ("my_mechanisms_15b:spring:x", "data.system", "written 'package.module:factory'"),
])
def test_entry_point_errors_are_clear(factory_module, ref, field, message):
    with pytest.raises(ConfigError) as info:
        DataConfig(system=ref)
    assert info.value.field == field and message in str(info.value), str(info.value)


def test_entry_point_parameters_are_checked(factory_module):
    with pytest.raises(ConfigError) as info:
        DataConfig(system=f"{factory_module}:spring", params={"mass": 1.0})
    assert info.value.field == "data.params" and "mass" in str(info.value)


# ----------------------------------------------------------------------------- service and training


def test_bad_declaration_creates_no_study(tmp_path, capsys):
    path = write_spec(tmp_path, SPEC.format(V="-M * g * l1 * cos(theta1) - m2 * g * l2 * cos(theta_2)"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.messages == [
        "base.data.declared.V: unknown name 'M' (known: coordinates theta1, theta2; velocities theta1_dot, theta2_dot; "
        "parameters g, l1, l2, m1, m2, rho; constant pi)"]
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    assert cli.main(["launch", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dlnn launch: error: ") and "base.data.declared.V: unknown name 'M'" in err and "Traceback" not in err
    assert not (tmp_path / "dlnn.db").exists()


def test_searched_declared_parameter_is_checked_at_launch(tmp_path):
    spec = SPEC.format(V=GOOD_V) + "[space.data.params.rho]\nlow = -0.5\nhigh = 0.5\n"
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, spec))
    assert len(info.value.messages) == 1 and info.value.messages[0].startswith("space.data.params.rho.low: ")
    assert "a dissipation function is ≥ 0" in info.value.messages[0]


def test_short_training_run_on_a_declared_system(tmp_path):
    spec = load_spec(REPO / "examples" / "coulomb_pendulum" / "study.toml")
    config = spec.base.with_flat({"epochs": 2, "batch_size": 32, "data.n_train": 64, "data.n_val": 32, "data.n_test": 32,
                                  "data.n_rollout": 2, "data.rollout_steps": 10, "model.form": "structured",
                                  "model.hidden": 16, "optimizer.lr": 3e-3, "device": "cpu"})
    seen = []
    result = fit(config, report=lambda epoch, value: seen.append(value), cache_dir=tmp_path)
    assert result.status == "ok" and len(seen) == 2 and all(math.isfinite(v) for v in seen)
    assert math.isfinite(result.metrics["val_rel_mse"]) and "dissipation_rel_error" in result.metrics
    assert result.config["data"]["declared"]["D"].startswith("mu * c * logcosh")
    assert list(tmp_path.glob("data-coulomb_pendulum-*.npz"))


def test_example_spec_documents_itself():
    text = (REPO / "examples" / "coulomb_pendulum" / "study.toml").read_text()
    assert text.lstrip().startswith("#") and "dlnn run examples/coulomb_pendulum/study.toml" in text
    readme = (REPO / "README.md").read_text()
    assert "## Your own mechanism" in readme and 'system = "declared"' in readme
