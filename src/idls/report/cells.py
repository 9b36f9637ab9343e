"""Table cells: how the terminal and HTML tables show a value, and why a cell is empty.

A summary value is NaN when there was nothing to average, e.g. the confidence of an attack with
no successful image (:data:`idls.evaluate.MISSING_REASONS` says why, per field). Tables show such
a cell as :data:`MISSING` and give the reason in a note below the table, never ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from idls.evaluate import MISSING_REASONS

MISSING = "-"  #: what an empty cell shows
#: the reason given for an empty cell of a field :data:`~idls.evaluate.MISSING_REASONS` does not name
UNKNOWN_REASON = "no value"


def is_missing(value: object) -> bool:
    """Whether ``value`` is an empty cell (``None`` or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_cell(value: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals, :data:`MISSING` for ``None`` / NaN, anything else as text."""
    if is_missing(value):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def missing_notes(rows: Iterable[Mapping], fields: Sequence[str], labels: Mapping[str, str] | None = None) -> list[str]:
    """One note per field with an empty cell in ``rows``: ``'- in confidence: no successful image'``.

    Args:
        rows: the table's rows (summary dicts), keyed by field name.
        fields: the fields the table shows, in column order.
        labels: the column heading of a field where it differs from the field name.
    """
    rows = list(rows)
    notes = []
    for name in fields:
        if any(name in row and is_missing(row[name]) for row in rows):
            heading = (labels or {}).get(name, name)
            notes.append(f"{MISSING} in {heading}: {MISSING_REASONS.get(name, UNKNOWN_REASON)}")
    return notes


__all__ = ["MISSING", "UNKNOWN_REASON", "format_cell", "is_missing", "missing_notes"]
