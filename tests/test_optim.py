"""Optimizer, scheduler and loss registries: every entry builds, does what its metadata says,
and the schedules move the learning rate at the right counts (also for D-Adaptation)."""

import dataclasses
import math

import pytest
import torch

from dlnn_core.config import OptimizerConfig, SchedulerConfig
from dlnn_core.errors import ConfigError
from dlnn_core.losses import LOSSES
from dlnn_core.optim import OPTIMIZERS, SCHEDULERS, SETTINGS, adapted_d, build_optimizer, build_scheduler, current_lr, reads


def regression(seed=0):
    """A small least-squares problem: y = X w* + noise, loss = mean (X w − y)²."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 8, generator=gen)
    y = x @ (0.05 * torch.randn(8, 1, generator=gen)) + 0.001 * torch.randn(128, 1, generator=gen)
    w = torch.nn.Parameter(torch.zeros(8, 1))
    return w, lambda: (x @ w - y).square().mean()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_registry_metadata_is_consistent(name):
    info = OPTIMIZERS[name]
    assert info.name == name
    low, high = info.lr_range
    assert 0 < low < info.default_lr < high
    assert info.n_betas in (0, 2, 3)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_minimizes_a_quadratic_at_its_default_lr(name):
    w, loss_fn = regression()
    opt = build_optimizer([w], OptimizerConfig(name=name))
    first = float(loss_fn().detach())
    for _ in range(500):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert float(loss_fn().detach()) < 0.1 * first


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_settings_reach_the_optimizer(name):
    info = OPTIMIZERS[name]
    betas = (0.8, 0.85, 0.9)[: info.n_betas] or None
    cfg = OptimizerConfig(name=name, lr=0.123, weight_decay=0.01, momentum=0.5, betas=betas, d0=1e-5)
    group = build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg).param_groups[0]
    assert group["lr"] == 0.123 and group["weight_decay"] == 0.01
    if betas:
        assert tuple(group["betas"]) == betas
    if reads(name, "momentum"):
        assert group["momentum"] == 0.5
    if reads(name, "d0"):
        assert info.adaptive_d and group["d"] == 1e-5
    else:
        assert "d" not in group


# What each optimizer's hand-written factory built (dlnn_core/optim.py before the registry held
# `reads` as data), captured by running that code once with the pinned versions: the class, then
# param_groups[0] without "params" for a config that sets every field (ALL) and for one that leaves
# betas and eps unset (lr 0.123, the rest at OptimizerConfig's defaults). A field the generic builder
# stops or starts passing changes one of these.
ALL = dict(lr=0.123, weight_decay=0.0123, momentum=0.456, eps=1.23e-7, d0=1.23e-5)
BETAS = (0.81, 0.82, 0.83)
_SGD = {"dampening": 0, "differentiable": False, "foreach": None, "fused": None, "maximize": False}
_ADAM = {"amsgrad": False, "capturable": False, "differentiable": False, "foreach": None, "fused": None, "maximize": False}
_DADAPT = {"growth_rate": math.inf, "k": 0, "log_every": 0}
_PRODIGY = {"beta3": None, "d_coef": 1.0, "d_numerator": 0.0, "decouple": True, "fsdp_in_use": False, "growth_rate": math.inf,
            "k": 0, "safeguard_warmup": False, "slice_p": 1, "use_bias_correction": False}
BUILT_BEFORE = {
    "sgd": ("SGD",
            {**_SGD, "lr": 0.123, "momentum": 0, "nesterov": False, "weight_decay": 0.0123},
            {**_SGD, "lr": 0.123, "momentum": 0, "nesterov": False, "weight_decay": 0.0}),
    "momentum": ("SGD",
                 {**_SGD, "lr": 0.123, "momentum": 0.456, "nesterov": False, "weight_decay": 0.0123},
                 {**_SGD, "lr": 0.123, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}),
    "nesterov": ("SGD",
                 {**_SGD, "lr": 0.123, "momentum": 0.456, "nesterov": True, "weight_decay": 0.0123},
                 {**_SGD, "lr": 0.123, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0}),
    "adagrad": ("Adagrad",
                {"differentiable": False, "eps": 1.23e-07, "foreach": None, "fused": None, "initial_accumulator_value": 0, "lr": 0.123,
                 "lr_decay": 0, "maximize": False, "weight_decay": 0.0123},
                {"differentiable": False, "eps": 1e-10, "foreach": None, "fused": None, "initial_accumulator_value": 0, "lr": 0.123,
                 "lr_decay": 0, "maximize": False, "weight_decay": 0.0}),
    "rmsprop": ("RMSprop",
                {"alpha": 0.99, "capturable": False, "centered": False, "differentiable": False, "eps": 1.23e-07, "foreach": None,
                 "lr": 0.123, "maximize": False, "momentum": 0, "weight_decay": 0.0123},
                {"alpha": 0.99, "capturable": False, "centered": False, "differentiable": False, "eps": 1e-08, "foreach": None,
                 "lr": 0.123, "maximize": False, "momentum": 0, "weight_decay": 0.0}),
    "adadelta": ("Adadelta",
                 {"capturable": False, "differentiable": False, "eps": 1.23e-07, "foreach": None, "lr": 0.123, "maximize": False,
                  "rho": 0.9, "weight_decay": 0.0123},
                 {"capturable": False, "differentiable": False, "eps": 1e-06, "foreach": None, "lr": 0.123, "maximize": False,
                  "rho": 0.9, "weight_decay": 0.0}),
    "adam": ("Adam",
             {**_ADAM, "betas": (0.81, 0.82), "decoupled_weight_decay": False, "eps": 1.23e-07, "lr": 0.123, "weight_decay": 0.0123},
             {**_ADAM, "betas": (0.9, 0.999), "decoupled_weight_decay": False, "eps": 1e-08, "lr": 0.123, "weight_decay": 0.0}),
    "adamw": ("AdamW",
              {**_ADAM, "betas": (0.81, 0.82), "decoupled_weight_decay": True, "eps": 1.23e-07, "lr": 0.123, "weight_decay": 0.0123},
              {**_ADAM, "betas": (0.9, 0.999), "decoupled_weight_decay": True, "eps": 1e-08, "lr": 0.123, "weight_decay": 0.0}),
    "dadaptadam": ("DAdaptAdam",
                   {**_DADAPT, "betas": (0.81, 0.82), "d": 1.23e-05, "decouple": False, "eps": 1.23e-07, "fsdp_in_use": False,
                    "layer_scale": 1.0, "lr": 0.123, "numerator_weighted": 0.0, "use_bias_correction": False, "weight_decay": 0.0123},
                   {**_DADAPT, "betas": (0.9, 0.999), "d": 1e-06, "decouple": False, "eps": 1e-08, "fsdp_in_use": False,
                    "layer_scale": 1.0, "lr": 0.123, "numerator_weighted": 0.0, "use_bias_correction": False, "weight_decay": 0.0}),
    "dadaptsgd": ("DAdaptSGD",
                  {**_DADAPT, "d": 1.23e-05, "fsdp_in_use": False, "lr": 0.123, "momentum": 0.456, "numerator_weighted": 0.0,
                   "weight_decay": 0.0123},
                  {**_DADAPT, "d": 1e-06, "fsdp_in_use": False, "lr": 0.123, "momentum": 0.9, "numerator_weighted": 0.0,
                   "weight_decay": 0.0}),
    "dadaptadagrad": ("DAdaptAdaGrad",
                      {**_DADAPT, "d": 1.23e-05, "eps": 1.23e-07, "gsq_weighted": 0.0, "lr": 0.123, "momentum": 0, "skl1": 0.0,
                       "sksq_weighted": 0.0, "weight_decay": 0.0123},
                      {**_DADAPT, "d": 1e-06, "eps": 1e-06, "gsq_weighted": 0.0, "lr": 0.123, "momentum": 0, "skl1": 0.0,
                       "sksq_weighted": 0.0, "weight_decay": 0.0}),
    "lion": ("Lion",
             {"betas": (0.81, 0.82), "lr": 0.123, "weight_decay": 0.0123},
             {"betas": (0.9, 0.99), "lr": 0.123, "weight_decay": 0.0}),
    "adan": ("Adan",
             {"betas": (0.81, 0.82, 0.83), "caution": False, "eps": 1.23e-07, "foreach": None, "lr": 0.123, "no_prox": False,
              "weight_decay": 0.0123},
             {"betas": (0.98, 0.92, 0.99), "caution": False, "eps": 1e-08, "foreach": None, "lr": 0.123, "no_prox": False,
              "weight_decay": 0.0}),
    "prodigy": ("Prodigy",
                {**_PRODIGY, "betas": (0.81, 0.82), "d": 1.23e-05, "d0": 1.23e-05, "d_max": 1.23e-05, "eps": 1.23e-07, "lr": 0.123,
                 "weight_decay": 0.0123},
                {**_PRODIGY, "betas": (0.9, 0.999), "d": 1e-06, "d0": 1e-06, "d_max": 1e-06, "eps": 1e-08, "lr": 0.123,
                 "weight_decay": 0.0}),
}


def test_the_expectations_cover_the_registry():
    assert set(BUILT_BEFORE) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(BUILT_BEFORE))
def test_every_optimizer_builds_what_its_hand_written_factory_built(name):
    cls, every_field_set, betas_eps_unset = BUILT_BEFORE[name]
    betas = BETAS[: OPTIMIZERS[name].n_betas] or None
    for cfg, expected in ((OptimizerConfig(name=name, betas=betas, **ALL), every_field_set),
                          (OptimizerConfig(name=name, lr=0.123), betas_eps_unset)):
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg)
        assert type(opt).__name__ == cls
        assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == expected


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_reads_is_data_and_adaptive_d_follows_from_it(name):
    info = OPTIMIZERS[name]
    assert reads(name, "lr") and all(reads(name, s) == (s in info.reads) for s in SETTINGS)
    assert info.adaptive_d == reads(name, "d0") and reads(name, "betas") == (info.n_betas > 0)
    with pytest.raises(ValueError, match="betas"):
        dataclasses.replace(info, n_betas=0 if info.n_betas else 2)
    with pytest.raises(ValueError, match="known"):
        dataclasses.replace(info, reads=info.reads | {"lr_decay"})

def test_lr_none_means_the_registry_default():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimizerConfig(name="lion"))
    assert opt.param_groups[0]["lr"] == OPTIMIZERS["lion"].default_lr


def test_adaptive_d_grows_and_current_lr_multiplies_it():
    w, loss_fn = regression()
    opt = build_optimizer([w], OptimizerConfig(name="dadaptadam", lr=0.5, d0=1e-6))
    for _ in range(20):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    d = adapted_d(opt)
    assert d > 1e-6
    assert current_lr(opt) == pytest.approx(0.5 * d)
    plain = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimizerConfig(name="adam", lr=1e-3))
    assert adapted_d(plain) is None and current_lr(plain) == 1e-3


def test_unknown_names_fail_with_the_known_ones():
    with pytest.raises(ConfigError, match="dadaptadam"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], _bad_optimizer())
    with pytest.raises(ConfigError, match="cosine"):
        build_scheduler(_bad_scheduler(), torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, 10)


def _bad_optimizer():
    cfg = OptimizerConfig()
    object.__setattr__(cfg, "name", "dadapt_adam")  # bypass validation to reach the factory's own check
    return cfg


def _bad_scheduler():
    cfg = SchedulerConfig()
    object.__setattr__(cfg, "name", "cosine_restarts")
    return cfg


# ----------------------------------------------------------------------------- schedules


@pytest.fixture(autouse=True)
def _no_order_warning(recwarn):
    """The schedule traces below never step the optimizer; torch warns about that, harmlessly."""
    import warnings

    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")


def trace(cfg: SchedulerConfig, epochs=10, steps=4, optimizer="sgd", lr=1.0, metrics=None):
    """Drive a schedule as fit does; returns the lr in effect at every update, per epoch."""
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimizerConfig(name=optimizer, lr=lr))
    schedule = build_scheduler(cfg, opt, epochs, steps)
    lrs, updates = [], 0
    for epoch in range(1, epochs + 1):
        row = []
        for _ in range(steps):
            row.append(opt.param_groups[0]["lr"])
            updates += 1
            schedule.after_update(updates)
        lrs.append(row)
        schedule.after_epoch(epoch, metrics[epoch - 1] if metrics else 1.0)
    return lrs


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("optimizer", ["sgd", "dadaptadam"])
def test_every_scheduler_builds_and_keeps_lr_positive_and_bounded(name, optimizer):
    lrs = [lr for row in trace(SchedulerConfig(name=name, warmup_t=1, warmup_lr_init=0.1), optimizer=optimizer) for lr in row]
    assert all(0 <= lr <= 1.0 for lr in lrs) and lrs[0] > 0


def test_none_keeps_the_lr():
    assert {lr for row in trace(SchedulerConfig(name="none")) for lr in row} == {1.0}


def test_cosine_per_update_warmup_cycles_and_restarts():
    """10 epochs × 4 updates, 1 epoch warm-up from 0.1, 2 cycles of 5 epochs, second peak × 0.5."""
    cfg = SchedulerConfig(name="cosine", interval="step", warmup_t=1, warmup_lr_init=0.1, lr_min=0.01, cycle_limit=2, cycle_decay=0.5)
    lrs = [lr for row in trace(cfg) for lr in row]
    assert lrs[:5] == pytest.approx([0.1, 0.1 + 0.9 / 4, 0.1 + 1.8 / 4, 0.1 + 2.7 / 4, 1.0 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 4 / 20)))])
    t = 20  # first update of the second cycle: back up to half the peak
    assert lrs[t] == pytest.approx(0.5)
    assert lrs[t - 1] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert lrs[t] > 10 * lrs[t - 1]
    assert min(lrs) >= 0.01 - 1e-12


def test_cosine_per_epoch_moves_only_between_epochs():
    cfg = SchedulerConfig(name="cosine", interval="epoch", warmup_t=2, warmup_lr_init=0.0, cycle_limit=1)
    rows = trace(cfg)
    assert all(len(set(row)) == 1 for row in rows)
    per_epoch = [row[0] for row in rows]
    assert per_epoch[:3] == pytest.approx([0.0, 0.5, 1.0 * 0.5 * (1 + math.cos(math.pi * 2 / 10))])
    assert per_epoch[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))


def test_cosine_drives_the_d_adaptation_multiplier_while_d_adapts():
    """timm writes param_groups' lr, which D-Adaptation reads as the multiplier of d; d keeps adapting."""
    w, loss_fn = regression()
    opt = build_optimizer([w], OptimizerConfig(name="dadaptadam", lr=1.0))
    schedule = build_scheduler(SchedulerConfig(name="cosine", warmup_t=1, warmup_lr_init=0.1, cycle_limit=1), opt, epochs=4, steps_per_epoch=10)
    multipliers, ds = [], []
    for update in range(1, 41):
        multipliers.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        ds.append(adapted_d(opt))
        schedule.after_update(update)
    # timm: linear warm-up over 10 updates, and the cosine cycle (40 updates) includes the warm-up
    assert multipliers[0] == pytest.approx(0.1) and multipliers[9] == pytest.approx(0.1 + 9 * 0.09)
    assert multipliers[10:] == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 40)) for t in range(10, 40)])
    assert ds[-1] > 1e-6 and all(b >= a for a, b in zip(ds, ds[1:]))


def test_step_exponential_and_plateau_decay_per_epoch():
    step = [row[0] for row in trace(SchedulerConfig(name="step", step_size=3, gamma=0.5))]
    assert step[:7] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])
    expo = [row[0] for row in trace(SchedulerConfig(name="exponential"))]
    assert expo[:3] == pytest.approx([1, 0.95, 0.95**2])
    flat = [1.0, 0.9] + [0.9] * 8  # stalls after epoch 2
    plateau = [row[0] for row in trace(SchedulerConfig(name="plateau", patience=2, factor=0.1), metrics=flat)]
    assert plateau[:5] == pytest.approx([1, 1, 1, 1, 1]) and plateau[5] == pytest.approx(0.1)


@pytest.mark.parametrize("cfg, torch_class, arguments", [
    (SchedulerConfig(name="step", step_size=7, gamma=0.7), "StepLR", {"step_size": 7, "gamma": 0.7}),
    (SchedulerConfig(name="exponential"), "ExponentialLR", {"gamma": 0.95}),
])
def test_timm_step_schedules_trace_torchs_curves(cfg, torch_class, arguments):
    """step and exponential are timm's StepLRScheduler (gamma^(epochs // step_size)); torch's StepLR and
    ExponentialLR multiply epoch by epoch: the curves agree to rounding over a long run."""
    ours = [row[0] for row in trace(cfg, epochs=60, steps=1, lr=0.3)]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    reference = getattr(torch.optim.lr_scheduler, torch_class)(opt, **arguments)
    theirs = []
    for _ in range(60):
        theirs.append(opt.param_groups[0]["lr"])
        reference.step()
    assert type(build_scheduler(cfg, opt, 60, 1).scheduler).__module__.startswith("timm.")
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0)


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_zero_at_the_target_and_positive_elsewhere(name):
    true = torch.randn(16, 2)
    assert float(LOSSES[name](true, true)) == 0.0
    assert float(LOSSES[name](true + 0.1, true)) > 0


def test_loss_forms():
    true = torch.zeros(10, 2)
    small, large = torch.full((10, 2), 1e-3), torch.full((10, 2), 1e4)
    assert float(LOSSES["l1_sum"](small, true)) == pytest.approx(20 * float(LOSSES["l1_mean"](small, true)))
    assert float(LOSSES["huber"](small, true)) == pytest.approx(0.5 * float(LOSSES["mse"](small, true)))
    assert float(LOSSES["huber"](large, true)) == pytest.approx(1e4 - 0.5)
    assert float(LOSSES["log_cosh"](small, true)) == pytest.approx(0.5e-6, rel=1e-4)  # float32, no cancellation
    x = torch.tensor([0.0, 1e-3, 5.0, 9.99, 10.0, 50.0, 1e4], requires_grad=True)
    LOSSES["log_cosh"](x, torch.zeros_like(x)).backward()
    torch.testing.assert_close(x.grad, torch.tanh(x.detach()) / len(x))
    assert float(LOSSES["log_cosh"](large, true)) == pytest.approx(1e4 - math.log(2))  # no overflow
