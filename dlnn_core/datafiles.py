"""Measured trajectories from a file instead of a built-in system (`DataConfig.file`).

Formats (README "Your own measurements"):
- `.npz`: `q` [N, T, n] (trajectories, samples, coordinates) and `t` [T] (shared) or [N, T];
  optional `qdot`, `qddot` (q's shape), `lengths` [N] (trajectory i uses its first lengths[i]
  samples; the rest is padding, NaN by convention, and never read), `names` [n] (strings) and
  `angles` [n] (booleans: rotational coordinates, compared modulo 2π). Object arrays are refused
  (they need pickle); unknown arrays are refused (a typo must not drop the velocities silently).
- `.csv`, long format: a header `trajectory,t,q_<name>...` with optional `qdot_<name>` and
  `qddot_<name>` columns for every coordinate; one row per sample, a trajectory's rows in time
  order. Lines starting with `#` before the header are comments; `# angles: theta1, theta2`
  names the rotational coordinates.

Every trajectory must be sampled uniformly, all at one step: dt may deviate from its median by at
most DT_TOLERANCE (relative). Irregular files are refused, naming the trajectory and the largest
deviation, rather than silently resampled (an interpolation would invent the q̈ targets).

Targets: velocities and accelerations the file gives are used as they are (derivatives="exact");
missing ones, or all of them with derivatives="savgol" (which also smooths q), are estimated by a
Savitzky–Golay filter of q over `savgol_window` samples, so every trajectory needs that many.

This module reads and writes the files; file_dataset.py checks a DataConfig against its file and
estimates the targets and splits the trajectories. Splits are by trajectory. With a positive ood fraction, the ood trajectories are chosen first by
a fixed rule (OOD_RULE): the ones reaching furthest from the file's typical states (the largest
|q̇|, or |q − mean q| of a non-angle coordinate, of any sample, each feature over its RMS in the
whole file: the fastest or widest motions); the others are split into train/val/test
by a permutation drawn from the data seed. Metrics state the rule (`ood_rule`, "none" without an
ood split), the count and how far the ood states leave the training states' range.

Errors are `DataFileError` (a ConfigError on `data.file`) naming the problem and where it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import ConfigError, Problem, shorten

FORMATS = (".npz", ".csv")
NPZ_ARRAYS = ("t", "q", "qdot", "qddot", "lengths", "names", "angles")
DT_TOLERANCE = 0.01  # largest relative deviation of a time step from the file's sampling step
MIN_SAMPLES = 2  # a trajectory needs two samples to be rolled out at all
SHA_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class DataFileError(ConfigError):
    """A data file that cannot be used: the message names the file, the problem and where it is."""

    def __init__(self, path: str | os.PathLike, problem: str, field: str = "data.file"):
        self._hold((Problem(field, str(path), problem, f"{shorten(str(path), 120)}: {problem}"),))


@dataclass(frozen=True, eq=False)
class TrajectoryFile:
    """A validated file: per trajectory i, times t[i] [T_i], positions q[i] [T_i, n], and the
    velocities/accelerations when the file gives them (None otherwise)."""

    path: str
    sha256: str
    ids: tuple[str, ...]  # trajectory labels: the csv's ids, or "0", "1", ... for npz
    names: tuple[str, ...]  # coordinate names
    angles: tuple[bool, ...]
    t: tuple[np.ndarray, ...]
    q: tuple[np.ndarray, ...]
    qdot: tuple[np.ndarray, ...] | None
    qddot: tuple[np.ndarray, ...] | None
    dt: float  # the common sampling step

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def count(self) -> int:
        return len(self.q)

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(x) for x in self.t)

    def where(self, i: int) -> str:
        """How messages name trajectory i."""
        return f"trajectory {self.ids[i]!r}" if self.ids[i] != str(i) else f"trajectory {i}"


# ----------------------------------------------------------------------------- reading


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_trajectory_file(path: str | os.PathLike) -> TrajectoryFile:
    """Read and validate a .npz or .csv trajectory file (see the module docstring); the first
    problem found raises a DataFileError naming it and its position."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataFileError(path, f"unknown format {suffix or '(no suffix)'!r}; expected one of {', '.join(FORMATS)}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFileError(path, "no such file") from None
    except OSError as exc:
        raise DataFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    sha = hashlib.sha256(data).hexdigest()
    parts = _parse_npz(path, data) if suffix == ".npz" else _parse_csv(path, data)
    return _validated(path, sha, *parts)


_MEMO: OrderedDict[tuple, TrajectoryFile] = OrderedDict()
_MEMO_SIZE = 4


def load_trajectory_file(path: str | os.PathLike, sha256: str = "") -> TrajectoryFile:
    """`read_trajectory_file`, remembered per process by the file's (real path, size, mtime), and
    checked against `sha256` when given (a pinned file that changed is an error, never a stale read)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    tf = _MEMO.get(key) if key is not None else None
    if tf is None:
        tf = read_trajectory_file(path)
        if key is not None:
            _MEMO[key] = tf
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
    else:
        _MEMO.move_to_end(key)
    if sha256 and tf.sha256 != sha256:
        raise DataFileError(path, f"its content changed: its sha256 is {tf.sha256}, but the config pins data.file_sha256 = {sha256} "
                            "(restore that file, or clear data.file_sha256 to use the new one)", field="data.file_sha256")
    return tf


def _numeric(path: Path, name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise DataFileError(path, f"array {name!r} has dtype {a.dtype}; expected numbers")
    return a.astype(np.float64)


def _parse_npz(path: Path, data: bytes):
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            arrays = {}
            for key in f.files:
                try:
                    arrays[key] = f[key]
                except ValueError as exc:
                    if "allow_pickle" in str(exc):
                        raise DataFileError(path, f"array {key!r} is an object array, which cannot be read without pickle; "
                                            "store equal-length arrays padded with NaN plus a 'lengths' array") from None
                    raise
    except DataFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(path, f"cannot be read as .npz ({type(exc).__name__}: {shorten(str(exc), 120)})") from None
    unknown = sorted(set(arrays) - set(NPZ_ARRAYS))
    if unknown:
        raise DataFileError(path, f"unknown array {unknown[0]!r}; known: {', '.join(NPZ_ARRAYS)}")
    for key in ("q", "t"):
        if key not in arrays:
            what = "positions [N, T, n]" if key == "q" else "sample times [T] or [N, T]"
            raise DataFileError(path, f"missing array {key!r} ({what})")
    q = _numeric(path, "q", arrays["q"])
    if q.ndim != 3 or 0 in q.shape:
        raise DataFileError(path, f"array 'q' has shape {q.shape}; expected [N, T, n] (trajectories, samples, coordinates), none empty")
    count, steps, n = q.shape
    t = _numeric(path, "t", arrays["t"])
    if t.shape == (steps,):
        t = np.broadcast_to(t, (count, steps))
    elif t.shape != (count, steps):
        raise DataFileError(path, f"array 't' has shape {t.shape}; expected [T] = ({steps},) or [N, T] = ({count}, {steps}) to match q {q.shape}")
    derived = {}
    for key in ("qdot", "qddot"):
        if key in arrays:
            derived[key] = _numeric(path, key, arrays[key])
            if derived[key].shape != q.shape:
                raise DataFileError(path, f"array {key!r} has shape {derived[key].shape}; expected q's shape {q.shape}")
    lengths = np.full(count, steps)
    if "lengths" in arrays:
        raw = arrays["lengths"]
        ok = raw.shape == (count,) and raw.dtype.kind in "iuf" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw))
        if not ok:
            raise DataFileError(path, f"array 'lengths' ({raw.dtype} {raw.shape}) must hold one whole number per trajectory ({count})")
        lengths = raw.astype(np.int64)
        bad = np.flatnonzero((lengths < 1) | (lengths > steps))
        if len(bad):
            raise DataFileError(path, f"lengths[{bad[0]}] = {lengths[bad[0]]} is outside [1, {steps}] (the padded length of q)")
    names = tuple(f"q{j + 1}" for j in range(n))
    if "names" in arrays:
        raw = arrays["names"]
        if raw.dtype.kind not in "US" or raw.ndim != 1:
            raise DataFileError(path, f"array 'names' ({raw.dtype} {raw.shape}) must be a 1-d array of strings")
        if raw.shape != (n,):
            raise DataFileError(path, f"array 'names' has {raw.shape[0]} entries; q has {n} coordinates")
        names = tuple(x.decode() if isinstance(x, bytes) else str(x) for x in raw)
    angles = (False,) * n
    if "angles" in arrays:
        raw = arrays["angles"]
        if raw.ndim != 1 or raw.shape[0] != n:
            raise DataFileError(path, f"angle mask 'angles' has {raw.shape[0] if raw.ndim == 1 else raw.shape} entries; "
                                f"expected one per coordinate ({n})")
        if raw.dtype != np.bool_ and not (raw.dtype.kind in "iu" and np.isin(raw, (0, 1)).all()):
            raise DataFileError(path, f"angle mask 'angles' ({raw.dtype}) must hold booleans (or 0/1)")
        angles = tuple(bool(x) for x in raw)
    cut = lambda a, i: np.ascontiguousarray(a[i, : lengths[i]])  # noqa: E731
    per = {key: [cut(a, i) for i in range(count)] for key, a in (("t", t), ("q", q), *derived.items())}
    ids = tuple(str(i) for i in range(count))
    return ids, names, angles, per, {}


def _parse_csv(path: Path, data: bytes):
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"is not UTF-8 text (byte {exc.start})") from None
    lines = text.splitlines()
    angle_names: list[str] | None = None
    first = 0
    while first < len(lines) and (lines[first].lstrip().startswith("#") or not lines[first].strip()):
        comment = lines[first].lstrip().lstrip("#").strip()
        if comment.lower().startswith("angles:"):
            angle_names = [x.strip() for x in comment[len("angles:"):].split(",") if x.strip()]
        first += 1
    if first == len(lines):
        raise DataFileError(path, "has no header line (expected trajectory,t,q_<name>,...)")
    rows = csv.reader(lines[first:])
    header = [h.strip() for h in next(rows)]
    layout = {"q": [], "qdot": [], "qddot": []}
    for h in header:
        if h in ("trajectory", "t"):
            continue
        prefix, _, name = h.partition("_")
        if prefix not in layout or not _NAME_RE.fullmatch(name):
            raise DataFileError(path, f"line {first + 1}: unknown column {h!r}; expected trajectory, t, q_<name>, "
                                "and optionally qdot_<name>, qddot_<name> for every coordinate")
        layout[prefix].append(name)
    for required in ("trajectory", "t"):
        if required not in header:
            raise DataFileError(path, f"line {first + 1}: missing column {required!r} (header: {','.join(header)})")
    dup = next((h for h in header if header.count(h) > 1), None)
    if dup is not None:
        raise DataFileError(path, f"line {first + 1}: column {dup!r} appears twice")
    names = layout["q"]
    if not names:
        raise DataFileError(path, f"line {first + 1}: no position columns; expected q_<name> for every coordinate")
    for key in ("qdot", "qddot"):
        if layout[key] and sorted(layout[key]) != sorted(names):
            raise DataFileError(path, f"line {first + 1}: the {key}_ columns name {', '.join(layout[key])} but the q_ columns "
                                f"name {', '.join(names)}; give a {key}_<name> column for every coordinate or none")
    angles = (False,) * len(names)
    if angle_names is not None:
        unknown = [a for a in angle_names if a not in names]
        if unknown:
            raise DataFileError(path, f"the '# angles:' line names {unknown[0]!r}, which is not a coordinate; coordinates: {', '.join(names)}")
        angles = tuple(name in angle_names for name in names)
    cols = {key: [header.index(f"{key}_{name}") for name in names] for key in layout if layout[key]}
    id_col, t_col = header.index("trajectory"), header.index("t")
    groups: dict[str, list[tuple[int, list[str]]]] = {}
    for offset, row in enumerate(rows):
        lineno = first + 2 + offset
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataFileError(path, f"line {lineno}: {len(row)} fields; the header has {len(header)}")
        groups.setdefault(row[id_col].strip(), []).append((lineno, row))
    if not groups:
        raise DataFileError(path, "has no data rows")
    per: dict[str, list[np.ndarray]] = {key: [] for key in ("t", *cols)}
    line_numbers = []
    for ident, items in groups.items():
        line_numbers.append(np.array([lineno for lineno, _ in items]))
        columns = {"t": [t_col], **cols}
        for key, idx in columns.items():
            out = np.empty((len(items), len(idx)))
            for s, (lineno, row) in enumerate(items):
                for c, j in enumerate(idx):
                    cell = row[j].strip()
                    try:
                        out[s, c] = float(cell)
                    except ValueError:
                        raise DataFileError(path, f"line {lineno}: trajectory {ident!r}, sample {s}, column {header[j]!r}: "
                                            f"{cell!r} is not a number") from None
            per[key].append(out[:, 0] if key == "t" else out)
    return tuple(groups), tuple(names), angles, per, {"lines": line_numbers}


def _validated(path: Path, sha: str, ids, names, angles, per, extra) -> TrajectoryFile:
    """Checks common to both formats: names, sample counts, finite values, time order, uniform steps."""
    if len(set(names)) != len(names) or not all(_NAME_RE.fullmatch(x) for x in names):
        raise DataFileError(path, f"coordinate names {list(names)} must be distinct identifiers")
    lines = extra.get("lines")
    at = lambda i, s: f", line {lines[i][s]}" if lines is not None else ""  # noqa: E731
    where = lambda i: f"trajectory {ids[i]!r}" if ids[i] != str(i) else f"trajectory {i}"  # noqa: E731
    for i, t in enumerate(per["t"]):
        if len(t) < MIN_SAMPLES:
            raise DataFileError(path, f"{where(i)} has {len(t)} sample; every trajectory needs at least {MIN_SAMPLES}")
    for key in ("t", "q", "qdot", "qddot"):
        for i, a in enumerate(per.get(key, [])):
            bad = ~np.isfinite(a)
            if bad.any():
                s, c = (int(np.argwhere(bad)[0][0]), 0) if a.ndim == 1 else map(int, np.argwhere(bad)[0])
                column = "t" if key == "t" else f"{key}_{names[c]}"
                raise DataFileError(path, f"{where(i)}, sample {s}, column {column!r}{at(i, s)}: value is {a[s] if a.ndim == 1 else a[s, c]} "
                                    "(every value of a trajectory's samples must be finite)")
    medians = []
    for i, t in enumerate(per["t"]):
        steps = np.diff(t)
        bad = np.flatnonzero(steps <= 0)
        if len(bad):
            s = int(bad[0]) + 1
            raise DataFileError(path, f"{where(i)}: time is not increasing at sample {s}{at(i, s)} (t = {t[s]:.6g} after {t[s - 1]:.6g})")
        median = float(np.median(steps))
        deviation = np.abs(steps - median) / median
        if deviation.max() > DT_TOLERANCE:
            first = int(np.flatnonzero(deviation > DT_TOLERANCE)[0]) + 1
            raise DataFileError(path, f"{where(i)} is not uniformly sampled: its time steps deviate from their median "
                                f"({median:.6g} s) by up to {100 * deviation.max():.3g} % (first at sample {first}{at(i, first)}); "
                                f"resample it onto a uniform grid (tolerance {100 * DT_TOLERANCE:g} %)")
        medians.append(median)
    dt = float(np.median(medians))
    for i, m in enumerate(medians):
        if abs(m - dt) / dt > DT_TOLERANCE:
            raise DataFileError(path, f"{where(i)} is sampled every {m:.6g} s, the file's trajectories every {dt:.6g} s; "
                                f"one file needs one sampling step (tolerance {100 * DT_TOLERANCE:g} %)")
    as_tuple = lambda key: tuple(per[key]) if key in per else None  # noqa: E731
    return TrajectoryFile(str(path), sha, tuple(ids), tuple(names), tuple(bool(a) for a in angles),
                          tuple(per["t"]), tuple(per["q"]), as_tuple("qdot"), as_tuple("qddot"), dt)


# ----------------------------------------------------------------------------- writing


def write_trajectory_file(path: str | os.PathLike, t: Sequence[np.ndarray], q: Sequence[np.ndarray],
                          qdot: Sequence[np.ndarray] | None = None, qddot: Sequence[np.ndarray] | None = None,
                          names: Sequence[str] | None = None, angles: Sequence[bool] | None = None) -> Path:
    """Write trajectories (t[i] [T_i], q[i] [T_i, n], ...) as .npz (padded with NaN plus
    `lengths`) or long .csv, by the path's suffix; `read_trajectory_file` reads them back."""
    path = Path(path)
    n = np.asarray(q[0]).shape[1]
    names = tuple(names) if names is not None else tuple(f"q{j + 1}" for j in range(n))
    angles = tuple(bool(a) for a in angles) if angles is not None else (False,) * n
    extra = {k: v for k, v in (("qdot", qdot), ("qddot", qddot)) if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npz":
        lengths = np.array([len(x) for x in t])
        steps = int(lengths.max())

        def pad(items, shape):
            out = np.full((len(items), steps, *shape), np.nan)
            for i, a in enumerate(items):
                out[i, : len(a)] = a
            return out

        arrays = {"t": pad(t, ()), "q": pad(q, (n,)), "lengths": lengths, "names": np.array(names), "angles": np.array(angles)}
        arrays.update({k: pad(v, (n,)) for k, v in extra.items()})
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path
    if path.suffix.lower() != ".csv":
        raise DataFileError(path, f"unknown format {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    with open(path, "w", newline="") as f:
        if any(angles):
            f.write(f"# angles: {', '.join(x for x, a in zip(names, angles) if a)}\n")
        w = csv.writer(f)
        w.writerow(["trajectory", "t", *(f"{k}_{x}" for k in ("q", *extra) for x in names)])
        for i in range(len(t)):
            blocks = [np.asarray(q[i]), *(np.asarray(v[i]) for v in extra.values())]
            for s in range(len(t[i])):
                w.writerow([i, repr(float(t[i][s])), *(repr(float(x)) for b in blocks for x in b[s])])
    return path
