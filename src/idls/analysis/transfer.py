"""Transferability matrices (paper 001 Table 9, paper 000 Table IV) and transfer across models.

Interpreter transfer: adversarial images crafted against interpreter ``g`` (row) are explained by
interpreter ``g'`` (column) and compared with ``g'``'s benign map; a cell is the mean of a record
metric (``map_iou`` = IoU@20% or ``map_l1``) over those records. The diagonal is the attack's own
result. A baseline row holds the classifier-only attack of the same framework (Table 9's PGD row).

Model transfer: the share of a cell's adversarial images that also succeed on another model
(``kind: model_transfer`` records); the source model's own column is the white-box success.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from idls.analysis.groups import (
    CONTEXT_KEYS,
    INTERPRETER_ORDER,
    NONE,
    family,
    group_records,
    label,
    mean_field,
    ordered,
)

SCOPE_KEYS: tuple[str, ...] = (*CONTEXT_KEYS, "model", "attack", "framework", "target")
TITLE_KEYS: tuple[str, ...] = ("experiment", "model", "attack", "framework", "target")


@dataclass
class Matrix:
    """A labelled matrix of means: ``values[i][j]`` over ``counts[i][j]`` records (NaN where empty)."""

    rows: list[str]
    columns: list[str]
    values: list[list[float]]
    counts: list[list[int]]

    def get(self, row: str, column: str) -> float:
        if row not in self.rows or column not in self.columns:
            return math.nan
        return self.values[self.rows.index(row)][self.columns.index(column)]


@dataclass
class ScopedMatrix:
    """A matrix with the key fields that define its scope (model, attack, framework, target, ...)."""

    scope: dict
    matrix: Matrix

    @property
    def title(self) -> str:
        """Experiment, model, attack, framework and target of the scope."""
        return label(self.scope.get(k) for k in TITLE_KEYS)


def mean_matrix(records: Iterable[Mapping], row_of, column_of, value_of, rows: Sequence[str], columns: Sequence[str]) -> Matrix:
    """Mean of ``value_of(record)`` per (``row_of(record)``, ``column_of(record)``) cell; NaN values skipped."""
    sums = [[0.0] * len(columns) for _ in rows]
    counts = [[0] * len(columns) for _ in rows]
    for r in records:
        i, j, value = row_of(r), column_of(r), value_of(r)
        if i not in rows or j not in columns or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        sums[rows.index(i)][columns.index(j)] += float(value)
        counts[rows.index(i)][columns.index(j)] += 1
    values = [[s / c if c else math.nan for s, c in zip(srow, crow, strict=True)]
              for srow, crow in zip(sums, counts, strict=True)]
    return Matrix(list(rows), list(columns), values, counts)


def interpreter_transfer_matrix(records: Sequence[Mapping], metric: str = "map_iou") -> Matrix:
    """Rows = attacked interpreter, columns = evaluated interpreter, cells = mean ``metric``.

    ``records`` should belong to one scope (one model, attack, framework and target).
    """
    rows = ordered((str(r["attacked_interpreter"]) for r in records), INTERPRETER_ORDER)
    columns = ordered((str(r["interpreter"]) for r in records), INTERPRETER_ORDER)
    return mean_matrix(records, lambda r: str(r["attacked_interpreter"]), lambda r: str(r["interpreter"]), lambda r: r.get(metric), rows, columns)


def baseline_label(framework: str) -> str:
    return f"{framework} (no interpreter)"


def interpreter_transfer_matrices(records: Sequence[Mapping], metric: str = "map_iou") -> list[ScopedMatrix]:
    """One matrix per joint-attack scope that has transfer records, with the classifier-only baseline row.

    A scope is (experiment, data, epsilon, mode, model, attack, framework, target). The baseline row
    comes from the classifier-only attack of the same framework in the same experiment and model.
    """
    joint = [r for r in records if str(r.get("attacked_interpreter", NONE)) != NONE]
    plain = [r for r in records if str(r.get("attacked_interpreter", NONE)) == NONE]
    plain_by_scope = group_records(plain, (*CONTEXT_KEYS, "model", "framework"))
    out = []
    for key, group in group_records(joint, SCOPE_KEYS).items():
        if all(r["attacked_interpreter"] == r["interpreter"] for r in group):
            continue  # no transfer records in this scope
        scope = dict(zip(SCOPE_KEYS, key, strict=True))
        matrix = interpreter_transfer_matrix(group, metric)
        baseline = plain_by_scope.get(tuple(scope[k] for k in (*CONTEXT_KEYS, "model", "framework")), [])
        if baseline:
            row = [mean_field([r for r in baseline if r.get("interpreter") == c], metric) for c in matrix.columns]
            count = [sum(1 for r in baseline if r.get("interpreter") == c) for c in matrix.columns]
            matrix.rows.append(baseline_label(str(scope["framework"])))
            matrix.values.append(row)
            matrix.counts.append(count)
        out.append(ScopedMatrix(scope, matrix))
    return out


@dataclass(frozen=True)
class RowTransfer:
    """One attacked interpreter's own result (diagonal) against its transfer to other families."""

    row: str
    diagonal: float
    off_diagonal: float
    columns: tuple[str, ...]


def row_transfer(matrix: Matrix, row: str, *, other_families_only: bool = True) -> RowTransfer:
    """Diagonal value and mean off-diagonal value of ``row`` (NaN cells skipped).

    With ``other_families_only`` the off-diagonal mean covers only interpreters of another family
    (CAM and Grad-CAM nearly coincide on a GAP network; paper 001 compares one per family).
    """
    columns = [
        c for c in matrix.columns
        if c != row and not (other_families_only and family(c) == family(row)) and not math.isnan(matrix.get(row, c))
    ]
    values = [matrix.get(row, c) for c in columns]
    off = sum(values) / len(values) if values else math.nan
    return RowTransfer(row, matrix.get(row, row), off, tuple(columns))


def row_by_image(records: Iterable[Mapping], row: str, columns: Sequence[str], metric: str) -> dict[tuple, float]:
    """Per image, the mean ``metric`` of attacked interpreter ``row`` over ``columns`` (the row's off-diagonal).

    Keys are ``(image_id, seed)``; only images that every column evaluated (with a value) count, so
    that each image's mean covers the same interpreters as :func:`row_transfer`'s.
    """
    values: dict[tuple, dict[str, float]] = {}
    for r in records:
        value = r.get(metric)
        if (str(r.get("attacked_interpreter")) != row or r.get("interpreter") not in columns
                or not isinstance(value, (int, float)) or math.isnan(float(value))):
            continue
        values.setdefault((r.get("image_id"), r.get("seed")), {})[str(r["interpreter"])] = float(value)
    return {key: sum(by_column.values()) / len(by_column) for key, by_column in values.items()
            if len(by_column) == len(columns)}


def model_transfer_matrix(attack_records: Sequence[Mapping], transfer_records: Sequence[Mapping]) -> Matrix | None:
    """Success rate of each cell's adversarial images on every model (rows: source model and attack).

    The source model's own column is the white-box success of the cell (one vote per image, however
    many interpreters evaluated it). ``None`` when there are no model-transfer records.
    """
    if not transfer_records:
        return None
    row_keys = ("experiment", "attack", "framework", "target", "attacked_interpreter")

    def row_of(r: Mapping, source: str) -> str:
        return label([source, *(r.get(k) for k in row_keys if r.get(k) not in (NONE,))])

    cells_with_transfer = {r.get("cell") for r in transfer_records}
    white_box = {}
    for r in attack_records:
        if r.get("cell") in cells_with_transfer:
            white_box.setdefault((r.get("cell"), r.get("image_id")), r)
    entries = [(row_of(r, str(r["model"])), str(r["model"]), bool(r["success"])) for r in white_box.values()]
    entries += [(row_of(r, str(r["source_model"])), str(r["model"]), bool(r["success"])) for r in transfer_records]
    rows = ordered(e[0] for e in entries)
    columns = ordered(e[1] for e in entries)
    return mean_matrix(entries, lambda e: e[0], lambda e: e[1], lambda e: float(e[2]), rows, columns)


__all__ = [
    "Matrix",
    "RowTransfer",
    "ScopedMatrix",
    "baseline_label",
    "interpreter_transfer_matrices",
    "interpreter_transfer_matrix",
    "mean_matrix",
    "model_transfer_matrix",
    "row_by_image",
    "row_transfer",
]
