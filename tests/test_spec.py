"""Study specs: the shipped studies parse, bad specs report every problem with its TOML path and
create nothing in storage, and the compiled search space draws conditional parameters right."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from service_support import REPO, pg_tables, pg_url, tiny_spec, write_spec  # noqa: F401 (pg_url is a fixture)

from dlnn_studies.cli import main as cli
from dlnn_studies.spec.samplers import PRUNERS, SAMPLERS, build_pruner, build_sampler
from dlnn_studies.spec.space import grid_space, suggest
from dlnn_studies.spec.schema import SpecError, load_spec, parse_spec

STUDIES = sorted((REPO / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_studies_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert path.read_text().lstrip().startswith("#"), "every shipped study opens with a comment block"
    assert spec.trials >= len(spec.baselines)


def test_shipped_studies_cover_the_required_searches():
    names = {p.stem for p in STUDIES}
    assert {"quick", "damped_pendulum", "damped_double_pendulum", "optimizer_shootout"} <= names
    for name in ("damped_pendulum", "damped_double_pendulum"):
        spec = load_spec(REPO / "studies" / f"{name}.toml")
        keys = {p.key for p in spec.space}
        assert {"optimizer.name", "optimizer.lr", "optimizer.d0", "optimizer.weight_decay", "scheduler.name",
                "scheduler.warmup_t", "model.hidden", "model.depth", "model.activation", "loss", "batch_size"} <= keys
        assert "published_dlnn" in {b.name for b in spec.baselines}
        published = next(b for b in spec.baselines if b.name == "published_dlnn")
        assert published.config.optimizer.name == "dadaptadam" and published.config.model.hidden == 512


BAD = """
[study]
name = "bad"
[budget]
trials = 5
[sampler]
name = "tpe"
[pruner]
name = "median"
[base.model]
form = "structured"
[space.optimizer]
choices = ["adam", "sgd", "adamm"]
[space.optimizer.lr]
low = 1e-2
high = 1e-4
log = true
[space.optimizer.d0]
low = 1e-8
high = 1e-4
log = true
[space.model.activation]
choices = ["swish", "relu"]
[space.model.depth]
choices = []
[space.loss]
choices = ["mse", "l2"]
"""


def test_bad_spec_reports_every_problem_with_its_path():
    with pytest.raises(SpecError) as info:
        parse_spec(__import__("tomllib").loads(BAD))
    problems = info.value.messages
    text = "\n".join(problems)
    assert 'space.optimizer.choices[2]: unknown optimizer "adamm"; known: ' in text and "dadaptadam" in text
    assert any(p.startswith("space.optimizer.lr: low must be < high") for p in problems)
    assert any(p.startswith("space.optimizer.d0: d0 only applies to D-Adaptation") for p in problems)
    assert any(p.startswith("space.model.activation.choices[1]:") and "second derivative" in p for p in problems)
    assert any(p.startswith("space.model.depth.choices: must be a non-empty list") for p in problems)
    assert any(p.startswith('space.loss.choices[1]: unknown loss "l2"') for p in problems)
    assert len(problems) == 6


def test_more_bad_specs(tmp_path):
    def problems(text: str) -> list[str]:
        with pytest.raises(SpecError) as info:
            parse_spec(__import__("tomllib").loads(text))
        return info.value.messages

    p = problems(tiny_spec(trials=0, sampler='name = "tpe"\nn_startup = 2', pruner='name = "medain"')
                 + '[space.model.width]\nlow = 1\nhigh = 2\n[objective]\nmetric = "val_mse"\n')
    assert any(x.startswith("budget.trials:") for x in p)
    assert any(x.startswith("sampler.n_startup: unknown option") for x in p)
    assert any(x.startswith('pruner.name: unknown pruner "medain"') for x in p)
    assert any(x.startswith("space.model.width: not a training setting") for x in p)
    assert any(x.startswith("objective.metric: unknown metric 'val_mse'") for x in p)
    # base errors are all reported, not just the first one TrainConfig meets
    p = problems(tiny_spec() + '[base.scheduler]\nname = "cosinus"\n[base.optimizer]\nweight_decay = -1.0\n')
    assert any(x.startswith("base.scheduler.name:") for x in p) and any(x.startswith("base.optimizer.weight_decay:") for x in p)
    # a grid needs explicit values; a Pareto study cannot be pruned; log needs low > 0
    p = problems(tiny_spec(sampler='name = "grid"', pruner='name = "median"') + '[objective]\nmetrics = ["val_rel_mse", "wall_time_s"]\n'
                 + "[space.optimizer.weight_decay]\nlow = 0.0\nhigh = 1e-3\nlog = true\n")
    assert any("grid sampler needs explicit values" in x for x in p)
    assert any(x.startswith('pruner.name: "median" cannot prune') for x in p)
    assert any(x.startswith("space.optimizer.weight_decay: a log scale needs low > 0") for x in p)
    # a baseline outside the space
    p = problems(tiny_spec() + '[[baseline]]\nname = "big"\nparams = { "model.hidden" = 512 }\n')
    assert any(x.startswith("baseline[0]: model.hidden = 512 lies outside space.model.hidden") for x in p)
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, "[study\nname="))
    assert info.value.messages[0].startswith("malformed TOML")


def test_every_bad_base_value_is_listed_once(tmp_path):
    """[base] with bad values in three sections and at the top level: one SpecError lists each once
    (a string where a number belongs too), and the space is still checked against the good part of
    base (its system's parameter k)."""
    text = (tiny_spec(epochs=0).replace('system = "damped_oscillator"', 'system = "damped_oscillator"\nnoise = "loud"')
            .replace('form = "structured"', 'form = "structured"\ndepth = 0')
            + "[base.optimizer]\nlearning_rate = 0.1\nmomentum = 1.5\n[space.data.params.k]\nlow = 0.5\nhigh = 2.0\n")
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text))
    assert info.value.messages == [
        "base.data.noise: 'loud' is not allowed; expected a non-negative standard deviation",
        "base.model.depth: 0 is not allowed; expected a positive integer",
        "base.optimizer.learning_rate: 0.1 is not allowed; expected a field of OptimizerConfig: name, lr, weight_decay, momentum, betas, eps, d0",
        "base.optimizer.momentum: 1.5 is not allowed; expected a finite number >= 0 and < 1",
        "base.epochs: 0 is not allowed; expected an integer >= 1",
    ]
    assert "5 problems in the study spec" in str(info.value)


def test_conditional_values_are_checked_with_an_optimizer_that_reads_them():
    """only_for = ["sgd", "adan"] for three betas: they are checked for adan, the first that reads
    betas (optim.reads), not for sgd, which reads none and is the one problem."""
    space = '[space.optimizer]\nchoices = ["sgd", "adan"]\n[space.optimizer.betas]\nvalue = [0.9, 0.92, 0.99]\nonly_for = ["sgd", "adan"]\n'
    with pytest.raises(SpecError) as info:
        parse_spec(__import__("tomllib").loads(tiny_spec(space=space)))
    assert len(info.value.messages) == 1 and info.value.messages[0].startswith('space.optimizer.betas.only_for: betas means nothing for "sgd"')


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bad_spec_creates_nothing_in_storage(backend, tmp_path, capsys, request):
    path = write_spec(tmp_path, BAD)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    assert cli.main(["launch", str(path), "--storage", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dlnn launch: error: ") and "6 problems" in err and "Traceback" not in err
    assert 'space.optimizer.choices[2]: unknown optimizer "adamm"' in err
    if backend == "sqlite":
        assert not (tmp_path / "dlnn.db").exists()
    else:
        assert pg_tables(url) == []


def test_debug_shows_the_traceback(tmp_path):
    path = write_spec(tmp_path, BAD)
    with pytest.raises(SpecError):
        cli.main(["launch", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--debug"])


def _draw(spec, n: int = 60, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    base_flat = spec.base.to_flat()
    draws = []
    for _ in range(n):
        trial = study.ask()
        flat = suggest(trial, spec.space, base_flat)
        spec.base.with_flat(flat)  # every draw is a valid TrainConfig
        draws.append((flat, dict(trial.params)))
        study.tell(trial, 0.0)
    return draws


def test_conditional_parameters_are_drawn_only_where_they_mean_something():
    spec = parse_spec(__import__("tomllib").loads(tiny_spec(space="""
[space.optimizer]
choices = ["adam", "lion", "dadaptadam"]
[space.optimizer.lr]
per_optimizer = true
ranges = { lion = [1e-6, 1e-5] }
[space.optimizer.d0]
low = 1e-8
high = 1e-4
log = true
[space.optimizer.weight_decay]
value = 1e-5
[space.scheduler]
choices = ["none", "cosine"]
[space.scheduler.warmup_t]
low = 0
high = 3
[space.batch_size]
choices = [64, 128]
""")))
    draws = _draw(spec)
    seen = set()
    for flat, params in draws:
        opt = flat["optimizer.name"]
        seen.add(opt)
        assert ("optimizer.d0" in params) == (opt == "dadaptadam")
        assert set(k for k in params if k.startswith("optimizer.lr")) == {"optimizer.lr_position"}
        if opt == "lion":
            assert 1e-6 <= flat["optimizer.lr"] <= 1e-5
        assert ("scheduler.warmup_t" in params) == (flat["scheduler.name"] == "cosine")
        assert flat["optimizer.weight_decay"] == 1e-5 and "optimizer.weight_decay" not in params
    assert seen == {"adam", "lion", "dadaptadam"}


def test_optimizer_settings_are_drawn_only_for_optimizers_that_read_them():
    """momentum and eps follow the registry's `reads` as d0 does: lion reads neither, sgd-momentum no eps."""
    space = """
[space.optimizer]
choices = ["adam", "lion", "momentum"]
[space.optimizer.eps]
low = 1e-10
high = 1e-6
log = true
[space.optimizer.momentum]
low = 0.5
high = 0.95
"""
    spec = parse_spec(__import__("tomllib").loads(tiny_spec(space=space)))
    seen = set()
    for flat, params in _draw(spec):
        opt = flat["optimizer.name"]
        seen.add(opt)
        assert ("optimizer.eps" in params) == (opt == "adam")
        assert ("optimizer.momentum" in params) == (opt == "momentum")
    assert seen == {"adam", "lion", "momentum"}
    with pytest.raises(SpecError) as info:
        parse_spec(__import__("tomllib").loads(tiny_spec(space=space.replace("log = true", 'log = true\nonly_for = ["lion"]'))))
    assert any('eps means nothing for "lion"' in p and "optimizers that read eps" in p for p in info.value.messages)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_builds_and_samples(name):
    if name == "cmaes":
        pytest.importorskip("cmaes", reason="Optuna's CMA-ES sampler needs the cmaes package")
    sampler = 'name = "grid"' if name == "grid" else f'name = "{name}"'
    space = '[space.optimizer.lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\ngrid = [1e-4, 1e-3, 1e-2]\n[space.model.hidden]\nchoices = [16, 32]\n'
    spec = parse_spec(__import__("tomllib").loads(tiny_spec(sampler=sampler, space=space)))
    s = build_sampler(spec.sampler, spec.sampler_options, seed=1, grid=grid_space(spec.space))
    study = optuna.create_study(sampler=s)
    for _ in range(4):
        trial = study.ask()
        flat = suggest(trial, spec.space, spec.base.to_flat())
        study.tell(trial, flat["optimizer.lr"])
    assert len(study.trials) == 4


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_pruner_builds(name):
    extra = "\npercentile = 50.0" if name == "percentile" else ""
    spec = parse_spec(__import__("tomllib").loads(tiny_spec(pruner=f'name = "{name}"{extra}')))
    pruner = build_pruner(spec.pruner, spec.pruner_options, spec.base.epochs)
    assert isinstance(pruner, optuna.pruners.BasePruner)


def test_median_pruner_waits_for_enough_peers():
    spec = parse_spec(__import__("tomllib").loads(tiny_spec(pruner='name = "median"\nn_min_trials = 4\nn_startup_trials = 0')))
    assert spec.pruner_options["n_min_trials"] == 4
    study = optuna.create_study(pruner=build_pruner(spec.pruner, spec.pruner_options, 3))
    for value in (1.0, 1.0):
        t = study.ask()
        t.report(value, 1)
        study.tell(t, value)
    bad = study.ask()
    bad.report(100.0, 1)
    assert not bad.should_prune()  # only 2 peers at step 1: not judged yet


def test_spec_path_in_message(tmp_path):
    path = write_spec(tmp_path, "[study]\nname = 'x'\n[budget]\ntrials = 'many'\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and "budget.trials" in str(info.value)


def test_missing_spec_file(tmp_path, capsys):
    assert cli.main(["launch", str(Path(tmp_path) / "nope.toml"), "--storage", f"sqlite:///{tmp_path}/d.db"]) == 1
    assert "cannot read the spec" in capsys.readouterr().err


def test_spec_problems_are_structured_not_text():
    """A SpecError's problems are Problem objects (TOML path, value, allowed) from the field check to
    the message: a caller reads them without cutting the text, and the line still names all three."""
    from dlnn_core.errors import Problem

    raw = {"study": {"name": "s"}, "budget": {"trials": 2}, "sampler": {"name": "tpe", "n_startup_trials": -1},
           "space": {"optimizer": {"choices": ["adam", "adamm"], "momentum": {"low": 0.5, "high": 1.5}}}}
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    problems = info.value.problems
    assert all(isinstance(p, Problem) for p in problems)
    by_field = {p.field: p for p in problems}
    unknown = by_field["space.optimizer.choices[1]"]
    assert unknown.value == "adamm" and "adam" in unknown.allowed.split(", ") and "sgd" in unknown.allowed.split(", ")
    bound = by_field["space.optimizer.momentum.high"]
    assert (bound.value, bound.allowed) == (1.5, "a finite number >= 0 and < 1")
    option = by_field["sampler.n_startup_trials"]
    assert (option.value, option.allowed) == (-1, ">= 0")
    assert str(option) == "sampler.n_startup_trials: -1 must be >= 0"
    assert info.value.messages == [str(p) for p in problems] and all(f"  - {p}" in str(info.value) for p in problems)
