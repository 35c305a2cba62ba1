"""Bad inputs refused at launch with one message naming the field, trials that cannot outlive
the study, files that stay where the user said, and full disks that say so (issue 14)."""

from __future__ import annotations

import time
import tomllib

import optuna
import pytest
from optuna.trial import TrialState
from service_support import fake_fit, pg_url, storage_url, tiny_spec, write_spec  # noqa: F401 (fixtures)

from dlnn_core import ConfigError
from dlnn_core.config import LIMITS, PRESETS, TrainConfig
from workers import cli
from workers.service import launch
from workers.spec import SpecError, load_spec, parse_spec
from workers.storage import normalize_url
from workers.worker import run_worker


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(tomllib.loads(text))
    return info.value.problems


def _work(url, name, tmp_path, fit, **kw):
    logs: list[str] = []
    kw.setdefault("timeout", 180)
    assert run_worker(url, name, fit_fn=fit, install_signals=False, artifacts=tmp_path / "artifacts", log=logs.append, **kw) == 0
    return logs


def _trials(url, name):
    return optuna.load_study(study_name=name, storage=normalize_url(url)).get_trials(deepcopy=False)


# ----------------------------------------------------------------------------- 3. launch-time bounds


def test_every_numeric_setting_has_a_documented_limit():
    """LIMITS is the one table: every numeric setting has a bound or an explicit None with its
    reason, and the integer flag matches the setting's type."""
    for cfg in (TrainConfig(), *PRESETS.values()):
        flat = cfg.to_flat()
        numeric = {k for k, v in flat.items() if not isinstance(v, (str, bool))}
        assert numeric <= set(LIMITS), numeric - set(LIMITS)
        for key, value in flat.items():
            if isinstance(value, int) and not isinstance(value, bool):
                assert LIMITS[key].integer, key
    assert set(LIMITS) <= set(TrainConfig().to_flat())
    for key, limit in LIMITS.items():
        assert len(limit.why) > 20 and not limit.why.startswith("as "), key
        if limit.high is not None:
            assert limit.high >= (TrainConfig().to_flat()[key] or 0), key  # the defaults are within bounds


@pytest.mark.parametrize("key, value", [("model.hidden", 10**9), ("model.depth", 65), ("data.n_train", 10**12),
                                        ("epochs", 10**12), ("data.n_rollout", 10**6), ("seed", 2**40)])
def test_settings_above_their_bound_are_refused(key, value):
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_flat({key: value, "batch_size": 1})
    assert info.value.field == key and "at most" in str(info.value)


def test_batch_larger_than_the_training_set_is_an_error_not_a_clamp():
    with pytest.raises(ConfigError, match=r"batch_size: 512 is not allowed; expected at most the 256 training samples"):
        TrainConfig().with_flat({"data.n_train": 256, "batch_size": 512})
    assert TrainConfig().with_flat({"data.n_train": 256, "batch_size": 256}).batch_size == 256
    # trajectories: the training set is n_train trajectories × their samples
    traj = {"data.kind": "trajectories", "data.n_train": 2, "data.duration": 1.0, "data.rate_hz": 10.0}
    assert TrainConfig().with_flat({**traj, "batch_size": 22}).train_samples == 22
    with pytest.raises(ConfigError, match="batch_size: 23"):
        TrainConfig().with_flat({**traj, "batch_size": 23})


def test_integer_settings_refuse_float_bounds_and_steps():
    space = "[space.model.hidden]\nlow = 16\nhigh = 64\nstep = 16.0\n[space.model.depth]\nlow = 1.5\nhigh = 3\n"
    problems = _problems(tiny_spec(space=space))
    assert "space.model.hidden.step: 16.0 must be an integer (model.hidden takes whole numbers; write 16)" in problems
    assert "space.model.depth.low: 1.5 must be an integer (model.depth takes whole numbers)" in problems
    assert len(problems) == 2


def test_space_extremes_and_base_are_checked_against_the_limits():
    space = ("[space.model.hidden]\nlow = 16\nhigh = 1_000_000_000\n[space.epochs]\nchoices = [10, 1_000_000_000_000]\n"
             "[space.data.n_train]\nvalue = 1_000_000_000_000\n")
    problems = _problems(tiny_spec(space=space))
    assert any(p.startswith("space.model.hidden.high: 1000000000 is not allowed; expected at most 65,536") for p in problems)
    assert any(p.startswith("space.epochs.choices[1]: 1000000000000 is not allowed; expected at most 1,000,000") for p in problems)
    assert any(p.startswith("space.data.n_train.value: 1000000000000 is not allowed") for p in problems)
    problems = _problems(tiny_spec().replace("epochs = 2", "epochs = 1_000_000_000_000"))
    assert any(p.startswith("base.epochs: 1000000000000 is not allowed; expected at most 1,000,000") for p in problems)


def test_batch_size_against_the_training_set_at_launch(tmp_path, capsys):
    # base alone: the tiny base trains on 256 states
    problems = _problems(tiny_spec().replace("batch_size = 128", "batch_size = 512"))
    assert any(p.startswith("base.batch_size: 512 is not allowed; expected at most the 256 training samples") for p in problems)
    # the largest searched batch against the smallest searched training set
    space = "[space.batch_size]\nchoices = [64, 512]\n[space.data.n_train]\nlow = 128\nhigh = 1024\n"
    problems = _problems(tiny_spec(space=space))
    assert problems == ["space.batch_size: the largest batch_size (512) does not fit the smallest data.n_train (128): "
                        "512 is not allowed; expected at most the 128 training samples (data.n_train = 128)"]
    # every combination fits: no false alarm although 512 > the base's 256
    ok = "[space.batch_size]\nchoices = [64, 512]\n[space.data.n_train]\nlow = 512\nhigh = 1024\n"
    assert parse_spec(tomllib.loads(tiny_spec(space=ok))).trials == 6
    path = write_spec(tmp_path, tiny_spec(space=space))
    assert cli.main(["launch", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 1
    assert "does not fit the smallest data.n_train" in capsys.readouterr().err and not (tmp_path / "x.db").exists()


def test_a_trial_stops_within_an_epoch_of_the_study_timeout(storage_url, tmp_path):
    """Without the check a 2000-epoch trial of 10 ms epochs runs 20 s past a 1 s study timeout."""
    text = tiny_spec(trials=5, epochs=2000).replace("trials = 5", "trials = 5\ntimeout_s = 1.0")
    launch(load_spec(write_spec(tmp_path, text)), storage_url, log=lambda m: None)
    start = time.monotonic()
    _work(storage_url, "tiny", tmp_path, fake_fit(epochs_delay=0.01))
    assert time.monotonic() - start < 10
    trials = _trials(storage_url, "tiny")
    assert len(trials) == 1
    t = trials[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "timeout"
    assert t.user_attrs["reason"].startswith("study timeout reached at epoch ")
    epoch = int(t.user_attrs["reason"].split("epoch ")[1].split()[0])
    assert 10 <= epoch < 2000 and max(t.intermediate_values) == epoch  # its learning curve is kept
    assert (t.datetime_complete - t.datetime_start).total_seconds() < 1.0 + 2.0
