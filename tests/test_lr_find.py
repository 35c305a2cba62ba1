"""The learning-rate range test: its suggestion trains, it stops on divergence, it runs for every
optimizer, and `dlnn lr-find` prints the range and writes the plot."""

import argparse
import math

import pytest
import torch

from dlnn_core.config import TrainConfig, save_config
from dlnn_core.errors import ConfigError
from dlnn_core.lr_find import default_bounds, lr_find, suggest
from dlnn_core.optim import OPTIMIZERS
from dlnn_core.train import fit

TINY = {
    "data.system": "damped_oscillator", "data.n_train": 512, "data.n_val": 256, "data.n_test": 256,
    "data.n_rollout": 2, "data.rollout_steps": 10,
    "model.form": "structured", "model.hidden": 32, "model.activation": "swish",
    "batch_size": 64, "epochs": 5, "device": "cpu",
}
PNG = b"\x89PNG\r\n\x1a\n"


def tiny(**flat) -> TrainConfig:
    return TrainConfig().with_flat({**TINY, **flat})


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_suggested_range_contains_a_learning_rate_that_trains(optimizer, tmp_path):
    cfg = tiny(**{"optimizer.name": optimizer})
    result = lr_find(cfg, plot_path=tmp_path / "lr.png")
    low, high = result.suggested
    assert low < result.suggested_lr <= high < result.min_loss_lr * 1.0001
    assert (tmp_path / "lr.png").read_bytes().startswith(PNG) and result.plot == str(tmp_path / "lr.png")
    trained = fit(cfg.with_flat({"optimizer.lr": result.suggested_lr}))
    assert trained.status == "ok"
    assert trained.metrics["val_rel_mse"] < 0.3 * trained.history[0]["val_rel_mse"]


def test_stops_on_divergence_without_crashing(tmp_path):
    cfg = tiny(**{"optimizer.name": "sgd", "model.form": "free"})
    result = lr_find(cfg, start_lr=1e-4, end_lr=1e4, steps=200, plot_path=tmp_path / "lr.png")
    assert result.stopped_early and len(result.lrs) < 200
    assert "at lr" in result.reason
    assert all(math.isfinite(x) for x in result.losses + result.raw_losses)
    assert (tmp_path / "lr.png").exists()


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_runs_for_every_optimizer(optimizer):
    """A short scan over each optimizer's default bounds (the multiplier for D-Adaptation)."""
    result = lr_find(tiny(**{"optimizer.name": optimizer}), steps=30)
    low, high = default_bounds(optimizer)
    assert result.optimizer == optimizer and result.lrs[0] == pytest.approx(low)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))
    if not result.stopped_early:
        assert len(result.lrs) == 30 and result.lrs[-1] == pytest.approx(high)
    if result.suggested:
        assert result.suggested[0] < result.suggested[1]


def test_suggest_on_known_curves():
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]  # 1e-6 .. 1
    # flat until 1e-4, falls (fastest at 1e-3), bottoms out near 2.7e-2, then climbs
    curve = [1.0 / (1 + (lr / 1e-3) ** 2) + 0.01 + (lr / 0.1) ** 4 * 0.2 for lr in lrs]
    (low, high), steep, at_min, note = suggest(lrs, curve)
    assert note == ""
    assert 0.02 < at_min < 0.04 and high == pytest.approx(at_min / 10)
    assert 2e-4 < low < 5e-4  # the loss has fallen by 10 % of its drop
    assert low <= steep <= high and steep == pytest.approx(1e-3, rel=0.1)
    assert suggest(lrs, [1.0] * 100)[0] is None
    assert "start_lr is too high" in suggest(lrs, [1.0 + i for i in range(100)])[3]


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="start_lr < end_lr"):
        lr_find(tiny(), start_lr=1.0, end_lr=1e-3)
    with pytest.raises(ConfigError, match="steps"):
        lr_find(tiny(), steps=3)


def test_lr_find_command_prints_the_range_and_writes_the_plot(tmp_path, capsys):
    from dlnn_studies.cli.train import COMMANDS

    configure, run = COMMANDS["lr-find"]
    parser = argparse.ArgumentParser(prog="dlnn lr-find")
    configure(parser)
    path = save_config(tiny(), tmp_path / "tiny.yaml")
    args = parser.parse_args([str(path), "--out", str(tmp_path / "scan.png"), "--steps", "100", "--set", "optimizer.name=adamw"])
    assert run(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "optimizer: adamw" in out and "suggested learning rate range:" in out and "plot:" in out
    assert "lr-find" in captured.err and "loss=" in captured.err  # the progress bar, on stderr
    assert (tmp_path / "scan.png").read_bytes().startswith(PNG)


def test_the_range_test_takes_fits_step_rollout_loss_included(tmp_path):
    """lr_find and fit share one training step (train.TrainStep): with rollout_horizon > 0 the scan's
    loss includes the rollout term fit trains on, so on the same first batch and initial model it is
    the q̈ loss plus a positive rollout loss."""
    flat = {"data.kind": "trajectories", "data.n_train": 8, "data.duration": 2.0, "data.rate_hz": 20.0, "batch_size": 32}
    plain = lr_find(tiny(**flat), steps=10, cache_dir=tmp_path)
    rolled = lr_find(tiny(**flat, rollout_horizon=3, rollout_weight=10.0), steps=10, cache_dir=tmp_path)
    assert rolled.raw_losses[0] > plain.raw_losses[0] > 0
