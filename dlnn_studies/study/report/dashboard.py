"""The report's own views on optuna-dashboard's study page (plotly figures saved to the study).

The dashboard's built-in panels cannot be made to agree with the report: its importance is fANOVA
over completed trials' raw parameters (d0 from the few trials that drew it, `lr_position` rather than
the learning rate), its history plots log10 values and its parameter plots show `lr_position`. These
views draw the record's numbers instead: importance with its bootstrap range, the objective against
the actual learning rate per optimizer, and the history with pruned and diverged trials marked.
Each is saved under a fixed id, so a new report replaces them."""

from __future__ import annotations

from typing import Any

from .record import Figure, Record, Table

VIEW_IDS = ("dlnn-importance", "dlnn-lr", "dlnn-history")


def _find(record: Record, title_start: str, kind: type) -> Any:
    for s in record.sections:
        if s.title.startswith(title_start):
            for item in s.items:
                if isinstance(item, kind):
                    return item
    return None


def views(record: Record) -> dict[str, Any]:
    """{view id: plotly Figure} for what the record has."""
    import plotly.graph_objects as go

    out = {}
    imp = _find(record, "Importances", Table)
    if imp is not None and imp.rows:
        names = [r[0] for r in imp.rows][::-1]
        mid = [r[1] for r in imp.rows][::-1]
        lo = [r[1] - r[2] for r in imp.rows][::-1]
        hi = [r[3] - r[1] for r in imp.rows][::-1]
        fig = go.Figure(go.Bar(x=mid, y=names, orientation="h", error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
        fig.update_layout(title="Importance (report; bars: 10–90 % range)", xaxis_title="share of variance (fANOVA, pruned and diverged included)")
        out["dlnn-importance"] = fig
    lr = _find(record, "Learning-rate", Figure)
    if lr is not None and lr.data["panels"]:
        fig = go.Figure()  # one panel (a dashboard card is small): lr in units of each optimizer's registry default
        colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
        values = [y for p in lr.data["panels"] for _, y in p["complete"] + p["pruned"]]
        top = max(values, default=1.0) * 3
        for i, p in enumerate(lr.data["panels"]):
            unit = p.get("default") or 1.0
            c = colours[i % len(colours)]
            for key, marker in (("complete", {"color": c}), ("pruned", {"color": c, "symbol": "circle-open"})):
                if p[key]:
                    fig.add_trace(go.Scatter(x=[x / unit for x, _ in p[key]], y=[y for _, y in p[key]], mode="markers",
                                             name=f"{p['optimizer']} {'completed' if key == 'complete' else 'pruned'}", marker=marker,
                                             legendgroup=p["optimizer"]))
            if p["diverged"]:
                fig.add_trace(go.Scatter(x=[x / unit for x in p["diverged"]], y=[top] * len(p["diverged"]), mode="markers",
                                         name=f"{p['optimizer']} diverged", marker={"color": c, "symbol": "x"}, legendgroup=p["optimizer"]))
        fig.update_xaxes(type="log", title_text="learning rate / the optimizer's registry default")
        fig.update_yaxes(type="log", title_text=lr.data["metric"])
        fig.update_layout(title=f"{lr.data['metric']} vs learning rate (report)")
        out["dlnn-lr"] = fig
    hist = next((f for s in record.sections for f in s.items if isinstance(f, Figure) and f.name == "history"), None)
    if hist is not None:
        pts = hist.data["points"]
        top = max([v for _, v, _ in pts if v], default=1.0) * 3
        fig = go.Figure()
        for outcome, name, marker in (("complete", "completed", {"color": "#1f77b4"}),
                                      ("pruned", "pruned (best before the cut)", {"color": "#ff7f0e", "symbol": "circle-open"})):
            sel = [(n, v) for n, v, o in pts if o == outcome and v]
            if sel:
                fig.add_trace(go.Scatter(x=[n for n, _ in sel], y=[v for _, v in sel], mode="markers", name=name, marker=marker))
        bad = [n for n, _, o in pts if o in ("diverged", "failed")]
        if bad:
            fig.add_trace(go.Scatter(x=bad, y=[top] * len(bad), mode="markers", name="diverged or failed",
                                     marker={"color": "#d62728", "symbol": "x"}))
        fig.update_yaxes(type="log", title_text=hist.data["metric"] + " (its own units)")
        fig.update_layout(title="History (report; x: diverged)", xaxis_title="trial number")
        out["dlnn-history"] = fig
    return out


def save_views(study, record: Record) -> list[str]:
    """Save the report's views onto the study's dashboard page; returns the ids saved."""
    from optuna_dashboard import save_plotly_graph_object

    saved = []
    for view_id, fig in views(record).items():
        save_plotly_graph_object(study, fig, graph_object_id=view_id)
        saved.append(view_id)
    return saved
