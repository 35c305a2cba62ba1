"""Packed trials (dlnn_core.pack): a trial trained in a pack gives the metrics it gives alone, for
every optimizer of the registry; a trial that diverges or is stopped leaves the pack without
touching the others; the sync-free D-Adaptation/Prodigy match the packages step for step."""

import math

import pytest
import torch

from dlnn_core.adaptive import DAdaptAdam, Prodigy
from dlnn_core.config import TrainConfig
from dlnn_core.errors import ConfigError
from dlnn_core.models import build_model
from dlnn_core.optim import OPTIMIZERS, build_optimizer
from dlnn_core.pack import Joiner, fit_pack, pack_key, packed_model
from dlnn_core.systems import get_system
from dlnn_core.train import fit

# Tiny and in float64, so that "the same to float tolerance" is tight: a few tenths of a second per fit.
TINY = {
    "data.system": "damped_oscillator", "data.n_train": 96, "data.n_val": 64, "data.n_test": 64,
    "data.n_rollout": 2, "data.rollout_steps": 10,
    "model.form": "structured", "model.hidden": 8, "model.activation": "swish",
    "batch_size": 32, "epochs": 3, "device": "cpu", "dtype": "float64",
}
RTOL = 1e-7


def tiny(**flat) -> TrainConfig:
    return TrainConfig().with_flat({**TINY, **{k.replace("__", "."): v for k, v in flat.items()}})


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def assert_same_run(alone, packed):
    """Same status, epochs, per-epoch losses, validation errors and d, and the same final metrics."""
    assert packed.status == alone.status and packed.diverged_epoch == alone.diverged_epoch and packed.best_epoch == alone.best_epoch
    assert len(packed.history) == len(alone.history)
    for a, p in zip(alone.history, packed.history):
        for key in ("train_loss", "val_rel_mse", "val_rel_mse_median", "lr", "d"):
            assert (a.get(key) is None) == (p.get(key) is None), key
            if a.get(key) is not None:
                assert p[key] == pytest.approx(a[key], rel=RTOL, abs=1e-12, nan_ok=True), (key, a["epoch"])
    for key, value in alone.metrics.items():
        if key != "wall_time_s":
            assert packed.metrics[key] == pytest.approx(value, rel=RTOL, abs=1e-12, nan_ok=True), key
    assert packed.config == alone.config


# A second trial in every pack, different in everything a trial may set for itself.
PARTNER = tiny(seed=7, optimizer__name="adam", optimizer__lr=3e-3, loss="l1_sum", grad_clip=0.5)


@pytest.fixture(scope="module")
def partner_alone():
    torch.set_num_threads(1)
    return fit(PARTNER)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_packed_trial_gives_its_own_metrics_for_every_optimizer(optimizer, partner_alone):
    """Own seed (weights, data order), lr, settings, d0, weight decay, schedule and clipping, beside a partner."""
    info = OPTIMIZERS[optimizer]
    flat = {"seed": 3, "optimizer.name": optimizer, "optimizer.lr": info.default_lr, "loss": "huber",
            "scheduler.name": "cosine", "scheduler.warmup_t": 1, "scheduler.warmup_lr_init": info.default_lr / 10}
    if "weight_decay" in info.reads:
        flat["optimizer.weight_decay"] = 1e-3
    if "d0" in info.reads:
        flat["optimizer.d0"] = 1e-5
    config = tiny().with_flat(flat)
    alone = fit(config)
    packed, partner = fit_pack([config, PARTNER])
    assert_same_run(alone, packed)
    assert_same_run(partner_alone, partner)


def test_a_diverging_trial_leaves_the_pack_and_the_others_train_on(tmp_path):
    """Free-form L (a pack shares its structure): SGD at lr 1e3 diverges, Adam beside it trains."""
    good = PARTNER.with_flat({"model.form": "free"})
    bad = good.with_flat({"optimizer.name": "sgd", "optimizer.lr": 1e3, "seed": 1, "grad_clip": None, "loss": "mse"})
    alone, good_alone = fit(bad), fit(good)
    assert alone.status == "diverged" and alone.diverged_epoch < TINY["epochs"], "the test needs a trial that diverges early"
    packed, partner = fit_pack([bad, good], out_dirs=[tmp_path / "bad", tmp_path / "good"])
    assert_same_run(alone, packed)
    assert_same_run(good_alone, partner)
    assert (tmp_path / "bad" / "diverged.json").exists() and (tmp_path / "good" / "metrics.json").exists()


class Stop(Exception):
    pass


def test_a_trial_whose_report_raises_leaves_the_pack_alone(partner_alone):
    """Pruning or a timeout raised by one trial's report: that trial's outcome is the exception."""
    seen = []

    def prune(epoch, value):
        seen.append(epoch)
        if epoch == 2:
            raise Stop("pruned")

    other = PARTNER.with_flat({"seed": 11, "optimizer.name": "lion", "optimizer.lr": 1e-3})
    other_alone = fit(other)
    stopped, partner, third = fit_pack([PARTNER.with_flat({"seed": 5}), PARTNER, other], reports=[prune, None, None])
    assert isinstance(stopped, Stop) and seen == [1, 2]
    assert_same_run(partner_alone, partner)
    assert_same_run(other_alone, third)


def test_a_trial_that_joins_where_another_left_gives_its_own_metrics(partner_alone, tmp_path):
    """Refill: trial 0 is pruned after epoch 1; trial 2 joins there, a second joiner of another
    structure is turned away, and every trial gives what it gives alone, heard as it leaves."""
    def prune(epoch, value):
        if epoch == 1:
            raise Stop("pruned")

    joiner = PARTNER.with_flat({"seed": 13, "optimizer.name": "adamw", "optimizer.lr": 2e-3, "loss": "mse", "scheduler.name": "cosine",
                                "scheduler.warmup_t": 1, "scheduler.warmup_lr_init": 2e-4})  # its schedule counts its own updates
    joiner_alone = fit(joiner)
    asks, heard = [], []

    def refill(free):
        asks.append(free)
        if len(asks) > 1:
            return []
        return [Joiner(joiner, out_dir=tmp_path / "joiner"), Joiner(PARTNER.with_flat({"model.hidden": 16}))]

    outcomes = fit_pack([PARTNER.with_flat({"seed": 5}), PARTNER], reports=[prune, None], refill=refill,
                        finished=lambda k, outcome: heard.append(k))
    pruned, partner, joined, turned_away = outcomes
    assert isinstance(pruned, Stop) and isinstance(turned_away, ConfigError)
    assert asks[0] == 1 and heard[:2] == [0, 3] and sorted(heard) == [0, 1, 2, 3]
    assert_same_run(partner_alone, partner)
    assert_same_run(joiner_alone, joined)
    assert (tmp_path / "joiner" / "metrics.json").exists()


def test_keyboard_interrupt_stops_the_whole_pack():
    def interrupt(epoch, value):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_pack([PARTNER, PARTNER.with_flat({"seed": 1})], reports=[None, interrupt])


def test_only_trials_of_one_structure_pack():
    assert pack_key(PARTNER) == pack_key(tiny(seed=9, optimizer__name="prodigy", loss="mse", scheduler__name="step"))
    assert pack_key(PARTNER) != pack_key(PARTNER.with_flat({"model.hidden": 16}))
    assert pack_key(PARTNER.with_flat({"batch_size": 16})) != pack_key(PARTNER)
    with pytest.raises(ConfigError, match=r"configs\[1\]"):
        fit_pack([PARTNER, PARTNER.with_flat({"model.hidden": 16})])


@pytest.mark.parametrize("form", ["free", "structured"])
@pytest.mark.parametrize("kind", ["dlnn", "lnn", "mlp"])
def test_the_packed_model_is_each_model_on_its_rows(form, kind):
    system = get_system("damped_double_pendulum")
    cfg = TrainConfig().with_flat({"model.form": form, "model.kind": kind, "model.hidden": 8, "model.activation": "softplus"}).model
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(cfg, system).double())
    q, v = torch.randn(3 * 5, 2, dtype=torch.float64), torch.randn(3 * 5, 2, dtype=torch.float64)
    packed = packed_model(models)(q, v)
    for k, model in enumerate(models):
        torch.testing.assert_close(packed[5 * k : 5 * (k + 1)], model(q[5 * k : 5 * (k + 1)], v[5 * k : 5 * (k + 1)]), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- sync-free D-Adaptation / Prodigy


def _problem(seed: int):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randn(40, 2, dtype=torch.float64)
    return net, x, y


SYNC_FREE = {"dadaptadam": DAdaptAdam, "prodigy": Prodigy}


def test_the_registry_names_the_sync_free_forms():
    assert {name for name, info in OPTIMIZERS.items() if info.sync_free} == set(SYNC_FREE)
    for name, cls in SYNC_FREE.items():
        assert OPTIMIZERS[name].optimizer_class(sync_free=True) is cls


@pytest.mark.parametrize("kwargs", [{}, {"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decouple": True},
                                    {"weight_decay": 1e-2, "decouple": False}, {"use_bias_correction": True, "growth_rate": 1.05}])
@pytest.mark.parametrize("name", sorted(SYNC_FREE))
def test_sync_free_form_matches_the_package_step_for_step(name, kwargs):
    if name == "dadaptadam" and "decouple" not in kwargs and "weight_decay" in kwargs:
        kwargs = {**kwargs, "decouple": False}
    nets, x, y = [], None, None
    for _ in range(2):
        net, x, y = _problem(0)
        nets.append(net)
    package = OPTIMIZERS[name].optimizer_class()(nets[0].parameters(), lr=0.5, d0=1e-4, **kwargs)
    ours = SYNC_FREE[name](nets[1].parameters(), lr=0.5, d0=1e-4, **kwargs)
    for step in range(25):
        for net, opt in zip(nets, (package, ours)):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + math.cos(step / 10))  # as a schedule moves it
        assert float(ours.param_groups[0]["d"]) == pytest.approx(package.param_groups[0]["d"], rel=1e-9), step
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert package.param_groups[0]["d"] > 1e-4, "d never adapted: the test would not see a wrong d"


@pytest.mark.parametrize("name", sorted(SYNC_FREE))
def test_sync_free_step_reads_nothing_back(name, monkeypatch):
    """A step that read a value back would call item, __float__, __bool__ or tolist on a tensor: the
    package does (so this test can fail), the sync-free form does not."""
    for sync_free, should_read in ((False, True), (True, False)):
        net, x, y = _problem(1)
        opt = build_optimizer(list(net.parameters()), TrainConfig().with_flat({"optimizer.name": name}).optimizer, sync_free=sync_free)
        reads = []
        for _ in range(3):
            opt.zero_grad()
            ((net(x) - y) ** 2).mean().backward()
            with monkeypatch.context() as patch:
                for method in ("item", "__float__", "__bool__", "tolist", "__int__"):
                    original = getattr(torch.Tensor, method)
                    patch.setattr(torch.Tensor, method, lambda self, *a, _m=method, _o=original: (reads.append(_m), _o(self, *a))[1])
                opt.step()
        assert bool(reads) == should_read, (sync_free, reads[:5])
