"""fit end to end on tiny problems: every optimizer, scheduler, loss and activation trains;
divergence, pruning, checkpoints, reproducibility and the `dlnn train` command."""

import argparse
import json
import math

import pytest
import torch

from dlnn_core.activations import ACTIVATIONS, ZERO_CURVATURE
from dlnn_core.config import PRESETS, TrainConfig, load_config, save_config
from dlnn_core.losses import LOSSES
from dlnn_core.models import build_model
from dlnn_core.optim import OPTIMIZERS, SCHEDULERS
from dlnn_core.train import evaluate_checkpoint, fit, load_checkpoint

# A small structured DLNN on the damped oscillator: about a second per run on 2 CPU cores.
TINY = {
    "data.system": "damped_oscillator", "data.n_train": 512, "data.n_val": 256, "data.n_test": 256,
    "data.n_rollout": 2, "data.rollout_steps": 10,
    "model.form": "structured", "model.hidden": 32, "model.activation": "swish",
    "batch_size": 32, "epochs": 6, "device": "cpu",
}
TRAINED = 0.7  # "lowers the validation loss": best validation error below 70 % of the untrained model's


def tiny(**flat) -> TrainConfig:
    return TrainConfig().with_flat({**TINY, **{k.replace("__", "."): v for k, v in flat.items()}})


def assert_trains(result):
    assert result.status == "ok", result.reason
    initial = result.history[0]["val_rel_mse"]
    assert result.metrics["val_rel_mse"] < TRAINED * initial, [h["val_rel_mse"] for h in result.history]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- registries train


@pytest.mark.parametrize("scheduler", ["none", "cosine"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_lowers_validation_loss(optimizer, scheduler):
    """Each optimizer at its registry default lr (the D-Adaptation multiplier for those), with
    and without the timm cosine schedule (warm-up, one restart)."""
    flat = {"optimizer.name": optimizer, "scheduler.name": scheduler}
    if scheduler == "cosine":
        flat.update({"scheduler.warmup_t": 1, "scheduler.warmup_lr_init": OPTIMIZERS[optimizer].default_lr / 10, "scheduler.cycle_limit": 2})
    assert_trains(fit(tiny().with_flat(flat)))


@pytest.mark.parametrize("optimizer", ["adam", "dadaptadam"])
@pytest.mark.parametrize("scheduler", sorted(set(SCHEDULERS) - {"none", "cosine"}) + ["cosine-epoch"])
def test_every_scheduler_trains(scheduler, optimizer):
    flat = {"optimizer.name": optimizer, "scheduler.name": scheduler, "scheduler.step_size": 2}
    if scheduler == "cosine-epoch":
        flat.update({"scheduler.name": "cosine", "scheduler.interval": "epoch", "scheduler.warmup_t": 1,
                     "scheduler.warmup_lr_init": OPTIMIZERS[optimizer].default_lr / 10})
    result = fit(tiny().with_flat(flat))
    assert_trains(result)
    lrs = [h["lr"] for h in result.history[1:]]
    assert len(set(lrs)) > 1 or scheduler == "plateau", "the schedule never moved the lr"


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains(loss):
    assert_trains(fit(tiny(loss=loss)))


@pytest.mark.parametrize("activation", sorted(set(ACTIVATIONS) - ZERO_CURVATURE))
def test_every_activation_trains(activation):
    assert_trains(fit(tiny(model__activation=activation)))


def test_l1_sum_is_l1_mean_times_batch_size():
    """Same model and batch: the sum form's loss and gradients are B·n times the mean form's."""
    cfg = tiny()
    system = cfg.data.make_system()
    torch.manual_seed(0)
    model = build_model(cfg.model, system)
    q, v, a = torch.randn(64, 1), torch.randn(64, 1), torch.randn(64, 1)
    grads = {}
    for name in ("l1_sum", "l1_mean"):
        model.zero_grad()
        loss = LOSSES[name](model(q, v), a)
        loss.backward()
        grads[name] = (loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    factor = q.shape[0] * q.shape[1]
    torch.testing.assert_close(grads["l1_sum"][0], factor * grads["l1_mean"][0])
    torch.testing.assert_close(grads["l1_sum"][1], factor * grads["l1_mean"][1])


# ----------------------------------------------------------------------------- divergence, report


@pytest.mark.parametrize("optimizer, lr", [("sgd", 1e3), ("dadaptadam", 1e6)])
def test_divergence_is_a_result_not_a_crash(optimizer, lr, tmp_path):
    result = fit(tiny(optimizer__name=optimizer, optimizer__lr=lr, model__form="free"), out_dir=tmp_path)
    assert result.status == "diverged"
    assert isinstance(result.diverged_epoch, int) and 1 <= result.diverged_epoch <= 6
    assert result.reason
    assert result.checkpoint is None
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "metrics.json").exists()
    note = json.loads((tmp_path / "diverged.json").read_text())
    assert note["status"] == "diverged" and note["diverged_epoch"] == result.diverged_epoch


def test_report_sees_every_epoch_and_can_stop_the_run(tmp_path):
    seen = []
    result = fit(tiny(epochs=3), report=lambda epoch, value: seen.append((epoch, value)))
    assert seen == [(h["epoch"], h["val_rel_mse"]) for h in result.history[1:]]
    assert [e for e, _ in seen] == [1, 2, 3]

    class Prune(Exception):
        pass

    calls = []

    def prune(epoch, value):
        calls.append(epoch)
        raise Prune

    with pytest.raises(Prune):
        fit(tiny(epochs=3), report=prune, out_dir=tmp_path)
    assert calls == [1]
    assert list(tmp_path.iterdir()) == []


def test_best_validation_weights_are_kept():
    result = fit(tiny(optimizer__name="sgd", optimizer__lr=0.3))
    vals = [h["val_rel_mse"] for h in result.history[1:]]
    assert result.best_epoch == 1 + vals.index(min(vals))
    assert result.metrics["val_rel_mse"] == pytest.approx(min(vals), rel=1e-5)


# ----------------------------------------------------------------------------- files, reproducibility


def test_checkpoint_reloads_to_the_same_metrics(tmp_path):
    cfg = tiny(epochs=3)
    result = fit(cfg, out_dir=tmp_path)
    assert result.status == "ok" and result.checkpoint == str(tmp_path / "model.pt")
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["status"] == "ok"
    assert {"torch", "python", "dadaptation", "timm"} <= set(summary["versions"])
    assert summary["device"].startswith("cpu") and summary["wall_time_s"] > 0
    for key in ("val_rel_mse", "val_rel_mse_median", "test_rel_mse", "ood_rel_mse", "rollout_error", "energy_error", "wall_time_s", "epochs"):
        assert math.isfinite(summary["metrics"][key]), key
    assert load_config(tmp_path / "config.json") == cfg

    model, loaded, payload = load_checkpoint(tmp_path / "model.pt")
    assert loaded == cfg and payload["config"] == cfg.to_dict()
    again = evaluate_checkpoint(tmp_path / "model.pt")
    for key, value in again.items():
        assert value == pytest.approx(result.metrics[key], rel=1e-6, abs=1e-12), key


def test_same_seed_same_metrics_and_config_file_trains_the_same(tmp_path):
    cfg = tiny(epochs=3, optimizer__name="dadaptadam", scheduler__name="cosine", scheduler__warmup_t=1)
    first, second = fit(cfg), fit(cfg)
    path = save_config(cfg, tmp_path / "exported.yaml")
    from_file = fit(load_config(path))
    drop = {"wall_time_s"}
    same = lambda r: {k: v for k, v in r.metrics.items() if k not in drop}  # noqa: E731
    assert same(first) == same(second) == same(from_file)
    assert [h["val_rel_mse"] for h in first.history] == [h["val_rel_mse"] for h in from_file.history]
    other = fit(cfg.with_flat({"seed": 1}))
    assert same(other) != same(first)


@pytest.mark.slow
def test_published_preset_trains_end_to_end(tmp_path):
    """The published recipe (free-form shared-trunk DLNN, width 512, DAdaptAdam + timm cosine with
    warm-up and restarts) runs to a checkpoint on the small problem without crashing."""
    small = {k: v for k, v in TINY.items() if k.startswith("data.") or k == "device"}
    cfg = PRESETS["published_dlnn"].with_flat(small | {"epochs": 6, "batch_size": 128, "scheduler.warmup_t": 1})
    assert cfg.model.hidden == 512 and cfg.optimizer.name == "dadaptadam" and cfg.scheduler.name == "cosine"
    result = fit(cfg, out_dir=tmp_path)
    if result.status == "ok":
        assert (tmp_path / "model.pt").exists() and math.isfinite(result.metrics["val_rel_mse"])
    else:  # D-Adaptation's runs do blow up on free-form models; that must be a clean result
        assert result.diverged_epoch is not None and not (tmp_path / "model.pt").exists()
    assert result.history[-1]["d"] > cfg.optimizer.d0  # D-Adaptation moved its estimate


# ----------------------------------------------------------------------------- dlnn train


def _run(command, argv):
    from dlnn_studies.cli.train import COMMANDS

    configure, run = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"dlnn {command}")
    configure(parser)
    return run(parser.parse_args(argv))


def test_train_command_writes_a_run_and_prints_metrics(tmp_path, capsys):
    path = save_config(tiny(epochs=2), tmp_path / "tiny.json")
    assert _run("train", [str(path), "--out", str(tmp_path / "run"), "--set", "model.hidden=16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "status: ok" in out and "val_rel_mse" in out and "checkpoint:" in out
    assert load_config(tmp_path / "run" / "config.json").model.hidden == 16
    assert (tmp_path / "run" / "model.pt").exists()


def test_train_command_sets_the_torch_threads(tmp_path, capsys):
    """`--threads N` sets torch's CPU threads for the run; without it, DEFAULT_THREADS (from
    benchmarks/results/train_threads.md)."""
    from dlnn_studies.cli.train import DEFAULT_THREADS

    path = save_config(tiny(epochs=1), tmp_path / "tiny.json")
    torch.set_num_threads(3)
    assert _run("train", [str(path), "--out", str(tmp_path / "default"), "--no-progress"]) == 0
    assert f"device: cpu ({DEFAULT_THREADS} threads)" in capsys.readouterr().out
    assert _run("train", [str(path), "--out", str(tmp_path / "two"), "--threads", "2", "--no-progress"]) == 0
    assert "device: cpu (2 threads)" in capsys.readouterr().out and torch.get_num_threads() == 2


def test_train_command_shows_the_evaluation_on_its_progress_bar(tmp_path, capsys):
    path = save_config(tiny(epochs=1), tmp_path / "tiny.json")
    assert _run("train", [str(path), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "train" in err and "evaluate rollout" in err and "10/10" in err and "evaluate dissipation" in err


def test_fit_relays_the_evaluation_progress():
    records = []
    fit(tiny(epochs=1), progress=records.append)
    evaluation = [r for r in records if r.get("phase") == "evaluate"]
    assert records[0]["epoch"] == 1 and evaluation and records[1:] == evaluation
    assert {"stage": "rollout", "done": 10, "total": 10} in [{k: r[k] for k in ("stage", "done", "total")} for r in evaluation]


def test_train_command_reports_divergence_with_exit_2(tmp_path, capsys):
    path = save_config(tiny(epochs=2, optimizer__name="sgd", optimizer__lr=1e3, model__form="free"), tmp_path / "bad.yaml")
    assert _run("train", [str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "diverged at epoch" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["missing.yaml"], "neither a file nor a preset"),
    (["published_dlnn", "--set", "optimizer.lr=-1"], "optimizer.lr"),
    (["published_dlnn", "--set", "optimizer.nme=adam"], "optimizer.nme"),
    (["published_dlnn", "--set", "lr"], "KEY=VALUE"),
])
def test_train_command_usage_errors(argv, message, tmp_path, monkeypatch):
    from dlnn_studies.errors import UsageError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message):
        _run("train", argv)
