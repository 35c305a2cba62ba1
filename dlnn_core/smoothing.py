"""(q, q̇, q̈) estimated from sampled, noisy positions: the training targets when only q is observed.

Two estimators, chosen by `data.derivatives`:
- "savgol": a Savitzky–Golay filter (a local polynomial over `savgol_window` samples). Fast; at a low
  sampling rate it flattens fast motion, so its q̈ is biased even on exact data.
- "spline": one cubic smoothing spline per trajectory and coordinate. Its smoothing follows the
  discrepancy principle where the noise level is known (residual sum of squares = T·σ², σ the noise
  generated data was given: `data.noise` on the training split, 0 on the others, which it then
  interpolates), and is chosen by generalized cross-validation (GCV) for a user's trajectory file,
  whose noise is unknown (σ = None).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import choose

States = tuple[np.ndarray, np.ndarray, np.ndarray]  # q, q̇, q̈


def savgol(q: np.ndarray, dt: float, cfg: Any, noise: float | None = None) -> States:
    """q [..., T, n] (time on axis −2) -> smoothed q, q̇, q̈ from one Savitzky–Golay fit; the window is
    clipped to the trajectory's length (an odd number of samples)."""
    from scipy.signal import savgol_filter

    t = q.shape[-2]
    window = min(cfg.savgol_window, t - (1 - t % 2))
    fit = lambda deriv: savgol_filter(q, window, cfg.savgol_order, deriv=deriv, delta=dt, axis=-2)  # noqa: E731
    return fit(0), fit(1), fit(2)


def spline(q: np.ndarray, dt: float, cfg: Any, noise: float | None = None) -> States:
    """q [..., T, n] -> q, q̇, q̈ of a cubic smoothing spline per series, smoothed for observation
    noise of std `noise` (None: unknown; see the module docstring)."""
    from scipy.interpolate import make_smoothing_spline, make_splrep

    t = np.arange(q.shape[-2]) * dt
    series = np.moveaxis(q, -2, -1).reshape(-1, q.shape[-2])  # [..., n, T] -> [S, T]
    out = np.empty((3,) + series.shape)
    for i, y in enumerate(series):
        s = make_smoothing_spline(t, y) if noise is None else make_splrep(t, y, k=3, s=len(t) * noise**2)
        out[:, i] = s(t), s.derivative(1)(t), s.derivative(2)(t)
    shape = q.shape[:-2] + (q.shape[-1], q.shape[-2])
    q_s, v, a = (np.moveaxis(x.reshape(shape), -1, -2) for x in out)
    return q_s, v, a


ESTIMATORS: dict[str, Callable[..., States]] = {"savgol": savgol, "spline": spline}


def estimate(cfg: Any, q: np.ndarray, dt: float, noise: float | None) -> States:
    """The estimator `cfg.derivatives` names, applied along the time axis (−2) of q observed with
    noise of std `noise` (None: unknown)."""
    return choose(ESTIMATORS, cfg.derivatives, "data.derivatives")(q, dt, cfg, noise)
