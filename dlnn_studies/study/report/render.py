"""Renderers of a report record: Markdown (also the dashboard note) and one self-contained HTML page.
They format what the record holds and nothing else."""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Callable

from .evidence import Claim
from .record import Claims, Figure, Record, Table, Text


def cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "inf"
        return f"{v:.3g}"
    return str(v)


def _claim_row(c: Claim) -> list[str]:
    n = ", ".join(f"{k}: {v}" for k, v in c.n.items())
    return [c.statement + (" *(seeds)*" if c.source == "seeds" else ""), f"**{c.label}**", n, c.settle or ""]


CLAIM_HEADERS = ("claim", "grade", "n", "what would settle it")


def _rows(item: Table | Claims) -> tuple[tuple[str, ...], list[list[str]]]:
    if isinstance(item, Claims):
        return CLAIM_HEADERS, [_claim_row(c) for c in item.claims]
    percent = [h.endswith(" %") for h in item.headers]
    return item.headers, [[f"{v:.0f} %" if pc and isinstance(v, float) and v == v else cell(v) for v, pc in zip(r, percent)]
                          for r in item.rows]


def to_markdown(record: Record, figure_url: Callable[[Figure], str]) -> str:
    out = [f"# Study {record.study}: what it answers"]
    if record.description:
        out.append(record.description)
    for s in record.sections:
        out.append(f"## {s.title}")
        for item in s.items:
            if isinstance(item, Text):
                out.append(item.text)
            elif isinstance(item, (Table, Claims)):
                headers, rows = _rows(item)
                lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif isinstance(item, Figure):
                out.append(f"![{item.caption}]({figure_url(item)})\n\n*{item.caption}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Markdown's **bold**, *italic* and `code` in HTML (the only inline marks the sections use)."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


GRADE_COLOURS = {"established": "#d7f0d7", "suggestive": "#fdf1c7", "undetermined": "#eeeeee"}


def to_html(record: Record, figure_path: Callable[[Figure], Path], title: str) -> str:
    body = [f"<h1>{html.escape(f'Study {record.study}: what it answers')}</h1>"]
    if record.description:
        body.append(f"<p>{_inline(record.description)}</p>")
    for s in record.sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        for item in s.items:
            if isinstance(item, Text):
                body.append(f"<p>{_inline(item.text)}</p>")
            elif isinstance(item, (Table, Claims)):
                headers, rows = _rows(item)
                head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
                trs = []
                for i, r in enumerate(rows):
                    style = ""
                    if isinstance(item, Claims):
                        g = item.claims[i].grade
                        style = f' style="background:{GRADE_COLOURS.get(g, "#e6eefb")}"'
                    trs.append(f"<tr{style}>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>")
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>")
            elif isinstance(item, Figure):
                data = base64.b64encode(figure_path(item).read_bytes()).decode()
                body.append(f'<figure><img alt="{html.escape(item.caption)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{html.escape(item.caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}"
             "th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f0f0f0}"
             "img{max-width:100%}figcaption{font-style:italic;font-size:13px}h2{margin-top:1.6em;border-bottom:1px solid #ddd}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")


def headline(record: Record) -> str:
    """The terminal's short answer: the Answers' one-line summaries and the tally of grades."""
    answers = next((s for s in record.sections if s.title == "Answers"), None)
    lines = []
    t = record.tally
    lines.append(f"{sum(t.values())} claims: {t.get('established', 0)} established, {t.get('suggestive', 0)} suggestive, "
                 f"{t.get('no effect larger than', 0)} no effect larger than a bound, {t.get('undetermined', 0)} undetermined")
    if answers:
        for item in answers.items:
            if isinstance(item, Text) and item.text.startswith("**") and "How to read" not in item.text:
                lines.append("  " + item.text.replace("**", ""))
    return "\n".join(lines)
