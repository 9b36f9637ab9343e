"""Figures and self-contained HTML reports."""

from idls.report.figures import map_grid_png, overlay_png
from idls.report.html import Section, render_report, table_html

__all__ = ["Section", "map_grid_png", "overlay_png", "render_report", "table_html"]
