"""`TrainConfig`: everything one training run depends on, frozen and serializable.

It nests the data and model configs with the optimizer, scheduler and loop settings, validates
every value when it is built (a `ConfigError` names the field, the value and what is allowed),
and round-trips through nested dicts, JSON/YAML files and flat dotted dicts such as
`{"optimizer.lr": 1e-3, "model.hidden": 64}` (the shape of a trial's parameters).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .data import DataConfig, samples_per_trajectory
from .device import parse_device
from .errors import ConfigError
from .losses import LOSSES
from .model_config import DEFAULT_METHOD, METHODS, ModelConfig
from .optim import DEFAULT_GAMMA, OPTIMIZERS, SCHEDULERS, reads

DTYPES = ("float32", "float64")
INTERVALS = ("step", "epoch")


# ----------------------------------------------------------------------------- field checks


def _number(owner: Any, name: str, prefix: str, *, low: float | None = None, low_open: bool = False,
            high: float | None = None, high_open: bool = False, optional: bool = False) -> None:
    """Coerce a numeric field to a finite float (YAML reads "1e-3" as a string) and check its bounds."""
    value = getattr(owner, name)
    if value is None and optional:
        return
    what = "a finite number"
    if low is not None:
        what += f" {'>' if low_open else '>='} {low}"
    if high is not None:
        what += f"{' and' if low is not None else ''} {'<' if high_open else '<='} {high}"
    if optional:
        what += " (or null)"
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}{name}", value, what) from None
    too_low = low is not None and (number < low or (low_open and number == low))
    too_high = high is not None and (number > high or (high_open and number == high))
    if not math.isfinite(number) or too_low or too_high:
        raise ConfigError(f"{prefix}{name}", value, what)
    object.__setattr__(owner, name, number)


def _integer(owner: Any, name: str, prefix: str, *, low: int = 1) -> None:
    """Integer fields accept ints and integral floats (2.0 from a float search space), nothing else."""
    value = getattr(owner, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{prefix}{name}", getattr(owner, name), f"an integer >= {low}")
    object.__setattr__(owner, name, value)


def _boolean(owner: Any, name: str, prefix: str) -> None:
    if not isinstance(getattr(owner, name), bool):
        raise ConfigError(f"{prefix}{name}", getattr(owner, name), "true or false")


def _one_of(owner: Any, name: str, prefix: str, allowed) -> None:
    if getattr(owner, name) not in allowed:
        raise ConfigError(f"{prefix}{name}", getattr(owner, name), sorted(allowed))


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer name and settings. `lr=None` takes the optimizer's default from the registry;
    for D-Adaptation and Prodigy `lr` is the multiplier of the adapted step (about 1.0)."""

    name: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.9  # momentum, nesterov, dadaptsgd
    betas: tuple[float, ...] | None = None  # None: the optimizer's own; 2 values (3 for adan)
    eps: float | None = None  # None: the optimizer's own
    d0: float = 1e-6  # D-Adaptation/Prodigy: initial estimate of the distance to the solution

    def __post_init__(self) -> None:
        p = "optimizer."
        _one_of(self, "name", p, OPTIMIZERS)
        _number(self, "lr", p, low=0, low_open=True, optional=True)
        _number(self, "weight_decay", p, low=0)
        _number(self, "momentum", p, low=0, high=1, high_open=True)
        _number(self, "eps", p, low=0, low_open=True, optional=True)
        _number(self, "d0", p, low=0, low_open=True)
        info = OPTIMIZERS[self.name]
        if self.betas is not None:
            betas = self.betas
            ok = reads(self.name, "betas") and isinstance(betas, (list, tuple)) and len(betas) == info.n_betas and all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
            if not ok:
                allowed = f"{info.n_betas} numbers in [0, 1) for {self.name}" if reads(self.name, "betas") else f"null ({self.name} has no betas)"
                raise ConfigError(p + "betas", betas, allowed)
            object.__setattr__(self, "betas", tuple(float(b) for b in betas))

    @property
    def info(self):
        return OPTIMIZERS[self.name]


@dataclass(frozen=True)
class SchedulerConfig:
    """Learning-rate schedule. Durations (warmup_t, t_initial, step_size) are in epochs; for
    `cosine`, interval="step" moves the lr every update, "epoch" once per epoch."""

    name: str = "none"
    interval: str = "step"  # cosine: step the timm scheduler per update or per epoch
    warmup_t: float = 0.0  # cosine: warm-up length, epochs
    warmup_lr_init: float = 0.0  # cosine: lr (multiplier for D-Adaptation) at the start of warm-up
    warmup_prefix: bool = False  # cosine: cycles start after the warm-up instead of including it
    lr_min: float = 0.0  # cosine: floor of each cycle and value after the last one
    t_initial: float | None = None  # cosine: cycle length in epochs; None: epochs / cycle_limit
    cycle_limit: int = 1  # cosine: number of cycles (restarts = cycle_limit − 1)
    cycle_decay: float = 1.0  # cosine: each restart's peak is the previous one × cycle_decay
    step_size: int = 10  # step: epochs between decays
    gamma: float | None = None  # step/exponential: decay factor; None: 0.5 (step), 0.95 (exponential)
    patience: int = 5  # plateau: epochs without improvement before a decay
    factor: float = 0.5  # plateau: decay factor

    def __post_init__(self) -> None:
        p = "scheduler."
        _one_of(self, "name", p, SCHEDULERS)
        _one_of(self, "interval", p, INTERVALS)
        _number(self, "warmup_t", p, low=0)
        _number(self, "warmup_lr_init", p, low=0)
        _boolean(self, "warmup_prefix", p)
        _number(self, "lr_min", p, low=0)
        _number(self, "t_initial", p, low=0, low_open=True, optional=True)
        _integer(self, "cycle_limit", p)
        _number(self, "cycle_decay", p, low=0, low_open=True)
        _integer(self, "step_size", p)
        _number(self, "gamma", p, low=0, low_open=True, high=1, optional=True)
        _integer(self, "patience", p, low=0)
        _number(self, "factor", p, low=0, low_open=True, high=1, high_open=True)

    def resolved_gamma(self) -> float:
        return self.gamma if self.gamma is not None else DEFAULT_GAMMA.get(self.name, 0.5)


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
    rollout_horizon: int = 0  # k > 0 adds a k-step RK4 rollout loss on training trajectories (data.kind = trajectories)
    rollout_weight: float = 1.0  # weight of that rollout loss against the q̈ loss
    method: str = DEFAULT_METHOD  # how second derivatives are taken (dlnn_core.lagrangian.METHODS)
    dtype: str = "float32"
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:K
    seed: int = 0  # model initialization and minibatch order
    data_seed: int = 0  # dataset draw; kept apart so trials with different seeds share one cached dataset

    def __post_init__(self) -> None:
        for name, cls in (("data", DataConfig), ("model", ModelConfig), ("optimizer", OptimizerConfig), ("scheduler", SchedulerConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(name, getattr(self, name), f"a {cls.__name__}")
        _one_of(self, "loss", "", LOSSES)
        _integer(self, "batch_size", "")
        _integer(self, "epochs", "")
        _number(self, "grad_clip", "", low=0, low_open=True, optional=True)
        _integer(self, "rollout_horizon", "", low=0)
        _number(self, "rollout_weight", "", low=0)
        if self.rollout_horizon and self.data.kind != "trajectories":
            raise ConfigError("rollout_horizon", self.rollout_horizon, "0 unless data.kind = 'trajectories' (a rollout loss needs observed trajectories)")
        _one_of(self, "method", "", METHODS)
        _one_of(self, "dtype", "", DTYPES)
        _integer(self, "seed", "", low=0)
        _integer(self, "data_seed", "", low=0)
        parse_device(self.device)
        check_limits(self)
        if self.data.file:  # the sizes come from the file: checked where it is read (datafiles.check_train_config)
            if self.rollout_horizon:
                raise ConfigError("rollout_horizon", self.rollout_horizon, "0 when data.file is set (no rollout loss on file trajectories yet)")
            return
        samples = self.train_samples
        if self.batch_size > samples:
            raise ConfigError("batch_size", self.batch_size, f"at most the {samples} training samples (data.n_train = {self.data.n_train}"
                              + (f" trajectories of {samples // self.data.n_train} samples)" if self.data.kind == "trajectories" else ")"))
        if self.rollout_horizon and self.rollout_horizon >= samples // self.data.n_train:
            raise ConfigError("rollout_horizon", self.rollout_horizon,
                              f"an integer in [1, {samples // self.data.n_train - 1}] (samples per trajectory − 1)")

    @property
    def train_samples(self) -> int:
        """Training samples per epoch: n_train states, or n_train trajectories × their samples
        (file data: the samples of the training trajectories the data seed picks; reads the file)."""
        if self.data.file:
            from .datafiles import check_data, split_indices

            tf = check_data(self.data)
            return sum(tf.lengths[i] for i in split_indices(tf, self.data, self.data_seed)["train"])
        per = samples_per_trajectory(self.data) if self.data.kind == "trajectories" else 1
        return self.data.n_train * per

    # -- dict round trips -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (lists, not tuples), ready for JSON/YAML."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a nested dict; missing keys take their defaults. A top-level `preset: NAME`
        starts from that preset and applies the rest of the dict on top of it."""
        if not isinstance(d, Mapping):
            raise ConfigError("config", d, "a mapping of settings")
        d = dict(d)
        if "preset" in d:
            name = d.pop("preset")
            if name not in PRESETS:
                raise ConfigError("preset", name, sorted(PRESETS))
            d = _merge(PRESETS[name].to_dict(), d)
        _check_keys(d, cls, "")
        sub = {}
        for name, sub_cls in _SECTIONS.items():
            section = d.get(name, {})
            if isinstance(section, sub_cls):
                sub[name] = section
                continue
            if not isinstance(section, Mapping):
                raise ConfigError(name, section, "a mapping of settings")
            _check_keys(section, sub_cls, name + ".")
            sub[name] = sub_cls(**section)
        top = {k: v for k, v in d.items() if k not in _SECTIONS}
        return cls(**sub, **top)

    def to_flat(self) -> dict[str, Any]:
        """{"optimizer.lr": …, "data.params.rho": …, "batch_size": …}: leaves of the nested dict."""
        return _flatten(self.to_dict())

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> "TrainConfig":
        return cls().with_flat(flat)

    def with_flat(self, overrides: Mapping[str, Any]) -> "TrainConfig":
        """A copy with dotted keys replaced, e.g. {"optimizer.lr": 1e-3, "model.hidden": 64}.
        Keys must name an existing setting, or a key inside a dict-valued one (data.params.rho)."""
        tree = self.to_dict()
        for key, value in overrides.items():
            *path, leaf = str(key).split(".")
            node: Any = tree
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            known_leaf = isinstance(node, dict) and (leaf in node or ".".join(path) in _DICT_FIELDS)
            if not known_leaf or isinstance(node.get(leaf), dict) and not isinstance(value, Mapping):
                raise ConfigError(str(key), value, f"a known setting: {', '.join(sorted(_flatten(self.to_dict())))}")
            node[leaf] = _plain(value)
        return type(self).from_dict(tree)


# ----------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limit:
    """The upper bound of one numeric setting (its lower bound is checked with the field), or
    None for unbounded, with the reason; `integer`: the setting takes whole numbers only."""

    high: float | None
    why: str
    integer: bool = False


_EPOCHS = 10**6
_SAMPLES = 10**8
# Every numeric TrainConfig setting, by its dotted name: one table, checked when a TrainConfig is
# built, so a study's base and the extremes of its search space are checked at launch. Bounds are
# where a run stops being a plausible experiment on one machine (memory or time), not tuning advice.
LIMITS: dict[str, Limit] = {
    "data.n_train": Limit(_SAMPLES, "states (or trajectories): 10^8 states already take gigabytes of float64", integer=True),
    "data.n_val": Limit(_SAMPLES, "validation states (or trajectories), evaluated every epoch: the data.n_train bound", integer=True),
    "data.n_test": Limit(_SAMPLES, "test and ood states (or trajectories): the data.n_train bound", integer=True),
    "data.n_rollout": Limit(10**5, "rollout trajectories per split, integrated together by DOP853", integer=True),
    "data.rollout_steps": Limit(10**6, "samples per rollout trajectory; every metric rolls the model out this far", integer=True),
    "data.duration": Limit(10**4, "seconds per trajectory; duration × rate_hz samples each"),
    "data.rate_hz": Limit(10**4, "samples per second of trajectories"),
    "data.noise": Limit(None, "a noise std of any size is computable; a large one only makes the data useless, which the metrics show"),
    "data.savgol_window": Limit(10**4 + 1, "samples in the Savitzky–Golay window (clipped to the trajectory length)", integer=True),
    "data.savgol_order": Limit(20, "polynomial order of the Savitzky–Golay fit; higher orders are numerically meaningless", integer=True),
    "data.ood_scale": Limit(100, "the ood box as a multiple of the training box"),
    "data.params": Limit(None, "physical parameters: each system checks its own"),
    "data.declared": Limit(None, "a declared system: its expressions are bounded in size and checked on its box (dlnn_core/declared.py)"),
    "data.file_split": Limit(None, "fractions of the file's trajectories, each in [0, 1] and summing to 1 (its own check)"),
    "model.hidden": Limit(65536, "width of each hidden layer: wider ones do not fit a GPU's memory", integer=True),
    "model.depth": Limit(64, "hidden layers; second derivatives through deeper networks are too slow to search", integer=True),
    "model.mass_eps": Limit(None, "a regularizer added to the mass matrix; any positive value is computable"),
    "optimizer.lr": Limit(None, "too large a rate diverges, which fit detects and the service records as infeasible"),
    "optimizer.weight_decay": Limit(None, "too much decay only shrinks the model, which the metrics show"),
    "optimizer.momentum": Limit(None, "bounded by its own check: [0, 1)"),
    "optimizer.betas": Limit(None, "bounded by its own check: each in [0, 1)"),
    "optimizer.eps": Limit(None, "a numerical guard; large values only slow training"),
    "optimizer.d0": Limit(None, "D-Adaptation's initial distance estimate; the optimizer adapts it"),
    "scheduler.warmup_t": Limit(_EPOCHS, "epochs, so no more than the epochs bound"),
    "scheduler.warmup_lr_init": Limit(None, "a rate (multiplier): too large diverges, which fit detects"),
    "scheduler.lr_min": Limit(None, "a rate (multiplier): too large diverges, which fit detects"),
    "scheduler.t_initial": Limit(_EPOCHS, "epochs, so no more than the epochs bound"),
    "scheduler.cycle_limit": Limit(_EPOCHS, "cycles of at least one epoch each", integer=True),
    "scheduler.cycle_decay": Limit(None, "a factor on each restart's peak rate: too large diverges, which fit detects"),
    "scheduler.step_size": Limit(_EPOCHS, "epochs, so no more than the epochs bound", integer=True),
    "scheduler.gamma": Limit(None, "bounded by its own check: (0, 1]"),
    "scheduler.patience": Limit(_EPOCHS, "epochs, so no more than the epochs bound", integer=True),
    "scheduler.factor": Limit(None, "bounded by its own check: (0, 1)"),
    "batch_size": Limit(_SAMPLES, "samples per step, and never more than the training set (checked with data.n_train)", integer=True),
    "epochs": Limit(_EPOCHS, "a run of a million epochs is not a trial; budget.timeout_s also stops trials", integer=True),
    "grad_clip": Limit(None, "a norm cap: a large one means no clipping"),
    "rollout_horizon": Limit(None, "bounded by the samples per trajectory (checked with data.duration and rate_hz)", integer=True),
    "rollout_weight": Limit(None, "a loss weight; divergence is detected and recorded"),
    "seed": Limit(2**32 - 1, "32-bit seeds: more gain nothing and some tools refuse them", integer=True),
    "data_seed": Limit(2**32 - 1, "32-bit seeds: more gain nothing and some tools refuse them", integer=True),
}


def _setting(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_limits(cfg: "TrainConfig") -> None:
    """Refuse a setting above its LIMITS bound, naming the bound and why it is there."""
    for key, limit in LIMITS.items():
        value = _setting(cfg, key)
        if limit.high is not None and isinstance(value, (int, float)) and value > limit.high:
            bound = f"{limit.high:,}" if isinstance(limit.high, int) else f"{limit.high:g}"
            raise ConfigError(key, value, f"at most {bound} ({limit.why})")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "optimizer": OptimizerConfig, "scheduler": SchedulerConfig}
_DICT_FIELDS = {"data.params"}


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so dicts compare equal after a JSON/YAML round trip."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _merge(base: dict, top: Mapping) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


def _check_keys(d: Mapping[str, Any], cls: type, prefix: str) -> None:
    names = [f.name for f in fields(cls)]
    for key in d:
        if key not in names:
            raise ConfigError(f"{prefix}{key}", d[key], f"a field of {cls.__name__}: {', '.join(names)}")


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
