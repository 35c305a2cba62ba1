"""A study's definition is compiled once, at launch, and stored as data (spec/definition.py): every
reader loads that record, a registry edit after launch never changes a launched study, a study
stored before definitions existed still loads, and a record of another format is refused by name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
from service_support import fake_fit, tiny_spec, write_spec

from dlnn_core.optim import OPTIMIZERS
from dlnn_studies.errors import UsageError
from dlnn_studies.spec import definition
from dlnn_studies.spec.schema import StudySpec, load_spec
from dlnn_studies.store.storage import close_storage, open_storage
from dlnn_studies.study import records
from dlnn_studies.study.launch import launch
from dlnn_studies.study.service import DEFINITION_ATTR, SPEC_ATTR, stored_spec
from dlnn_studies.study.worker import run_worker

REPO = Path(__file__).resolve().parents[1]


def _stored(url: str, name: str = "tiny") -> StudySpec:
    storage = open_storage(url)
    try:
        return stored_spec(storage, name)
    finally:
        close_storage(storage)


def test_the_record_stores_every_field_of_the_spec():
    stored = {"base", "space", "baselines", "raw", *definition._PLAIN}
    assert {f.name for f in dataclasses.fields(StudySpec)} == stored


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.toml")) + [REPO / "examples" / "coulomb_pendulum" / "study.toml"],
                         ids=lambda p: p.stem)
def test_every_shipped_spec_round_trips_through_its_record(path):
    spec = load_spec(path)
    record = json.loads(json.dumps(definition.to_record(spec)))  # as the storage keeps it
    assert record["format"] == definition.FORMAT
    assert definition.from_record(record, spec.raw, str(path)) == spec


def test_a_registry_edit_after_launch_does_not_change_the_launched_study(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    path = write_spec(tmp_path, tiny_spec(trials=6, sampler='name = "random"'))
    launch(load_spec(path), url, log=lambda m: None)
    launched = OPTIMIZERS["adam"].lr_range
    edited = (0.5, 1.0)
    monkeypatch.setitem(OPTIMIZERS, "adam", dataclasses.replace(OPTIMIZERS["adam"], lr_range=edited))
    assert load_spec(path).space[1].per_choice["adam"] == edited  # compiling the spec now would take the edit
    lr = next(p for p in _stored(url).space if p.key == "optimizer.lr")
    assert lr.per_choice == {"adam": launched, "rmsprop": OPTIMIZERS["rmsprop"].lr_range}
    assert run_worker(url, "tiny", fit_fn=fake_fit(), seed=1, install_signals=False, artifacts=None, log=lambda m: None) == 0
    adam = [records.trial_config(t)["optimizer"]["lr"] for t in optuna.load_study(study_name="tiny", storage=url).trials
            if t.params["optimizer.name"] == "adam"]
    assert adam and all(launched[0] <= lr <= launched[1] for lr in adam), adam


def test_a_study_stored_before_definitions_loads_and_another_format_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    spec = load_spec(write_spec(tmp_path, tiny_spec()))
    old = optuna.create_study(study_name="tiny", storage=url)
    old.set_user_attr(SPEC_ATTR, spec.raw)  # what launch stored before this format existed
    assert _stored(url) == spec
    old.set_user_attr(DEFINITION_ATTR, {**definition.to_record(spec), "format": 99})
    with pytest.raises(UsageError, match=r"stored spec of study 'tiny': the stored study definition has format 99; this dlnn reads format 1"):
        _stored(url)
    old.set_user_attr(DEFINITION_ATTR, {**definition.to_record(spec), "base": {"optimizer": {"name": "adamm"}}})
    with pytest.raises(UsageError, match=r"stored base config no longer loads with this dlnn: optimizer.name: 'adamm'"):
        _stored(url)


def test_launch_stores_the_definition_and_update_replaces_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=4))), url, log=lambda m: None)
    assert _stored(url).trials == 4
    launch(load_spec(write_spec(tmp_path, tiny_spec(trials=5))), url, log=lambda m: None, update=True)
    attrs = optuna.load_study(study_name="tiny", storage=url).user_attrs
    assert attrs[DEFINITION_ATTR]["trials"] == 5 == _stored(url).trials
