"""TrainConfig: validation at construction, dict/flat/file round trips, presets."""

import dataclasses

import pytest

from dlnn_core.config import PRESETS, OptimizerConfig, SchedulerConfig, TrainConfig, load_config, save_config
from dlnn_core.errors import ConfigError
from dlnn_core.optim import OPTIMIZERS

CONFIGS = {"default": TrainConfig(), **PRESETS}
CUSTOM = TrainConfig().with_flat({
    "data.system": "damped_oscillator", "data.params.rho": 0.2, "optimizer.name": "adan",
    "optimizer.betas": [0.9, 0.9, 0.99], "scheduler.name": "cosine", "scheduler.t_initial": 7.5, "grad_clip": 1.0,
})
CONFIGS["custom"] = CUSTOM


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dict_round_trip(name):
    cfg = CONFIGS[name]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_to_dict_is_the_standard_librarys_tree_as_plain_json_types(name):
    """to_dict walks the dataclasses itself (for speed): the same tree as dataclasses.asdict, with
    lists for tuples, and nothing shared with the config (changing the dict leaves the config alone)."""
    import json

    cfg = CONFIGS[name]
    tree = cfg.to_dict()
    assert json.dumps(tree, sort_keys=True) == json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    assert all(type(v) is not tuple for v in _leaves(tree))
    tree["data"]["params"]["extra"] = 1.0
    tree["optimizer"]["name"] = "changed"
    assert "extra" not in cfg.to_dict()["data"]["params"] and cfg.optimizer.name != "changed"


def _leaves(tree):
    for value in tree.values() if isinstance(tree, dict) else tree:
        if isinstance(value, (dict, list)):
            yield value
            yield from _leaves(value)
        else:
            yield value


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flat_round_trip(name):
    cfg = CONFIGS[name]
    flat = cfg.to_flat()
    assert all("." in k or k in {f.name for f in dataclasses.fields(TrainConfig)} for k in flat)
    assert TrainConfig.from_flat(flat) == cfg
    assert TrainConfig().with_flat(flat) == cfg


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_file_round_trip(name, suffix, tmp_path):
    cfg = CONFIGS[name]
    path = save_config(cfg, tmp_path / f"config{suffix}")
    assert load_config(path) == cfg


def test_with_flat_sets_nested_values_and_keeps_the_rest():
    cfg = TrainConfig().with_flat({"optimizer.lr": 3e-4, "model.hidden": 64, "data.params.rho": 0.3, "batch_size": 32})
    assert (cfg.optimizer.lr, cfg.model.hidden, cfg.data.params, cfg.batch_size) == (3e-4, 64, {"rho": 0.3}, 32)
    assert cfg.optimizer.name == TrainConfig().optimizer.name and cfg.epochs == TrainConfig().epochs
    assert TrainConfig().with_flat({}) == TrainConfig()


def test_partial_files_and_yaml_number_strings(tmp_path):
    """A config file holds only what differs; YAML's "1e-3" (a string to PyYAML) is read as a number."""
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  name: adamw\n  lr: 1e-3\n  weight_decay: 1e-2\nepochs: 3\n")
    cfg = load_config(path)
    assert cfg.optimizer == OptimizerConfig(name="adamw", lr=1e-3, weight_decay=1e-2)
    assert cfg.epochs == 3 and cfg.model == TrainConfig().model


def test_preset_key_starts_from_a_preset():
    cfg = TrainConfig.from_dict({"preset": "published_dlnn", "epochs": 3, "model": {"hidden": 64}})
    base = PRESETS["published_dlnn"]
    assert cfg.epochs == 3 and cfg.model.hidden == 64 and cfg.model.activation == base.model.activation
    assert cfg.optimizer == base.optimizer and cfg.scheduler == base.scheduler


def test_published_preset_is_the_published_recipe():
    cfg = PRESETS["published_dlnn"]
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.d0, cfg.optimizer.weight_decay) == ("dadaptadam", 1.0, 1e-6, 1e-4)
    assert cfg.scheduler.name == "cosine" and cfg.scheduler.warmup_t > 0 and cfg.scheduler.cycle_limit == 5  # 4 restarts
    assert (cfg.model.activation, cfg.model.hidden, cfg.model.form, cfg.model.shared_trunk, cfg.model.init) == ("swish", 512, "free", True, "orthogonal")
    assert cfg.loss == "mse"


@pytest.mark.parametrize("key, value, field", [
    ("optimizer.name", "dadapt_adam", "optimizer.name"),  # timm's factory would silently build Adam
    ("optimizer.lr", -1e-3, "optimizer.lr"),
    ("optimizer.lr", "fast", "optimizer.lr"),
    ("optimizer.weight_decay", float("nan"), "optimizer.weight_decay"),
    ("optimizer.momentum", 1.0, "optimizer.momentum"),
    ("optimizer.d0", 0, "optimizer.d0"),
    ("optimizer.betas", [0.9], "optimizer.betas"),
    ("scheduler.name", "cosine_annealing", "scheduler.name"),
    ("scheduler.interval", "batch", "scheduler.interval"),
    ("scheduler.cycle_limit", 0, "scheduler.cycle_limit"),
    ("scheduler.gamma", 1.5, "scheduler.gamma"),
    ("scheduler.factor", 1.0, "scheduler.factor"),
    ("loss", "l2", "loss"),
    ("batch_size", 0, "batch_size"),
    ("batch_size", 2.5, "batch_size"),
    ("epochs", True, "epochs"),
    ("grad_clip", 0, "grad_clip"),
    ("method", "finite_difference", "method"),
    ("dtype", "float16", "dtype"),
    ("device", "gpu", "device"),
    ("seed", -1, "seed"),
    ("model.activation", "relu", "model.activation"),
    ("data.system", "pendulum", "data.system"),
])
def test_invalid_values_name_field_value_and_allowed(key, value, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_flat({key: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: {value!r} is not allowed; expected ")


def test_bad_values_in_several_sections_are_reported_at_once():
    """Every section is built even when another fails: one ConfigError names each bad field, once,
    one line each; a single problem still reads exactly as it always did."""
    bad = {"data": {"n_train": 0}, "model": {"hidden": -1}, "optimizer": {"lr": "fast"}, "epochs": 0}
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(bad)
    assert [p.field for p in info.value.problems] == ["data.n_train", "model.hidden", "optimizer.lr", "epochs"]
    assert str(info.value).splitlines() == [
        "data.n_train: 0 is not allowed; expected a positive integer",
        "model.hidden: -1 is not allowed; expected a positive integer",
        "optimizer.lr: 'fast' is not allowed; expected a finite number > 0 (or null)",
        "epochs: 0 is not allowed; expected an integer >= 1",
    ]
    assert (info.value.field, info.value.value) == ("data.n_train", 0)  # the first problem's
    with pytest.raises(ConfigError) as info:  # the flat path: unknown keys and bad values together
        TrainConfig().with_flat({"optimizer.learning_rate": 1e-3, "model.depth": 0, "scheduler.name": "cosinus"})
    assert [p.field for p in info.value.problems] == ["optimizer.learning_rate", "model.depth", "scheduler.name"]
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_flat({"model.depth": 0})
    assert len(info.value.problems) == 1 and str(info.value) == "model.depth: 0 is not allowed; expected a positive integer"


def test_checks_that_combine_settings_run_on_good_settings_only():
    # the batch is still checked against the training set beside an unrelated bad setting
    with pytest.raises(ConfigError) as info:
        TrainConfig().with_flat({"data.n_train": 64, "batch_size": 128, "dtype": "float16"})
    assert [p.field for p in info.value.problems] == ["dtype", "batch_size"]
    assert "at most the 64 training samples" in str(info.value)
    # a data section that cannot be built: the top-level settings and limits are checked, the batch is not counted against it
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"data": {"n_train": 0}, "batch_size": 10**9, "seed": -1})
    assert [p.field for p in info.value.problems] == ["data.n_train", "seed", "batch_size"]
    assert "batch_size: 1000000000 is not allowed; expected at most 100,000,000" in str(info.value)


def test_unknown_keys_fail_with_the_known_ones():
    with pytest.raises(ConfigError, match="optimizer.lr") as info:
        TrainConfig().with_flat({"optimizer.learning_rate": 1e-3})
    assert info.value.field == "optimizer.learning_rate"
    with pytest.raises(ConfigError, match="a field of OptimizerConfig"):
        TrainConfig.from_dict({"optimizer": {"learning_rate": 1e-3}})
    with pytest.raises(ConfigError, match="preset"):
        TrainConfig.from_dict({"preset": "nope"})


def test_file_suffix_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"\.json, \.yaml or \.yml"):
        save_config(TrainConfig(), tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="readable"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_betas_length_follows_the_optimizer(name):
    n = OPTIMIZERS[name].n_betas
    if n:
        assert OptimizerConfig(name=name, betas=[0.9] * n).betas == (0.9,) * n
    with pytest.raises(ConfigError, match="optimizer.betas"):
        OptimizerConfig(name=name, betas=[0.9] * (n + 1))
    with pytest.raises(ConfigError, match="optimizer.betas"):  # an empty list is not "no betas" either
        OptimizerConfig(name=name, betas=[])


def test_integral_floats_become_ints_and_configs_are_frozen():
    cfg = TrainConfig().with_flat({"batch_size": 64.0, "scheduler.step_size": 3.0})
    assert cfg.batch_size == 64 and isinstance(cfg.batch_size, int) and cfg.scheduler.step_size == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 1  # type: ignore[misc]
    assert SchedulerConfig(name="exponential").resolved_gamma() == 0.95


def test_dotted_paths_flatten_look_up_and_assign_one_way():
    """The one dotted-path helper: flatten (with tables kept whole), lookup (dicts and configs), assign."""
    from dlnn_core.dotted import assign, flatten, lookup

    tree = {"optimizer": {"lr": 1e-3, "betas": [0.9, 0.99]}, "data": {"params": {"rho": 0.25}}, "empty": {}}
    assert flatten(tree) == {"optimizer.lr": 1e-3, "optimizer.betas": [0.9, 0.99], "data.params.rho": 0.25, "empty": {}}
    assert flatten(tree, keep=("data.params",))["data.params"] == {"rho": 0.25}
    assert lookup(tree, "data.params.rho") == 0.25 and lookup(tree, "data.nope", None) is None
    with pytest.raises(KeyError):
        lookup(tree, "optimizer.nope")
    config = TrainConfig.from_dict({"optimizer": {"name": "adamw", "lr": 3e-4}})
    assert lookup(config, "optimizer.lr") == 3e-4 and lookup(config, "optimizer.nope", "x") == "x"
    built: dict = {}
    for key, value in flatten(tree).items():
        assign(built, key, value)
    assert built == tree
