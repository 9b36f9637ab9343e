"""The scorecard file as reports read it: its name, how to read it, and how a verdict is shown.

``idls reproduce`` (:mod:`idls.reproduce.scorecard`) writes the file; reports only read it, so the
report layer never imports the reproduction layer above it.
"""

from __future__ import annotations

import json
from pathlib import Path

SCORECARD_FILE = "scorecard.json"
NOT_RUN = "not run"


def verdict(passed: bool | None) -> str:
    """``'PASS'``, ``'FAIL'`` or ``'NOT RUN'`` for a claim's ``pass`` value."""
    return NOT_RUN.upper() if passed is None else ("PASS" if passed else "FAIL")


def row_verdict(row: dict) -> str:
    """A scorecard row's verdict, with ``' (partial run)'`` when the row says it is not settled (a partial
    reproduction whose missing cells could still change it)."""
    word = verdict(row.get("pass"))
    return word + (" (partial run)" if row.get("pass") is not None and row.get("settled") is False else "")


def read_scorecard(path: Path) -> list[dict] | None:
    """The scorecard at ``path``, or ``None`` when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


__all__ = ["NOT_RUN", "SCORECARD_FILE", "read_scorecard", "row_verdict", "verdict"]
