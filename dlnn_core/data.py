"""Deterministic datasets for one system: i.i.d. states with exact accelerations, or states along
trajectories integrated with DOP853 (rtol = atol = 1e-10); train/val/test/ood from independent
random streams of one seed; optional observation noise; cached on disk by a hash of the config.
A cache file carries a hash of its content and is verified before use: a truncated, empty,
garbled or incomplete file is regenerated (with a warning) instead of failing every run.

torch and scipy are imported by the functions that generate data, and declared.py only for a declared
system: checking a DataConfig of a built-in system or a data file (every config does) loads neither."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from .atomic import write_atomic
from .file_dataset import DEFAULT_SPLIT, check_data, check_file_fields, check_file_pins, file_splits, file_system
from .errors import ConfigError, collect, raise_all
from .fields import Integer, Number, OneOf, Rule, as_number, check_fields
from .smoothing import ESTIMATORS, estimate
from .splits import Splits, StateSet, Trajectories, wrap_angles  # noqa: F401  (their home before splits.py)
from .systems import DECLARED, SYSTEMS, System

DATA_KINDS = ("states", "trajectories")
DERIVATIVES = ("exact",) + tuple(ESTIMATORS)  # exact targets, or estimates from noisy q (smoothing.py)
SPLITS = ("train", "val", "test", "ood")
CACHE_VERSION = 2  # bump when generation changes, so old cache files are not reused
HASH_KEY = "meta.sha256"  # the cache file's own array holding the hash of every other array


def make_system(system: str, params: Mapping[str, Any], declared: Mapping[str, Any] | None) -> System:
    """The system `data.system` names: a built-in (SYSTEMS), "declared" (from `declared`, a
    canonical declaration) or "package.module:factory". declared.py builds the last two; it
    compiles and checks them with torch, so it is imported only for them."""
    if system == DECLARED:
        from .declared import declared_system

        return declared_system(declared, params)
    if isinstance(system, str) and ":" in system:
        from .entry_points import entry_point_system

        return entry_point_system(system, params)
    if not isinstance(system, str) or system not in SYSTEMS:
        raise ConfigError("data.system", system, f"a built-in system ({', '.join(sorted(SYSTEMS))}), "
                          f'"{DECLARED}" with a data.declared table, or an entry point "package.module:factory"')
    return SYSTEMS[system](**params)


@dataclass(frozen=True)
class DataConfig:
    """What data to generate; the cache key is a hash of these fields and the seed."""

    system: str = "damped_pendulum"
    params: dict[str, float] = field(default_factory=dict)  # overrides of the system's parameters
    kind: str = "states"  # states: i.i.d. in the system's box; trajectories: samples along solved paths
    n_train: int = 2048  # states (kind=states) or trajectories (kind=trajectories)
    n_val: int = 512
    n_test: int = 512
    n_rollout: int = 8  # trajectories per split for rollout metrics (val, test, ood)
    rollout_steps: int = 500  # length of those trajectories, in samples at rate_hz
    duration: float = 8.0  # seconds per trajectory
    rate_hz: float = 30.0  # sampling rate of trajectories
    noise: float = 0.0  # std of Gaussian observation noise on training q, q̇ (and q̈ or positions)
    derivatives: str = "exact"  # trajectory targets: exact q̇, q̈, or estimates from noisy q (smoothing.ESTIMATORS)
    savgol_window: int = 11
    savgol_order: int = 3
    ood_scale: float = 1.5  # ood states come from the box scaled by this, above the training energy
    declared: dict[str, Any] | None = None  # system = "declared": coordinates, params, T, V, D, box (dlnn_core/declared.py)
    # Measured trajectories instead of a system (datafiles.py): a .npz/.csv path; it replaces system,
    # params, declared and the generator settings, which then keep their defaults (system is stored as "").
    file: str = ""
    file_sha256: str = ""  # the file's content hash; "" = not pinned (launch pins it), else a changed file is refused
    file_split: tuple[float, ...] = DEFAULT_SPLIT  # fractions of the file's trajectories: train, val, test, ood (0: none)

    RULES: ClassVar[dict[str, Rule]] = {  # system, params, declared and the file: their own checks below
        "kind": OneOf(DATA_KINDS),
        "derivatives": OneOf(DERIVATIVES),
        **dict.fromkeys(("n_train", "n_val", "n_test", "n_rollout", "rollout_steps"), Integer(what="a positive integer")),
        **dict.fromkeys(("duration", "rate_hz"), Number(low=0, low_open=True, what="a positive number")),
        "noise": Number(low=0, what="a non-negative standard deviation"),
        "savgol_window": Integer(),
        "savgol_order": Integer(),
        "ood_scale": Number(low=1, low_open=True, what="a number > 1 (ood states lie beyond the training box)"),
    }

    def __post_init__(self) -> None:
        """Check every field and raise one ConfigError naming all the bad ones."""
        errors: list[ConfigError] = []
        if isinstance(self.params, Mapping):  # each system checks its parameters; numbers are read as every field reads them
            object.__setattr__(self, "params", {k: as_number(v) for k, v in self.params.items()})
        if self.file:  # the file replaces the system: system, declared and params must be left out
            collect(errors, check_file_fields, self)
        elif collect(errors, self._canonical_declaration):
            collect(errors, self.make_system)  # validates the system (name, entry point or declaration), its parameter names and values
        collect(errors, check_file_pins, self)
        refused = check_fields(errors, self, "data.", self.RULES)
        if not {"savgol_window", "savgol_order"} & refused and not (self.savgol_window % 2 != 0 and self.savgol_order < self.savgol_window):
            errors.append(ConfigError("data.savgol_window", (self.savgol_window, self.savgol_order), "an odd window larger than the order"))
        raise_all(errors)

    def _canonical_declaration(self) -> None:
        if self.system == DECLARED or self.declared is not None:  # else there is nothing to check (declared.py needs torch)
            from .declared import canonical_declaration

            object.__setattr__(self, "declared", canonical_declaration(self.system, self.declared))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def make_system(self) -> System:
        if self.file:  # n, angles and ranges from the file; no equations of motion
            return file_system(check_data(self))
        return make_system(self.system, self.params, self.declared)


def _box(ranges: tuple[tuple[float, float], ...], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.array(ranges, dtype=np.float64).T
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * scale
    return mid - half, mid + half


def _uniform(rng: np.random.Generator, system: System, count: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    q_lo, q_hi = _box(system.q_range, scale)
    v_lo, v_hi = _box(system.qdot_range, scale)
    angles = np.array(system.angles)
    q_lo, q_hi = np.where(angles, -np.pi, q_lo), np.where(angles, np.pi, q_hi)  # angles cover the circle
    return rng.uniform(q_lo, q_hi, (count, system.n)), rng.uniform(v_lo, v_hi, (count, system.n))


def _energy(system: System, q: np.ndarray, v: np.ndarray) -> np.ndarray:
    import torch

    return system.energy(torch.from_numpy(q), torch.from_numpy(v)).numpy()


def _accel(system: System, q: np.ndarray, v: np.ndarray) -> np.ndarray:
    import torch

    return system.eom(torch.from_numpy(q), torch.from_numpy(v)).numpy()


def _box_energy_max(system: System) -> float:
    """Largest energy at the corners of the training box (with angles at ±π), where it peaks for these systems."""
    q_lo, q_hi = _box(system.q_range)
    angles = np.array(system.angles)
    q_lo, q_hi = np.where(angles, -np.pi, q_lo), np.where(angles, np.pi, q_hi)
    v_lo, v_hi = _box(system.qdot_range)
    corners = np.array(list(itertools.product(*zip(q_lo, q_hi), *zip(v_lo, v_hi))))
    return float(_energy(system, corners[:, : system.n].copy(), corners[:, system.n :].copy()).max())


def _ood_states(rng: np.random.Generator, system: System, count: int, scale: float, e_max: float) -> tuple[np.ndarray, np.ndarray]:
    """States from the scaled box whose energy exceeds every training state's (rejection sampling)."""
    qs, vs, have = [], [], 0
    for _ in range(1000):
        q, v = _uniform(rng, system, 4 * count, scale)
        keep = _energy(system, q, v) > e_max
        qs.append(q[keep]), vs.append(v[keep])
        have += int(keep.sum())
        if have >= count:
            return np.concatenate(qs)[:count], np.concatenate(vs)[:count]
    raise ConfigError("data.ood_scale", scale, "a scale large enough to reach energies above the training set")


def _time_grid(duration: float, rate_hz: float) -> np.ndarray:
    """Sample times 0, 1/rate_hz, ... up to duration (inclusive)."""
    return np.arange(0.0, duration + 0.5 / rate_hz, 1.0 / rate_hz)


def integrate(system: System, q0: np.ndarray, v0: np.ndarray, duration: float, rate_hz: float) -> Trajectories:
    """Solve all initial states [N, n] at once with DOP853, rtol = atol = 1e-10, sampled at rate_hz."""
    from scipy.integrate import solve_ivp

    count, n = q0.shape
    t = _time_grid(duration, rate_hz)

    def rhs(_: float, y: np.ndarray) -> np.ndarray:
        q, v = y[: count * n].reshape(count, n), y[count * n :].reshape(count, n)
        return np.concatenate([v.ravel(), _accel(system, q, v).ravel()])

    sol = solve_ivp(rhs, (0.0, t[-1]), np.concatenate([q0.ravel(), v0.ravel()]), method="DOP853", t_eval=t, rtol=1e-10, atol=1e-10)
    if not sol.success:
        raise RuntimeError(f"trajectory integration failed: {sol.message}")
    y = sol.y.T  # [T, 2 N n]
    q = y[:, : count * n].reshape(len(t), count, n).transpose(1, 0, 2)
    v = y[:, count * n :].reshape(len(t), count, n).transpose(1, 0, 2)
    return Trajectories(t, q, v)


def _observed_states(cfg: DataConfig, system: System, traj: Trajectories, rng: np.random.Generator, noisy: bool) -> StateSet:
    """Flatten trajectories into samples; with derivatives = "savgol" or "spline", q̇ and q̈ (and a
    smoothed q) are estimated from the noisy q (smoothing.py)."""
    sigma = cfg.noise if noisy else 0.0
    q = observed = traj.q + sigma * rng.standard_normal(traj.q.shape)
    if cfg.derivatives != "exact":
        q, v, a = estimate(cfg, q, 1.0 / cfg.rate_hz, sigma)
    else:
        v = traj.qdot + sigma * rng.standard_normal(traj.qdot.shape)
        a = np.stack([_accel(system, traj.q[i], traj.qdot[i]) for i in range(traj.q.shape[0])])
        a = a + sigma * rng.standard_normal(a.shape)
    n = system.n
    measured = wrap_angles(observed.reshape(-1, n), system.angles) if _keeps_observed(cfg) and noisy else None
    return StateSet(wrap_angles(q.reshape(-1, n), system.angles), v.reshape(-1, n), a.reshape(-1, n), measured)


def _keeps_observed(cfg: DataConfig) -> bool:
    """Whether the noisy training trajectories keep their measured angles beside the smoothed q
    (what shooting fits: shooting.py): trajectories whose derivatives are estimated."""
    return cfg.kind == "trajectories" and cfg.derivatives != "exact"


def generate(cfg: DataConfig, seed: int) -> Splits:
    """Build every split from its own random stream: changing one split's size leaves the others' draws alone."""
    system = cfg.make_system()
    streams = {name: np.random.default_rng(s) for name, s in zip(SPLITS + ("rollout",), np.random.SeedSequence(seed).spawn(5))}
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test, "ood": cfg.n_test}
    sets: dict[str, StateSet] = {}
    train_q, train_v = _uniform(streams["train"], system, cfg.n_train)
    e_max = max(_box_energy_max(system), float(_energy(system, train_q, train_v).max()))
    for name in SPLITS:
        rng = streams[name]
        if name == "ood":
            q, v = _ood_states(rng, system, sizes[name], cfg.ood_scale, e_max)
        elif name == "train":
            q, v = train_q, train_v
        else:
            q, v = _uniform(rng, system, sizes[name])
        if cfg.kind == "states" or name == "ood":
            noise = cfg.noise if name == "train" else 0.0
            a = _accel(system, q, v)
            noisy = [x + noise * rng.standard_normal(x.shape) for x in (q, v, a)]
            sets[name] = StateSet(wrap_angles(noisy[0], system.angles), noisy[1], noisy[2])
        else:
            traj = integrate(system, q, v, cfg.duration, cfg.rate_hz)
            sets[name] = _observed_states(cfg, system, traj, rng, noisy=name == "train")
    rollouts = {}
    horizon = cfg.rollout_steps / cfg.rate_hz
    for name in ("val", "test"):
        q0, v0 = _uniform(streams["rollout"], system, cfg.n_rollout)
        rollouts[name] = integrate(system, q0, v0, horizon, cfg.rate_hz)
    q0, v0 = _ood_states(streams["rollout"], system, cfg.n_rollout, cfg.ood_scale, e_max)
    rollouts["ood"] = integrate(system, q0, v0, horizon, cfg.rate_hz)
    return Splits(system, sets["train"], sets["val"], sets["test"], sets["ood"], rollouts)


def cache_key(cfg: DataConfig, seed: int) -> str:
    unset = {"declared": None, "file": "", "file_sha256": "", "file_split": DEFAULT_SPLIT}
    config = {k: v for k, v in cfg.to_dict().items() if not (k in unset and v == unset[k])}  # keys from before these fields stay valid
    payload = json.dumps({"config": config, "seed": seed, "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(os.environ.get("DLNN_CACHE_DIR", Path.home() / ".cache" / "dlnn-studies"))


def cache_path(cfg: DataConfig, seed: int, cache_dir: str | Path | None = None) -> Path:
    label = cfg.declared["name"] if cfg.declared else re.sub(r"[^A-Za-z0-9_.-]", "_", cfg.system)  # an entry point has a ':'
    return Path(cache_dir or default_cache_dir()) / f"data-{label}-{cache_key(cfg, seed)}.npz"


def load_data(cfg: DataConfig, seed: int, cache_dir: str | Path | None = None) -> Splits:
    """Read the verified cache file, or generate the data and (re)write it atomically, so workers
    sharing a cache volume never read a half-written file and heal a corrupt one. A data file
    (cfg.file) is read instead, remembered per process and checked against its pinned sha256;
    it is cheap to split again, so it never enters the cache."""
    if cfg.file:  # measured trajectories: read (remembered per process, hash-checked) and split in memory
        return file_splits(cfg, seed)
    path = cache_path(cfg, seed, cache_dir)
    expected = _expected_shapes(cfg)
    if path.exists():
        arrays, problem = _read_cache(path, expected)
        if arrays is not None:
            sets = {name: StateSet(arrays[f"{name}.q"], arrays[f"{name}.qdot"], arrays[f"{name}.qddot"], arrays.get(f"{name}.observed"))
                    for name in SPLITS}
            rollouts = {name: Trajectories(arrays["rollout.t"], arrays[f"rollout.{name}.q"], arrays[f"rollout.{name}.qdot"])
                        for name in ("val", "test", "ood")}
            return Splits(cfg.make_system(), rollouts=rollouts, **sets)
        warnings.warn(f"dataset cache file {path} is unusable ({problem}); regenerating it", RuntimeWarning, stacklevel=2)
    splits = generate(cfg, seed)
    arrays = {f"{name}.{key}": getattr(getattr(splits, name), key) for name in SPLITS for key in ("q", "qdot", "qddot", "observed")
              if getattr(getattr(splits, name), key) is not None}
    arrays["rollout.t"] = splits.rollouts["val"].t
    for name, traj in splits.rollouts.items():
        arrays[f"rollout.{name}.q"], arrays[f"rollout.{name}.qdot"] = traj.q, traj.qdot
    arrays[HASH_KEY] = np.array(content_hash(arrays))
    try:
        write_atomic(path, lambda f: np.savez(f, **arrays))
    except OSError as exc:  # a full or read-only cache disk costs a regeneration next time, not the run
        warnings.warn(f"cannot write the dataset cache file {path} ({exc}); using the data uncached", RuntimeWarning, stacklevel=2)
    return splits


def _expected_shapes(cfg: DataConfig) -> dict[str, tuple[int, ...]]:
    """Every array a cache file of `cfg` holds, with its shape (all float64)."""
    n = cfg.make_system().n
    per_path = samples_per_trajectory(cfg) if cfg.kind == "trajectories" else 1
    rows = {"train": cfg.n_train * per_path, "val": cfg.n_val * per_path, "test": cfg.n_test * per_path, "ood": cfg.n_test}
    shapes = {f"{name}.{key}": (rows[name], n) for name in SPLITS for key in ("q", "qdot", "qddot")}
    if _keeps_observed(cfg):
        shapes["train.observed"] = (rows["train"], n)
    steps = len(_time_grid(cfg.rollout_steps / cfg.rate_hz, cfg.rate_hz))
    shapes["rollout.t"] = (steps,)
    for name in ("val", "test", "ood"):
        shapes[f"rollout.{name}.q"] = shapes[f"rollout.{name}.qdot"] = (cfg.n_rollout, steps, n)
    return shapes


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the arrays' names, dtypes, shapes and bytes (the hash entry itself left out)."""
    h = hashlib.sha256()
    for key in sorted(k for k in arrays if k != HASH_KEY):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _read_cache(path: Path, expected: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The arrays of a cache file that loads, has every expected array with its shape and dtype,
    and matches its stored content hash; otherwise (None, what is wrong)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except Exception as exc:  # BadZipFile, EOFError, ValueError, zlib.error, OSError: all mean "unreadable"
        return None, f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
    missing = [key for key in expected if key not in arrays]
    if missing:
        return None, f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}"
    for key, shape in expected.items():
        if arrays[key].dtype != np.float64 or arrays[key].shape != shape:
            return None, f"{key} is {arrays[key].dtype} {arrays[key].shape}, expected float64 {shape}"
    stored = arrays.get(HASH_KEY)
    if stored is None or stored.shape != () or str(stored) != content_hash({k: arrays[k] for k in expected}):
        return None, "its content hash is missing or does not match"
    return arrays, None


def trajectory_windows(states: StateSet, samples_per_trajectory: int, horizon: int) -> tuple[np.ndarray, ...]:
    """Cut flattened trajectory samples [N·T, n] into (q₀, q̇₀, next k q, next k q̇) windows for
    multi-step rollout losses; windows never cross from one trajectory into the next."""
    n, t = states.q.shape[1], samples_per_trajectory
    if horizon < 1 or horizon >= t:
        raise ConfigError("rollout_horizon", horizon, f"an integer in [1, {t - 1}] (samples per trajectory − 1)")
    q, v = states.q.reshape(-1, t, n), states.qdot.reshape(-1, t, n)
    starts = np.arange(t - horizon)
    idx = starts[:, None] + np.arange(1, horizon + 1)[None]
    fq, fv = q[:, idx].reshape(-1, horizon, n), v[:, idx].reshape(-1, horizon, n)
    return q[:, starts].reshape(-1, n), v[:, starts].reshape(-1, n), fq, fv


def samples_per_trajectory(cfg: DataConfig) -> int:
    return len(_time_grid(cfg.duration, cfg.rate_hz))
