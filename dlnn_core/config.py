"""`TrainConfig`: everything one training run depends on, frozen and serializable.

It nests the data and model configs with the optimizer, scheduler and loop settings, validates
every value when it is built (one `ConfigError` names every bad field at once, each with its
value and what is allowed), and round-trips through nested dicts, JSON/YAML files and flat
dotted dicts such as `{"optimizer.lr": 1e-3, "model.hidden": 64}` (the shape of a trial's parameters).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from .data import DataConfig, samples_per_trajectory
from .device import parse_device
from .dotted import flatten, lookup
from .errors import ConfigError, collect, raise_all
from .fields import LIMITS, Integer, Limit, Number, OneOf, Rule, check_fields, check_value, check_limit  # noqa: F401  (LIMITS, Limit: read from here too)
from .losses import LOSSES
from .model_config import DEFAULT_METHOD, METHODS, ModelConfig
from .optim import OptimizerConfig, SchedulerConfig  # noqa: F401  (configs live beside their registries)

DTYPES = ("float32", "float64")
INTEGRATORS = ("rk4", "midpoint", "euler", "trapezoid")  # the rollout loss's integrators (rollout.STEPS; trapezoid: rollout.trapezoid_loss)


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class TrainConfig:
    """One training run: data, model, optimizer, schedule, loss and loop settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: str = "mse"
    batch_size: int = 256
    epochs: int = 50
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    rollout_horizon: int = 0  # k > 0 adds a k-step loss (rollout_integrator) on windows of the training trajectories (data.kind = trajectories)
    rollout_weight: float = 1.0  # weight of that rollout loss against the q̈ loss
    rollout_batch: int = 0  # windows per step for the rollout loss; 0: one per minibatch sample
    rollout_integrator: str = "rk4"  # how the rollout loss integrates (INTEGRATORS): rk4, midpoint, euler, or trapezoid (no rollout)
    shooting_iters: int = 0  # k > 0: after the epochs, k L-BFGS iterations of multiple shooting on the training trajectories (shooting.py)
    shooting_segment: int = 16  # steps per shooting segment (an RK4 rollout from its own fitted initial state)
    shooting_check: int = 0  # k > 0: the shooting fit keeps the weights with the best val_valid_steps, read every k evaluations; 0: its last
    method: str = DEFAULT_METHOD  # how second derivatives are taken (dlnn_core.lagrangian.METHODS)
    dtype: str = "float32"
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:K
    seed: int = 0  # model initialization and minibatch order
    data_seed: int = 0  # dataset draw; kept apart so trials with different seeds share one cached dataset

    def __post_init__(self) -> None:
        """Check every setting and raise one ConfigError naming all the bad ones."""
        errors: list[ConfigError] = []
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                errors.append(ConfigError(name, getattr(self, name), f"a {cls.__name__}"))
        _check_settings(errors, self)
        _check_together(errors, self)
        raise_all(errors)

    @property
    def train_samples(self) -> int:
        """Training samples per epoch: n_train states, or n_train trajectories × their samples
        (file data: the samples of the training trajectories the data seed picks; reads the file)."""
        if self.data.file:
            from .file_dataset import check_data, split_indices

            tf = check_data(self.data)
            return sum(tf.lengths[i] for i in split_indices(tf, self.data, self.data_seed)["train"])
        return _generated_samples(self.data)

    # -- dict round trips -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (lists, not tuples), ready for JSON/YAML."""
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a nested dict; missing keys take their defaults. A top-level `preset: NAME`
        starts from that preset and applies the rest of the dict on top of it. Every section is
        built even when another one fails, so one ConfigError names every problem."""
        if not isinstance(d, Mapping):
            raise ConfigError("config", d, "a mapping of settings")
        errors: list[ConfigError] = []
        d = _known(errors, _with_preset(errors, dict(d)), cls, "")
        sections = {name: _section(errors, name, sub_cls, d.get(name, {})) for name, sub_cls in _SECTIONS.items()}
        top = {k: v for k, v in d.items() if k not in _SECTIONS}
        if any(section is None for section in sections.values()):
            _check_without_sections(errors, cls, sections, top)
        else:
            try:
                config = cls(**sections, **top)
            except ConfigError as exc:
                errors.append(exc)
        raise_all(errors)
        return config

    def to_flat(self) -> dict[str, Any]:
        """{"optimizer.lr": …, "data.params.rho": …, "batch_size": …}: leaves of the nested dict."""
        return flatten(self.to_dict())

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "TrainConfig":
        return cls().with_flat(flat)

    def with_flat(self, overrides: Mapping[str, Any]) -> "TrainConfig":
        """A copy with dotted keys replaced, e.g. {"optimizer.lr": 1e-3, "model.hidden": 64}.
        Keys must name an existing setting, or a key inside a dict-valued one (data.params.rho)."""
        tree = self.to_dict()
        errors: list[ConfigError] = []
        for key, value in overrides.items():
            *path, leaf = str(key).split(".")
            node = lookup(tree, ".".join(path), None)
            known_leaf = isinstance(node, dict) and (leaf in node or ".".join(path) in _DICT_FIELDS)
            if not known_leaf or isinstance(node.get(leaf), dict) and not isinstance(value, Mapping):
                errors.append(ConfigError(str(key), value, f"a known setting: {', '.join(sorted(self.to_flat()))}"))
                continue
            node[leaf] = _plain(value)
        try:  # the known keys are still checked, so one error names every problem
            config = type(self).from_dict(tree)
        except ConfigError as exc:
            errors.append(exc)
        raise_all(errors)
        return config


# ----------------------------------------------------------------------------- TrainConfig checks

# TrainConfig's own settings (device: parse_device, the one device parser).
TRAIN_RULES: dict[str, Rule] = {
    "loss": OneOf(LOSSES),
    "batch_size": Integer(),
    "epochs": Integer(),
    "grad_clip": Number(low=0, low_open=True, optional=True),
    "rollout_horizon": Integer(low=0),
    "rollout_weight": Number(low=0),
    "rollout_batch": Integer(low=0),
    "rollout_integrator": OneOf(INTEGRATORS),
    "shooting_iters": Integer(low=0),
    "shooting_segment": Integer(low=1),
    "shooting_check": Integer(low=0),
    "method": OneOf(METHODS),
    "dtype": OneOf(DTYPES),
    "seed": Integer(low=0),
    "data_seed": Integer(low=0),
}


def _check_settings(errors: list[ConfigError], cfg: Any) -> None:
    """TrainConfig's own settings, each on its own, then the LIMITS bound of every good one (`cfg`:
    a TrainConfig being built, or a stand-in with its attributes while a section failed)."""
    check_fields(errors, cfg, "", TRAIN_RULES)
    collect(errors, parse_device, cfg.device)
    check_limits(errors, cfg)


def _check_together(errors: list[ConfigError], cfg: Any) -> None:
    """The checks that combine settings: the rollout loss against the data, the batch against the
    training set. Each runs only when the settings it reads are good (no problem in `errors`)."""
    if not isinstance(cfg.data, DataConfig):
        return
    bad = _bad_settings(errors)
    horizon = cfg.rollout_horizon if "rollout_horizon" not in bad else 0
    if horizon and cfg.data.kind != "trajectories":
        errors.append(ConfigError("rollout_horizon", horizon, "0 unless data.kind = 'trajectories' (a rollout loss needs observed trajectories)"))
        horizon = 0
    shooting = cfg.shooting_iters if not {"shooting_iters", "shooting_segment"} & bad else 0
    if shooting and cfg.data.kind != "trajectories":
        errors.append(ConfigError("shooting_iters", shooting, "0 unless data.kind = 'trajectories' (shooting fits observed trajectories)"))
        shooting = 0
    if cfg.data.file:  # the sizes come from the file: checked where it is read (datafiles.check_train_config)
        if horizon:
            errors.append(ConfigError("rollout_horizon", horizon, "0 when data.file is set (no rollout loss on file trajectories yet)"))
        if shooting:
            errors.append(ConfigError("shooting_iters", shooting, "0 when data.file is set (no shooting on file trajectories yet)"))
        return
    if any(key.startswith("data.") for key in bad):  # a size above its limit: too large to count samples with
        return
    samples, n_train = _generated_samples(cfg.data), cfg.data.n_train
    if "batch_size" not in bad and cfg.batch_size > samples:
        errors.append(ConfigError("batch_size", cfg.batch_size, f"at most the {samples} training samples (data.n_train = {n_train}"
                                  + (f" trajectories of {samples // n_train} samples)" if cfg.data.kind == "trajectories" else ")")))
    if horizon and horizon >= samples // n_train:
        errors.append(ConfigError("rollout_horizon", horizon, f"an integer in [1, {samples // n_train - 1}] (samples per trajectory − 1)"))
    if shooting and cfg.shooting_segment >= samples // n_train:
        errors.append(ConfigError("shooting_segment", cfg.shooting_segment, f"an integer in [1, {samples // n_train - 1}] (samples per trajectory − 1)"))


def _check_without_sections(errors: list[ConfigError], cls: type, sections: Mapping[str, Any], top: Mapping[str, Any]) -> None:
    """The checks of `cls(**sections, **top)` that can run while a section could not be built (None):
    the top-level settings, and the combined checks whose sections are there."""
    from types import SimpleNamespace

    defaults = {f.name: f.default for f in fields(cls) if f.name not in _SECTIONS}
    settings = SimpleNamespace(**{**defaults, **top, **sections})
    _check_settings(errors, settings)
    _check_together(errors, settings)


def _bad_settings(errors: list[ConfigError]) -> set[str]:
    """The dotted names of the settings `errors` refuse."""
    return {p.field for error in errors for p in error.problems}


def _generated_samples(data: DataConfig) -> int:
    """Training samples per epoch of generated data: n_train states, or n_train trajectories × their samples."""
    per = samples_per_trajectory(data) if data.kind == "trajectories" else 1
    return data.n_train * per


# ----------------------------------------------------------------------------- limits


def check_limits(errors: list[ConfigError], cfg: Any) -> None:
    """Refuse a setting above its LIMITS bound, naming the bound and why it is there. Settings that
    `errors` already refuses, and those of a section that is not built, are left alone."""
    bad = _bad_settings(errors)
    for key, limit in LIMITS.items():
        section = key.split(".")[0]
        if limit.high is None or key in bad or (section in _SECTIONS and not isinstance(getattr(cfg, section), _SECTIONS[section])):
            continue
        check_limit(errors, key, lookup(cfg, key))


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optimizer": OptimizerConfig, "scheduler": SchedulerConfig}
# Every field rule by its dotted name: the one table the configs are built with and a spec's search
# values are checked against (check_setting).
FIELD_RULES: dict[str, Rule] = {**TRAIN_RULES, **{f"{section}.{name}": rule for section, cls in _SECTIONS.items()
                                                  for name, rule in cls.RULES.items()}}


def check_setting(key: str, value: Any) -> ConfigError | None:
    """The problem with `value` for the setting `key` on its own (its field rule, then its LIMITS
    bound), or None, without building a config. Settings checked together with others (the batch
    against the training set, the betas against the optimizer) need a whole config as well."""
    value, error = check_value(FIELD_RULES[key], key, value)
    if error is None:
        errors: list[ConfigError] = []
        check_limit(errors, key, value)
        error = errors[0] if errors else None
    return error
_DICT_FIELDS = {"data.params"}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_ATOMS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    """Dataclasses to dicts and tuples to lists, recursively, so dicts compare equal after a
    JSON/YAML round trip. One walk (dataclasses.asdict would deep-copy the tree first): a trial
    builds its config dict several times."""
    if type(value) in _ATOMS:
        return value
    names = _FIELD_NAMES.get(type(value))
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[type(value)] = tuple(f.name for f in fields(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


def _known(errors: list[ConfigError], d: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    """The keys of `d` that name a field of `cls`; each other key is a problem added to `errors`."""
    names = [f.name for f in fields(cls)]
    for key in d:
        if key not in names:
            errors.append(ConfigError(f"{prefix}{key}", d[key], f"a field of {cls.__name__}: {', '.join(names)}"))
    return {k: v for k, v in d.items() if k in names}


def _with_preset(errors: list[ConfigError], d: dict) -> dict:
    """`d` on top of the preset its `preset` key names; an unknown name is a problem, and the rest is still read."""
    if "preset" not in d:
        return d
    name = d.pop("preset")
    if isinstance(name, str) and name in PRESETS:
        return _merge(PRESETS[name].to_dict(), d)
    errors.append(ConfigError("preset", name, sorted(PRESETS)))
    return d


def _section(errors: list[ConfigError], name: str, cls: type, value: Any) -> Any:
    """The section `name` built from its dict (or given built), or None when it cannot be, its
    problems added to `errors`; an unknown key is a problem too, but the known ones still build it."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        errors.append(ConfigError(name, value, "a mapping of settings"))
        return None
    try:
        return cls(**_known(errors, value, cls, name + "."))
    except ConfigError as exc:
        errors.append(exc)
        return None


# ----------------------------------------------------------------------------- files


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the full config as .json, .yaml or .yml (by suffix)."""
    path = Path(path)
    text = _dump(cfg.to_dict(), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_config(path: str | Path) -> TrainConfig:
    """Read a .json/.yaml/.yml config; it may hold only the settings that differ from the defaults."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError("config file", str(path), "a .json, .yaml or .yml file")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError("config file", str(path), f"a readable file ({exc.strerror})") from None
    if suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    return TrainConfig.from_dict(data)


def _dump(tree: dict, path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return json.dumps(tree, indent=2) + "\n"
    if suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_dump(tree, sort_keys=False)
    raise ConfigError("config file", str(path), "a .json, .yaml or .yml file")


# ----------------------------------------------------------------------------- presets

PRESETS: dict[str, TrainConfig] = {
    # Takemori & Kamakura 2023: one MLP with L and D outputs, width 512, swish, orthogonal init, DAdaptAdam
    # (lr 1.0, d0 1e-6, weight decay 1e-4), timm cosine with warm-up and 4 restarts, MSE on q̈.
    # Warm-up length, lr floor and epochs are not stated there; these values are ours.
    "published_dlnn": TrainConfig(
        model=ModelConfig(kind="dlnn", form="free", hidden=512, depth=2, activation="swish", shared_trunk=True, init="orthogonal"),
        optimizer=OptimizerConfig(name="dadaptadam", lr=1.0, d0=1e-6, weight_decay=1e-4),
        scheduler=SchedulerConfig(name="cosine", warmup_t=5, warmup_lr_init=1e-3, lr_min=1e-3, cycle_limit=5),
        loss="mse",
        batch_size=256,
        epochs=100,
    ),
    # What trains in practice (DOMAIN notes): structured L and D, Adam 1e-3, swish, width 128.
    "structured_adam": TrainConfig(
        model=ModelConfig(kind="dlnn", form="structured", hidden=128, depth=2, activation="swish"),
        optimizer=OptimizerConfig(name="adam", lr=1e-3),
        scheduler=SchedulerConfig(name="cosine", warmup_t=2, lr_min=1e-5),
        loss="mse",
        batch_size=256,
        epochs=60,
    ),
}
