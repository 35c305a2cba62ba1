"""One rule per field (dlnn_core/fields.py, gathered in config.FIELD_RULES): the configs are built
with it, the spec checks a searched value with it alone, and both say the same thing; numbers are
read one way for every field (YAML's "1e-3" strings included)."""

from __future__ import annotations

import pytest

from dlnn_core import ConfigError
from dlnn_core.config import FIELD_RULES, TrainConfig, check_setting, load_config
from dlnn_studies.spec.schema import SpecError, parse_spec
from dlnn_studies.spec.space_tables import ALONE

SAMPLES = [-1, 0, 0.5, 1, 2, 2.0, 3.5, 1e-3, 10**9, "1e-3", "fast", True, None, [1], float("nan")]


@pytest.mark.parametrize("key", sorted(ALONE))
def test_a_value_checked_alone_is_judged_as_a_whole_config_judges_it(key):
    base = TrainConfig()
    for value in SAMPLES:
        alone = check_setting(key, value)
        try:
            whole = base.with_flat({key: value}).to_flat()[key]
            assert alone is None, (key, value, str(alone))
            assert FIELD_RULES[key].read(value) == whole  # the same value as read
        except ConfigError as exc:
            assert alone is not None and str(alone) == str(exc), (key, value, str(exc))


def test_yaml_numbers_are_read_alike_for_every_field(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optimizer:\n  lr: 1e-3\ndata:\n  noise: 1e-2\n  duration: 4e0\nmodel:\n  mass_eps: 1e-4\n")
    cfg = load_config(path)
    assert (cfg.optimizer.lr, cfg.data.noise, cfg.data.duration, cfg.model.mass_eps) == (1e-3, 1e-2, 4.0, 1e-4)
    path.write_text("data:\n  noise: loud\n")
    with pytest.raises(ConfigError, match="data.noise: 'loud' is not allowed; expected a non-negative standard deviation"):
        load_config(path)


def test_the_spec_checks_searched_bounds_by_the_field_rule():
    raw = {"study": {"name": "s"}, "budget": {"trials": 2}, "space": {
        "optimizer": {"momentum": {"low": 0.5, "high": 1.5}}, "model": {"hidden": {"choices": [16, 0, 10**6]}}}}
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert info.value.messages == [
        "space.optimizer.momentum.high: 1.5 is not allowed; expected a finite number >= 0 and < 1",
        "space.model.hidden.choices[1]: 0 is not allowed; expected a positive integer",
        "space.model.hidden.choices[2]: 1000000 is not allowed; expected at most 65,536 "
        "(width of each hidden layer: wider ones do not fit a GPU's memory)",
    ]


def test_a_number_written_as_a_string_is_read_by_one_rule():
    from dlnn_core.fields import as_number

    assert [as_number(t) for t in ("1e-3", "1e4", "2.5", "-3", "+.5", " 7 ", "1e30")] == [1e-3, 10000, 2.5, -3, 0.5, 7, 10**30]
    assert all(type(as_number(t)) is int for t in ("1e4", "2.0", "1e30"))
    assert [as_number(t) for t in ("nan", "inf", "fast", "1_0", "", None, True, [1])] == ["nan", "inf", "fast", "1_0", "", None, True, [1]]


def _numeric_settings():
    """Every numeric field with a number to write for it: the default config's own value."""
    from dlnn_core.fields import Integer, Number

    base = TrainConfig().to_flat()
    return sorted((k, base[k]) for k, rule in FIELD_RULES.items() if isinstance(rule, (Number, Integer))
                  and isinstance(base.get(k), (int, float)) and not isinstance(base.get(k), bool))


@pytest.mark.parametrize("key, value", _numeric_settings())
def test_set_and_a_yaml_config_read_every_number_alike(key, value, tmp_path):
    """`--set KEY=VALUE` and a YAML config coerce a number written as a string ("64e0", "0.001e0": YAML
    1.1 leaves both strings) by the same rule, to the value the number itself gives, for every field."""
    from dlnn_studies.cli.train import load_train_config

    text = repr(value) if "e" in repr(value) else f"{value!r}e0"  # "1e-06" as it is
    *section, leaf = key.split(".")
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{'  ' * i}{s}:\n" for i, s in enumerate(section)) + f"{'  ' * len(section)}{leaf}: {text}\n")
    from_yaml = load_config(path).to_flat()[key]
    from_set = load_train_config(str(path), [f"{key}={text}"]).to_flat()[key]
    expected = TrainConfig().with_flat({key: value}).to_flat()[key]
    assert from_yaml == from_set == expected and type(from_yaml) is type(from_set) is type(expected)


def test_set_reads_numbers_as_a_yaml_config_does(tmp_path):
    from dlnn_studies.cli.train import load_train_config, parse_overrides

    path = tmp_path / "config.yaml"
    path.write_text("epochs: 1e1\ndata:\n  noise: 1e-2\n  params:\n    rho: 2e-1\noptimizer:\n  name: adam\n  lr: 3e-3\n"
                    "  betas: [9e-1, 0.999]\n")
    from_yaml = load_config(path)
    overrides = ["epochs=1e1", "data.noise=1e-2", "data.params.rho=2e-1", "optimizer.name=adam", "optimizer.lr=3e-3",
                 "optimizer.betas=[9e-1, 0.999]"]
    from_set = load_train_config("published_dlnn", overrides)
    for cfg in (from_yaml, from_set):
        assert (cfg.epochs, cfg.data.noise, cfg.data.params["rho"], cfg.optimizer.lr, cfg.optimizer.betas) == (10, 1e-2, 0.2, 3e-3, (0.9, 0.999))
        assert type(cfg.epochs) is int
    assert parse_overrides(["epochs=1e1"]) == {"epochs": "1e1"}  # YAML's reading; the field's rule makes it a number
    with pytest.raises(Exception, match="epochs: '2.5e0' is not allowed; expected an integer >= 1"):
        load_train_config("published_dlnn", ["epochs=2.5e0"])
    with pytest.raises(Exception, match="data.noise: 'loud' is not allowed"):
        load_train_config("published_dlnn", ["data.noise=loud"])
