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
    from plotly.subplots import make_subplots

    out = {}
    imp = _find(record, "Importances", Table)
    if imp is not None and imp.rows:
        names = [r[0] for r in imp.rows][::-1]
        mid = [r[1] for r in imp.rows][::-1]
        lo = [r[1] - r[2] for r in imp.rows][::-1]
        hi = [r[3] - r[1] for r in imp.rows][::-1]
        fig = go.Figure(go.Bar(x=mid, y=names, orientation="h", error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}))
        fig.update_layout(title="Importance (report: fANOVA on the equal-fidelity scores, pruned and diverged included; "
                                "bars: 10–90 % over bootstrap resamples)", xaxis_title="share of variance", height=120 + 40 * len(names))
        out["dlnn-importance"] = fig
    lr = _find(record, "Learning-rate", Figure)
    if lr is not None and lr.data["panels"]:
        panels = lr.data["panels"]
        cols = min(3, len(panels))
        rows = -(-len(panels) // cols)
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p["optimizer"] for p in panels])
        for i, p in enumerate(panels):
            r, c = i // cols + 1, i % cols + 1
            for key, name, marker in (("complete", "completed", {"color": "#1f77b4"}),
                                      ("pruned", "pruned (best before the cut)", {"color": "#ff7f0e", "symbol": "circle-open"})):
                if p[key]:
                    fig.add_trace(go.Scatter(x=[x for x, _ in p[key]], y=[y for _, y in p[key]], mode="markers", name=name,
                                             marker=marker, showlegend=i == 0, legendgroup=key), row=r, col=c)
            if p["diverged"]:
                top = max([y for _, y in p["complete"] + p["pruned"]], default=1.0) * 3
                fig.add_trace(go.Scatter(x=p["diverged"], y=[top] * len(p["diverged"]), mode="markers", name="diverged",
                                         marker={"color": "#d62728", "symbol": "x"}, showlegend=i == 0, legendgroup="diverged"), row=r, col=c)
            if p["band"]:
                fig.add_vrect(x0=p["band"][0], x1=p["band"][1], fillcolor="green", opacity=0.12, line_width=0, row=r, col=c)
            fig.update_xaxes(type="log", title_text="learning rate", row=r, col=c)
            fig.update_yaxes(type="log", title_text=lr.data["metric"] if c == 1 else None, row=r, col=c)
        fig.update_layout(title=f"{lr.data['metric']} against the learning rate, per optimizer (shaded: the report's band)",
                          height=320 * rows)
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
        fig.update_layout(title="History (report): every judged trial by number", xaxis_title="trial number")
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
