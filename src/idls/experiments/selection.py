"""Run part of an experiment's grid: cell selectors (``idls run --cells``, ``idls reproduce --cells``).

A selector is ``KEY=PATTERN[,KEY=PATTERN...]``: a cell matches when every pair matches (shell-style
patterns, case-sensitive); several selectors match a cell when any of them does::

    --cells framework=cw,interpreter=cam          # the C&W cells against CAM
    --cells 'variant=R-JUAP*' --cells attack=sgd-uap

Selecting cells never changes the store's configuration or the cells' identities: the selected cells are
the very cells of the whole grid, so their records are the whole run's records for those cells, and the
same command without ``--cells`` later runs the rest into the same store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from idls.errors import UserError
from idls.experiments.cells import Cell

#: selector keys -> how to read them from a cell
SELECTOR_FIELDS: Mapping[str, str] = {
    "id": "id", "model": "model", "attack": "attack", "framework": "framework", "target": "target",
    "interpreter": "attacked_interpreter", "variant": "variant", "training": "training", "seed": "seed",
}


@dataclass(frozen=True)
class CellSelector:
    """One ``KEY=PATTERN,...`` selector: every pair must match."""

    text: str
    pairs: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> CellSelector:
        """Parse ``KEY=PATTERN[,KEY=PATTERN...]``; a one-line :class:`UserError` names a malformed or unknown key."""
        pairs = []
        for item in (part.strip() for part in text.split(",")):
            key, sep, pattern = item.partition("=")
            key = key.strip()
            if not sep or not key or not pattern.strip():
                raise UserError(f"--cells {text!r} is not KEY=PATTERN; write KEY=PATTERN pairs separated by commas, "
                                "e.g. --cells framework=cw,interpreter=cam")
            if key not in SELECTOR_FIELDS:
                raise UserError(f"--cells {text!r}: unknown key {key!r}; choose from {', '.join(SELECTOR_FIELDS)}")
            pairs.append((key, pattern.strip()))
        return cls(text, tuple(pairs))

    def matches(self, cell: Cell) -> bool:
        return all(fnmatchcase(str(getattr(cell, SELECTOR_FIELDS[key])), pattern) for key, pattern in self.pairs)


def select_cells(cells: Sequence[Cell], selectors: Sequence[str]) -> list[Cell]:
    """The cells matching any of ``selectors`` (in grid order); all of them when there is no selector.

    Raises:
        UserError: a selector is malformed, or matches no cell (the message lists what the grid has).
    """
    if not selectors:
        return list(cells)
    parsed = [CellSelector.parse(text) for text in selectors]
    for selector in parsed:
        if not any(selector.matches(cell) for cell in cells):
            raise UserError(f"--cells {selector.text!r} matches no cell of this experiment, whose cells have "
                            f"{describe_grid(cells)}; pick from those values")
    return [cell for cell in cells if any(selector.matches(cell) for selector in parsed)]


def describe_grid(cells: Sequence[Cell]) -> str:
    """``attack=adv2|pgd, framework=...``: the values each selector key takes in ``cells`` (``id`` left out)."""
    parts = []
    for key, attribute in SELECTOR_FIELDS.items():
        values = sorted({str(getattr(cell, attribute)) for cell in cells} - {"None", ""})
        if key != "id" and values:
            parts.append(f"{key}={'|'.join(values)}")
    return ", ".join(parts)


__all__ = ["SELECTOR_FIELDS", "CellSelector", "describe_grid", "select_cells"]
