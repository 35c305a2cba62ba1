"""A data file as a DataConfig uses it: the config's file fields and pins checked (against the file,
its size and the batch), the file as a System (n, angles, box; no equations of motion), and its
trajectories split by trajectory (ood ones first, by OOD_RULE) with their derivatives estimated.
datafiles.py reads and writes the files themselves."""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .datafiles import FORMATS, SHA_RE, DataFileError, TrajectoryFile, load_trajectory_file
from .errors import ConfigError, raise_all
from .fields import as_number
from .splits import Splits, StateSet, Trajectories, wrap_angles
from .systems import System

OOD_RULE = "extreme"  # the ood trajectories: largest |q̇| or |q − mean q| (non-angle) of any sample, over the file's RMS
DEFAULT_SPLIT = (0.6, 0.2, 0.1, 0.1)  # train, val, test, ood fractions of the file's trajectories
SPLIT_NAMES = ("train", "val", "test", "ood")
# DataConfig fields a file replaces: with data.file set they must keep their defaults.
GENERATOR_FIELDS = ("params", "declared", "n_train", "n_val", "n_test", "n_rollout", "rollout_steps", "duration", "rate_hz", "noise", "ood_scale")


def check_file_fields(cfg: Any) -> None:
    """DataConfig checks with `file` set, without reading it: the file replaces the system, so
    `system` is left out (normalized to ""), `kind` becomes "trajectories" and every generator
    setting (GENERATOR_FIELDS) must keep its default; one ConfigError names every one that does not."""
    defaults = {f.name: (f.default if f.default is not MISSING else f.default_factory()) for f in fields(cfg)}  # type: ignore[misc]
    if not isinstance(cfg.file, str):
        raise ConfigError("data.file", cfg.file, "a path to a .npz or .csv file")
    if Path(cfg.file).suffix.lower() not in FORMATS:
        raise ConfigError("data.file", cfg.file, f"a path to a {' or '.join(FORMATS)} file")
    errors: list[ConfigError] = []
    if cfg.system not in ("", defaults["system"]):
        errors.append(ConfigError("data.system", cfg.system, "to be left out when data.file is set (the file replaces the system)"))
    if cfg.kind not in (defaults["kind"], "trajectories"):
        errors.append(ConfigError("data.kind", cfg.kind, "'trajectories' (or left out) when data.file is set"))
    for name in GENERATOR_FIELDS:
        if getattr(cfg, name) != defaults[name]:
            errors.append(ConfigError(f"data.{name}", getattr(cfg, name), f"its default {defaults[name]!r} when data.file is set "
                                      "(it configures generated data; the file's trajectories are used as they are)"))
    object.__setattr__(cfg, "system", "")  # also when refused above, so DataConfig's own checks do not name them again
    object.__setattr__(cfg, "kind", "trajectories")
    raise_all(errors)


def check_file_pins(cfg: Any) -> None:
    """`file_sha256` and `file_split` (with or without a file); one ConfigError names each that is bad."""
    errors: list[ConfigError] = []
    sha = cfg.file_sha256
    if not isinstance(sha, str) or (sha and not SHA_RE.fullmatch(sha)):
        errors.append(ConfigError("data.file_sha256", sha, "'' or the file's SHA-256 as 64 lowercase hex digits"))
    elif sha and not cfg.file:
        errors.append(ConfigError("data.file_sha256", sha, "'' unless data.file is set"))
    split = [as_number(x) for x in cfg.file_split] if isinstance(cfg.file_split, (list, tuple)) else cfg.file_split
    ok = isinstance(split, (list, tuple)) and len(split) == 4 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0 for x in split)
    if not ok or not all(x > 0 for x in split[:3]) or abs(sum(split) - 1) > 1e-6:
        errors.append(ConfigError("data.file_split", cfg.file_split, "4 fractions of the file's trajectories (train, val, test, ood), "
                                  "train/val/test > 0, ood >= 0 (0: no ood split), summing to 1"))
    else:
        object.__setattr__(cfg, "file_split", tuple(float(x) for x in split))
        if not cfg.file and cfg.file_split != DEFAULT_SPLIT:
            errors.append(ConfigError("data.file_split", list(split), f"its default {list(DEFAULT_SPLIT)} unless data.file is set"))
    raise_all(errors)


def file_system(tf: TrajectoryFile) -> System:
    """What a model needs to know of the data's system (n, angles, ranges); no equations: metrics
    that need the true system (energy, true dissipation) are absent for file data."""
    q = np.concatenate(tf.q)
    v = np.concatenate(tf.qdot) if tf.qdot is not None else np.diff(q, axis=0) / tf.dt
    ranges = lambda a: tuple((float(lo), float(hi)) for lo, hi in zip(a.min(0), a.max(0)))  # noqa: E731
    return System(name=f"file:{Path(tf.path).name}", n=tf.n, angles=tf.angles, params={}, lagrangian=None, dissipation=None,
                  energy=None, eom=None, q_range=ranges(q), qdot_range=ranges(v))


def split_counts(count: int, split: Sequence[float]) -> dict[str, int]:
    """Trajectories per split: val, test (and ood, when its fraction is > 0) get round(f·N), at
    least 1; train gets the rest, which must be at least 1."""
    out = {name: (max(1, round(f * count)) if f > 0 else 0) for name, f in zip(SPLIT_NAMES[1:], split[1:])}
    out["train"] = count - sum(out.values())
    return out


def check_data(cfg: Any, tf: TrajectoryFile | None = None) -> TrajectoryFile:
    """Read `cfg.file` (remembered) and check it against the DataConfig: the pinned hash, enough
    trajectories for the split, and enough samples for the Savitzky–Golay window where q̇ or q̈
    are estimated. Returns the file."""
    tf = tf or load_trajectory_file(cfg.file, cfg.file_sha256)
    counts = split_counts(tf.count, cfg.file_split)
    if counts["train"] < 1:
        need = sum(1 for f in cfg.file_split if f > 0)
        raise DataFileError(cfg.file, f"has {tf.count} trajectories, too few for data.file_split = {list(cfg.file_split)} "
                            f"(each of its {need} splits needs at least one trajectory: {need} or more)")
    if needs_window(cfg, tf):
        window = cfg.savgol_window
        short = min(range(tf.count), key=lambda i: tf.lengths[i])
        if tf.lengths[short] < window:
            what = "q̇ and q̈" if cfg.derivatives == "savgol" or (tf.qdot is None and tf.qddot is None) else ("q̇" if tf.qdot is None else "q̈")
            raise DataFileError(cfg.file, f"{tf.where(short)} has {tf.lengths[short]} samples ({(tf.lengths[short] - 1) * tf.dt:.3g} s), "
                                f"fewer than the Savitzky–Golay window data.savgol_window = {window} samples "
                                f"({(window - 1) * tf.dt:.3g} s at {1 / tf.dt:.4g} Hz) that estimates {what}; "
                                "use a shorter window or drop the trajectory")
    return tf


def needs_window(cfg: Any, tf: TrajectoryFile) -> bool:
    """Whether the Savitzky–Golay filter estimates anything (then every trajectory needs its window)."""
    return cfg.derivatives == "savgol" or (cfg.derivatives == "exact" and (tf.qdot is None or tf.qddot is None))


def check_train_config(config: Any) -> TrajectoryFile:
    """The TrainConfig checks that need the file (the caller has `config.data.file` set): the
    data checks, and the batch against the training samples the data seed's split gives."""
    tf = check_data(config.data)
    train = split_indices(tf, config.data, config.data_seed)["train"]
    samples = sum(tf.lengths[i] for i in train)
    if config.batch_size > samples:
        raise ConfigError("batch_size", config.batch_size, f"at most the {samples} training samples "
                          f"({len(train)} training trajectories of data.file with data_seed = {config.data_seed})")
    return tf


def observed(cfg: Any, tf: TrajectoryFile) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(q, q̇, q̈) per trajectory: the file's where given (derivatives="exact"), Savitzky–Golay
    estimates from q where not; derivatives="savgol" or "spline" takes all three from that estimator."""
    from .smoothing import estimate, savgol  # here, not at the top: checking a config reads this module

    out = []
    for i in range(tf.count):
        q = tf.q[i]
        if cfg.derivatives != "exact":
            out.append(estimate(cfg, q, tf.dt, noise=None))  # a file's noise is not known
            continue
        fits = savgol(q, tf.dt, cfg) if tf.qdot is None or tf.qddot is None else None
        v = tf.qdot[i] if tf.qdot is not None else fits[1]
        a = tf.qddot[i] if tf.qddot is not None else fits[2]
        out.append((q, v, a))
    return out


def _features(states: list[tuple[np.ndarray, np.ndarray, np.ndarray]], angles: tuple[bool, ...]) -> list[np.ndarray]:
    """Per trajectory [T_i, f]: q of non-angle coordinates and every q̇ (an angle's range is the circle)."""
    keep = ~np.array(angles)
    return [np.concatenate([q[:, keep], v], axis=1) for q, v, _ in states]


def split_indices(tf: TrajectoryFile, cfg: Any, seed: int, states=None) -> dict[str, list[int]]:
    """Trajectory indices per split. ood first, by OOD_RULE (seed-independent: the same held-out
    extremes for every seed), then train/val/test by a permutation of the rest drawn from `seed`."""
    counts = split_counts(tf.count, cfg.file_split)
    ood: list[int] = []
    if counts["ood"]:
        states = states if states is not None else observed(cfg, tf)
        keep = ~np.array(tf.angles)
        centre = np.concatenate([q for q, _, _ in states]).mean(0)
        # Velocities keep their zero (rest); non-angle positions are centred on the file's mean.
        feats = [np.concatenate([(q - centre)[:, keep], v], axis=1) for q, v, _ in states]
        rms = np.sqrt(np.mean(np.concatenate(feats) ** 2, axis=0))
        rms = np.where(rms > 0, rms, 1.0)
        extremeness = np.array([np.abs(f / rms).max() for f in feats])
        ood = sorted(np.argsort(-extremeness, kind="stable")[: counts["ood"]].tolist())
    rest = np.array([i for i in range(tf.count) if i not in set(ood)])
    perm = np.random.default_rng(seed).permutation(rest).tolist()
    val, test = perm[: counts["val"]], perm[counts["val"] : counts["val"] + counts["test"]]
    train = perm[counts["val"] + counts["test"]:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test), "ood": ood}


def range_excess(train: np.ndarray, other: np.ndarray) -> float:
    """How far `other`'s features leave the box of `train`'s, as a fraction of that box's width
    per feature (max over features and samples; 0 when inside)."""
    lo, hi = train.min(0), train.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return float(np.max(np.maximum(0.0, np.maximum(other - hi, lo - other)) / width))


def file_splits(cfg: Any, seed: int):
    """`Splits` of a file: StateSets of each split's samples and its trajectories for rollouts at
    the file's own step (NaN-padded, with `lengths`), plus what the metrics should state of the
    ood split (`data_metrics`)."""
    tf = check_data(cfg)
    states = observed(cfg, tf)
    idx = split_indices(tf, cfg, seed, states)

    def state_set(ids: list[int]) -> StateSet:
        q, v, a = (np.concatenate([states[i][k] for i in ids]) for k in range(3))
        return StateSet(wrap_angles(q, tf.angles), v, a)

    def trajectories(ids: list[int]) -> Trajectories:
        lengths = np.array([tf.lengths[i] for i in ids])
        steps = int(lengths.max())
        q, v = (np.full((len(ids), steps, tf.n), np.nan) for _ in range(2))
        for row, i in enumerate(ids):
            q[row, : lengths[row]], v[row, : lengths[row]] = states[i][0], states[i][1]
        return Trajectories(np.arange(steps) * tf.dt, q, v, lengths)

    sets = {name: state_set(ids) if ids else None for name, ids in idx.items()}
    rollouts = {name: trajectories(idx[name]) for name in ("val", "test", "ood") if idx[name]}
    info: dict[str, Any] = {"ood_rule": OOD_RULE if idx["ood"] else "none", "ood_trajectories": float(len(idx["ood"]))}
    if idx["ood"]:
        feats = _features(states, tf.angles)
        info["ood_range_excess"] = range_excess(np.concatenate([feats[i] for i in idx["train"]]),
                                                np.concatenate([feats[i] for i in idx["ood"]]))
    return Splits(file_system(tf), sets["train"], sets["val"], sets["test"], sets["ood"], rollouts, info)
