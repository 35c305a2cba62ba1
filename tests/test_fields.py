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
    assert info.value.problems == [
        "space.optimizer.momentum.high: 1.5 is not allowed; expected a finite number >= 0 and < 1",
        "space.model.hidden.choices[1]: 0 is not allowed; expected a positive integer",
        "space.model.hidden.choices[2]: 1000000 is not allowed; expected at most 65,536 "
        "(width of each hidden layer: wider ones do not fit a GPU's memory)",
    ]
