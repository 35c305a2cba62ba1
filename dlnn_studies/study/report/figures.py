"""Draws a record's figures (record.Figure) as PNGs: each drawing reads only the figure's data.
Every figure puts its legend outside the data, marks pruned and diverged trials, and labels log
axes with readable ticks."""

from __future__ import annotations

import math
from pathlib import Path

from .record import Figure

DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _log_axes(ax, x: bool = True, y: bool = True) -> None:
    """Log axes with labelled decades and unlabelled minor ticks (a span under a decade still gets two labels)."""
    from matplotlib.ticker import LogLocator, NullFormatter

    for on, axis, scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if not on:
            continue
        scale("log")
        axis.set_major_locator(LogLocator(base=10, numticks=8))
        axis.set_minor_locator(LogLocator(base=10, subs=(0.2, 0.4, 0.6, 0.8), numticks=12))
        axis.set_minor_formatter(NullFormatter())
        lo, hi = (ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
        if lo > 0 and hi / lo < 10:  # less than a decade: label the ends so the axis is readable
            from matplotlib.ticker import FixedLocator, FuncFormatter

            axis.set_major_locator(FixedLocator([lo * (hi / lo) ** f for f in (0.1, 0.5, 0.9)]))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))


def draw(fig: Figure, folder: Path) -> Path:
    """The PNG of one figure in `folder`, named after it."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    canvas = DRAW[fig.name](plt, fig.data)
    path = folder / f"{fig.name}.png"
    canvas.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(canvas)
    return path


def _lr(plt, data: dict):
    panels = data["panels"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    canvas, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    values = [v for p in panels for _, v in p["complete"] + p["pruned"] if v and v > 0]
    top = max(values, default=1.0) * 3
    bottom = min(values, default=1e-3) / 3
    for ax, p in zip(axes.flat, panels):
        if p["band"]:
            ax.axvspan(*p["band"], color="C2", alpha=0.15, lw=0)
        if p["range"]:
            for x in p["range"]:
                ax.axvline(x, color="0.5", ls=":", lw=1)
        if p["complete"]:
            ax.scatter(*zip(*p["complete"]), s=20, color="C0", label="completed")
        if p["pruned"]:
            ax.scatter(*zip(*p["pruned"]), s=18, facecolors="none", edgecolors="C1", linewidths=0.9, label="pruned (best before the cut)")
        if p["diverged"]:
            ax.scatter(p["diverged"], [top] * len(p["diverged"]), marker="x", color="C3", s=28, label="diverged")
        ax.set_ylim(bottom, top * 1.6)
        lrs = [x for x, _ in p["complete"] + p["pruned"]] + p["diverged"] + (p["range"] or [])
        if lrs:
            ax.set_xlim(min(lrs) / 1.5, max(lrs) * 1.5)
        _log_axes(ax)
        ax.set_title(f"{p['optimizer']} ({len(p['complete'])} completed, {len(p['pruned'])} pruned, {len(p['diverged'])} diverged)", fontsize=9)
        ax.set_xlabel("lr multiplier of d" if p["optimizer"].startswith(("dadapt", "prodigy")) else "learning rate", fontsize=8)
        ax.set_ylabel(data["metric"], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    _legend_below(canvas, axes)
    return canvas


def _legend_below(canvas, axes) -> None:
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        canvas.tight_layout(rect=(0, 0.08, 1, 1))
        canvas.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    del labels


def _dadaptation(plt, data: dict):
    canvas, axes = plt.subplots(1, 2, figsize=(9, 3.4), squeeze=False)
    values = [p[2] for p in data["complete"] + data["pruned"] if p[2] and p[2] > 0]
    top = max(values, default=1.0) * 3
    for ax, i, label in ((axes[0, 0], 0, "d0"), (axes[0, 1], 1, "lr multiplier of d")):
        if data["complete"]:
            ax.scatter([p[i] for p in data["complete"]], [p[2] for p in data["complete"]], s=20, color="C0", label="completed")
        if data["pruned"]:
            ax.scatter([p[i] for p in data["pruned"]], [p[2] for p in data["pruned"]], s=18, facecolors="none", edgecolors="C1",
                       linewidths=0.9, label="pruned (best before the cut)")
        if data["diverged"]:
            ax.scatter([p[i] for p in data["diverged"]], [top] * len(data["diverged"]), marker="x", color="C3", s=28, label="diverged")
        _log_axes(ax)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel(data["metric"], fontsize=8)
        ax.tick_params(labelsize=7)
    _legend_below(canvas, axes)
    return canvas


def _rollouts(plt, data: dict):
    canvas, ax = plt.subplots(figsize=(8, 3.6))
    t = data["t"]
    for i, (label, m) in enumerate(data["models"].items()):
        mean = [v if v and v > 0 else float("nan") for v in m["mean"]]
        ax.plot(t[1:], mean[1:], color=f"C{i}", lw=1.6, label=label)
        low = [v if v and v > 0 else float("nan") for v in m["low"]]
        high = [v if v and v > 0 else float("nan") for v in m["high"]]
        ax.fill_between(t[1:], low[1:], high[1:], color=f"C{i}", alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("t [s]")
    ax.set_ylabel("state error (q wrapped, q̇)")
    ax.set_title(f"held-out test rollouts ({data.get('trajectories', '?')} trajectories)", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return canvas


def _history(plt, data: dict):
    canvas, ax = plt.subplots(figsize=(8, 3.2))
    pts = data["points"]
    values = [v for _, v, _ in pts if v and v > 0]
    top = max(values, default=1.0) * 3
    done = [(n, v) for n, v, o in pts if o == "complete" and v]
    cut = [(n, v) for n, v, o in pts if o == "pruned" and v]
    bad = [n for n, _, o in pts if o in ("diverged", "failed")]
    if done:
        ax.scatter(*zip(*done), s=14, color="C0", label="completed")
    if cut:
        ax.scatter(*zip(*cut), s=12, facecolors="none", edgecolors="C1", linewidths=0.8, label="pruned (best before the cut)")
    if bad:
        ax.scatter(bad, [top] * len(bad), marker="x", color="C3", s=22, label="diverged or failed")
    ax.set_yscale("log")
    ax.set_xlabel("trial number")
    ax.set_ylabel(data["metric"])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return canvas


DRAW = {"history": _history, "lr_tolerance": _lr, "dadaptation": _dadaptation, "rollouts": _rollouts}
