"""The batched, graph-free evaluation gives the same metrics as the per-split reference
(tests/evaluate_reference.py, the code before issue 16), and its closed-form derivatives equal
autograd's for every form, activation and system."""

import itertools
import math

import pytest
import torch

import evaluate_reference
from dlnn_core.data import DataConfig, load_data
from dlnn_core.evaluate import ALIASES, METRICS, evaluate
from dlnn_core.lagrangian import inference_terms
from dlnn_core.models import ModelConfig, build_model
from dlnn_core.systems import get_system

SYSTEMS = {1: "damped_pendulum", 2: "damped_double_pendulum"}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def splits_for(n: int):
    """110-step rollouts, so the 100-step horizon is scored as well as the full one."""
    cfg = DataConfig(system=SYSTEMS[n], n_train=64, n_val=96, n_test=128, n_rollout=3, rollout_steps=110)
    return load_data(cfg, seed=1)


def assert_same_metrics(new: dict, old: dict, rel: float) -> None:
    """The reference predates the short names (rollout_error = test_rollout_error, ...): they must equal their long ones."""
    for short, full in ALIASES.items():
        assert (short in new) == (full in new) and new.get(short) == new.get(full), short
    new = {k: v for k, v in new.items() if k not in ALIASES}
    assert new.keys() == old.keys()
    for key, value in old.items():
        assert not math.isnan(new[key]), key
        if math.isfinite(value):
            assert new[key] == pytest.approx(value, rel=rel, abs=1e-12), key
        else:
            assert new[key] == value, key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["dlnn", "lnn", "mlp"])
@pytest.mark.parametrize("n", [1, 2])
def test_evaluate_matches_the_per_split_reference(n, kind, dtype):
    """Structured L (M ≻ 0, C ⪰ 0) keeps random models' rollouts bounded, so the rollouts can be compared."""
    splits = splits_for(n)
    torch.manual_seed(n)
    model = build_model(ModelConfig(kind=kind, form="structured", hidden=32, activation="swish"), splits.system).to(dtype)
    new = evaluate(model, splits, dtype)
    old = evaluate_reference.evaluate(model, splits, dtype)
    assert {"test_rollout_error_100", "ood_rollout_error_100", "ood_valid_steps", "test_energy_error", "true_dissipation_share"} <= new.keys()
    assert ("dissipation_rel_error" in new) == (kind == "dlnn")
    assert new["test_valid_steps"] > 0 and new["test_rollout_error"] < 1e3  # bounded: a comparison of real rollouts
    assert_same_metrics(new, old, rel=1e-9 if dtype == torch.float64 else 2e-4)
    assert all(p.requires_grad for p in model.parameters())  # frozen only while evaluating


def test_free_form_state_metrics_match():
    """A free-form L trained by nobody rolls out wildly (the test below), so only its q̈ and dissipation metrics are compared."""
    splits = splits_for(2)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="dlnn", form="free", hidden=32, activation="softplus", shared_trunk=True), splits.system).double()
    new = evaluate(model, splits, torch.float64, metrics=())
    old = evaluate_reference.evaluate(model, splits, torch.float64, rollouts=False)
    assert_same_metrics(new, old, rel=1e-9)


@pytest.mark.parametrize("kind,activation,scale", [("dlnn", "swish", 8.0), ("mlp", "swish", 20.0)])
def test_a_diverging_rollout_gives_the_same_finite_or_inf_metrics(kind, activation, scale):
    """Weights scaled up from PyTorch's init blow the rollouts up within a few steps (to huge
    finite states for the DLNN, to overflow for the MLP). Both paths keep every metric NaN-free,
    agree on which are infinite and on the valid steps; past the blow-up the values themselves
    are rounding amplified, so only their size is compared."""
    splits = splits_for(1)
    torch.manual_seed(3)
    model = build_model(ModelConfig(kind=kind, form="free", hidden=16, activation=activation, init="default"), splits.system)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    new = {k: v for k, v in evaluate(model, splits).items() if k not in ALIASES}
    old = evaluate_reference.evaluate(model, splits)
    assert new.keys() == old.keys()
    assert not any(math.isnan(v) for v in new.values())
    assert {k for k, v in new.items() if math.isinf(v)} == {k for k, v in old.items() if math.isinf(v)}
    for split in ("test", "ood"):
        assert new[f"{split}_rollout_error"] > 1e3 and old[f"{split}_rollout_error"] > 1e3
        assert new[f"{split}_valid_steps"] == old[f"{split}_valid_steps"] < 10
    for key in ("val_rel_mse", "test_rel_mse", "ood_rel_mse_median", "true_dissipation_share"):
        assert new[key] == pytest.approx(old[key], rel=1e-4), key
    if kind == "mlp":
        assert math.isinf(new["test_rollout_error"])


CASES = list(itertools.product(
    ("damped_oscillator", "damped_pendulum", "damped_double_pendulum", "damped_spring_pendulum"),
    ("free", "structured"), (False, True), ("dlnn", "lnn"), ("swish", "softplus", "tanh", "gelu", "tanhshrink", "elu")))


@pytest.mark.parametrize("system,form,shared,kind,activation", CASES)
def test_closed_form_terms_equal_autograd(system, form, shared, kind, activation):
    """The models' own inference() (derivatives pushed through the layers) against
    reverse-over-reverse autograd, in float64: ∂²L/∂q̇², the right-hand side and ∂D/∂q̇."""
    torch.manual_seed(0)
    sys_ = get_system(system)
    nonneg = activation != "elu"  # the free form's raw D output too
    model = build_model(ModelConfig(kind=kind, form=form, hidden=24, depth=3, activation=activation, shared_trunk=shared,
                                    nonneg_dissipation=nonneg), sys_).double()
    q, v = 2 * torch.randn(12, sys_.n, dtype=torch.float64), 2 * torch.randn(12, sys_.n, dtype=torch.float64)
    terms, d_grad = model.inference()(q, v)
    ref, ref_d = inference_terms(model.lagrangian, model.dissipation, q, v)
    torch.testing.assert_close(terms.hessian_vv, ref.hessian_vv, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(terms.rhs, ref.rhs, rtol=1e-9, atol=1e-9)
    assert (d_grad is None) == (kind == "lnn") == (ref_d is None)
    if d_grad is not None:
        torch.testing.assert_close(d_grad, ref_d, rtol=1e-9, atol=1e-9)


def test_generic_inference_terms_equal_the_training_path():
    """lagrangian.inference_terms (no graph, ∂D/∂q̇ in the last backward pass) against euler_lagrange_terms."""
    from dlnn_core.lagrangian import euler_lagrange_terms

    sys_ = get_system("damped_double_pendulum")
    q, v = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    terms, d_grad = inference_terms(sys_.lagrangian, sys_.dissipation, q, v)
    damped = euler_lagrange_terms(sys_.lagrangian, sys_.dissipation, q, v)
    torch.testing.assert_close(terms.hessian_vv, damped.hessian_vv)
    torch.testing.assert_close(terms.rhs - d_grad, damped.rhs)


def test_evaluate_reports_progress():
    splits = splits_for(1)
    model = build_model(ModelConfig(form="structured", hidden=16), splits.system)
    calls = []
    evaluate(model, splits, progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert [c for c in calls if c[0] == "states"] == [("states", 1, 3), ("states", 2, 3), ("states", 3, 3)]
    rollout = [c for c in calls if c[0] == "rollout"]
    assert rollout[-1] == ("rollout", 110, 110) and len(rollout) == 5
    assert calls[-1] == ("dissipation", 1, 1)


@pytest.mark.parametrize("need,splits_rolled", [((), ()), (("val_rel_mse",), ()), (("rollout_error", "wall_time_s"), ("test",)),
                                                (("ood_valid_steps",), ("ood",)), (None, ("test", "ood"))])
def test_asked_metrics_roll_out_only_their_splits_and_equal_the_full_evaluation(need, splits_rolled):
    """A study asks for its objectives: only the splits they need are rolled out (the rollout is the
    cost), the q̈ and dissipation metrics always come, and every value equals the full evaluation's."""
    splits = splits_for(1)
    torch.manual_seed(1)
    model = build_model(ModelConfig(form="structured", hidden=16, activation="swish"), splits.system).double()
    full = evaluate(model, splits, torch.float64)
    rolled = []
    part = evaluate(model, splits, torch.float64, metrics=need,
                    progress=lambda stage, done, total: rolled.append(total) if stage == "rollout" else None)
    assert bool(rolled) == bool(splits_rolled)
    for key, value in part.items():
        assert value == pytest.approx(full[key], rel=1e-12), key  # a split rolled alone: another batch, the last bit may differ
    got = {s for s in ("test", "ood") if f"{s}_rollout_error" in part}
    assert got == set(splits_rolled)
    assert {"val_rel_mse", "test_rel_mse_median", "ood_rel_mse", "dissipation_rel_error", "dissipation_share"} <= part.keys()
    assert set(need or ()) - {"wall_time_s"} <= part.keys()


def test_every_metric_a_study_may_ask_for_is_produced_by_its_source():
    """The registry and evaluate agree: each evaluated metric exists in a full evaluation of a damped system
    (run bookkeeping comes from fit), and asking for it alone yields it."""
    splits = splits_for(1)
    steps = splits.rollouts["test"].q.shape[1] - 1
    model = build_model(ModelConfig(form="structured", hidden=16), splits.system)
    full = evaluate(model, splits)
    for name, metric in METRICS.items():
        horizon = name.rsplit("_", 1)[-1]
        if metric.source == "run" or (horizon.isdigit() and int(horizon) >= steps):  # a horizon past the rollout is not scored
            continue
        assert name in full, name
        assert metric.direction in ("minimize", "maximize")
    assert evaluate(model, splits, metrics=("ood_energy_error",)).keys() >= {"ood_energy_error", "ood_rollout_error"}


def test_networks_stack_only_when_they_share_a_shape():
    """Same layers but the output width: one Stack (outputs padded); any other difference, or a layer without a rule: None."""
    from torch import nn

    from dlnn_core import jets
    from dlnn_core.models import mlp

    torch.manual_seed(0)
    a, b = mlp(2, 8, 2, 3, "swish"), mlp(2, 8, 2, 1, "swish")
    stacked = jets.stack([a, b])
    assert stacked.outs == (3, 1) and stacked.weights[-1].shape == (2, 8, 3)
    x, t = torch.randn(5, 2), torch.randn(2, 5, 2)
    y, ty, _ = jets.jet(stacked, x, t)
    torch.testing.assert_close(y[1, :, :1], b(x))
    torch.testing.assert_close(y[1, :, 1:], torch.zeros(5, 2))
    slope = torch.autograd.grad(b(x.requires_grad_()).sum(), x)[0]  # ∂b/∂x per sample (b has one output)
    torch.testing.assert_close(ty[1, 0, :, 0], (slope * t[0]).sum(-1))
    assert jets.stack([a, mlp(2, 16, 2, 1, "swish")]) is None
    assert jets.stack([a, mlp(2, 8, 2, 3, "tanh")]) is None
    assert jets.stack([nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))]) is None


def test_evaluation_leaves_the_model_trainable():
    """Evaluation runs under inference mode; what it caches on first use (the Cholesky index tensors)
    must still serve training's backward pass afterwards."""
    from dlnn_core import models

    models._TRIL.clear()
    splits = splits_for(2)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="dlnn", form="structured", hidden=16), splits.system)
    evaluate(model, splits, metrics=("rollout_error",))
    q, v, a = splits.test.to_torch(torch.float32, "cpu")
    (model(q[:8], v[:8]) - a[:8]).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]  # V's output bias has none: q̈ reads only ∂V/∂q
    assert len(grads) >= len(list(model.parameters())) - 1 and all(torch.isfinite(g).all() for g in grads)
