"""Self-contained HTML reports: tables and base64-embedded PNG figures in one file."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from jinja2 import Environment, select_autoescape

from idls.report.cells import format_cell, is_missing, missing_notes


@dataclass
class Section:
    """One report section: a heading, optional prose, tables (HTML) and PNG figures."""

    title: str
    text: str = ""
    tables: list[str] = field(default_factory=list)
    figures: list[bytes] = field(default_factory=list)

    def figure_uris(self) -> list[str]:
        return ["data:image/png;base64," + base64.b64encode(png).decode() for png in self.figures]


def _fmt(value) -> str:
    if isinstance(value, float) and not is_missing(value) and abs(value) >= 1000:
        return f"{value:.0f}"
    return html.escape(format_cell(value))


def table_html(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """An HTML table from a list of dicts (columns default to the first row's keys)."""
    if not rows:
        return "<p><em>no rows</em></p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in missing_notes(rows, columns))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"


def render_report(path: Path, title: str, sections: Sequence[Section], meta: Mapping[str, str] | None = None) -> Path:
    """Write a self-contained ``report.html`` (no external assets)."""
    env = Environment(autoescape=select_autoescape(["html"]))
    template = env.from_string(resources.files("idls.report").joinpath("templates/report.html").read_text())
    page = template.render(
        title=title,
        sections=[{"s": s, "uris": s.figure_uris()} for s in sections],
        meta=dict(meta or {}),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
