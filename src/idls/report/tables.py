"""Paper-shaped result tables as rows, with CSV, LaTeX (booktabs) and terminal writers.

The tables follow the papers' layouts: rows = (framework, model, target, attack), columns =
interpreters, one table per metric — success rate (000 Table I, 001 Table 3), misclassification
confidence (000 Table II), map L1 and IoU@20% to the benign map (001 Figs. 5-6 / Table 12,
000 Figs. 3-4), noise rate (000 Fig. 5), seconds per image (000 Table III) — plus a long-form
summary, the gap study (001 Tables 6-8) and transferability matrices (001 Table 9, 000 Table IV).
Values are means over records of the store (``idls.analysis``); NaN marks an empty cell.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from idls.analysis.gap import GAP_COLUMNS, GAP_KEYS, gap_rows
from idls.analysis.groups import (
    ATTACK_ORDER,
    CONTEXT_KEYS,
    FRAMEWORK_ORDER,
    GROUP_KEYS,
    INTERPRETER_ORDER,
    TARGET_ORDER,
    group_records,
    label,
    own_records,
    summary,
    varying_keys,
)
from idls.analysis.transfer import Matrix, ScopedMatrix, interpreter_transfer_matrices, model_transfer_matrix
from idls.report.cells import MISSING, is_missing, missing_notes

PIVOT_ROW_KEYS: tuple[str, ...] = ("framework", "model", "target", "attack")
SUMMARY_VALUE_COLUMNS: tuple[str, ...] = (
    "n",
    "success",
    "confidence",
    "map_l1",
    "map_iou",
    "kendall_tau",
    "noise_rate",
    "linf",
    "seconds",
    "iterations_to_success",
)
#: the run-to-run agreement of a seeded interpreter's benign maps (shown where an interpreter has it)
RERUN_COLUMN = "benign_rerun_iou"
TERMINAL_COLUMNS: tuple[str, ...] = ("n", "success", "confidence", "map_l1", "map_iou", "noise_rate", "seconds")

# (file name, summary field, caption) of the per-metric pivot tables.
METRIC_TABLES: tuple[tuple[str, str, str], ...] = (
    ("success", "success", "Attack success rate (paper 000 Table I, paper 001 Table 3)."),
    ("confidence", "confidence", "Misclassification confidence: target-class probability over successes (paper 000 Table II)."),
    ("map_l1", "map_l1", "Mean L1 distance between benign and adversarial maps (paper 001 Fig. 5 / Table 12, paper 000 Fig. 3)."),
    ("map_iou", "map_iou", "Mean IoU@20% of adversarial maps with the benign maps (paper 001 Fig. 6, paper 000 Fig. 4)."),
    ("noise_rate", "noise_rate", "Noise rate 1 - SSIM(x, x*) (paper 000 Fig. 5)."),
    ("time", "seconds", "Seconds per adversarial image (paper 000 Table III)."),
)


@dataclass
class Table:
    """A named table: ``columns`` in order, ``rows`` as dicts; the first ``key_columns`` columns are keys.

    ``title`` is a short label of the table's scope (figure titles), ``name`` its file stem.
    """

    name: str
    caption: str
    columns: list[str]
    rows: list[dict]
    key_columns: int = 0
    title: str = ""


# ---------------------------------------------------------------------------------
# Building tables from records
# ---------------------------------------------------------------------------------
def _rank(value, order: Sequence) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _row_sort_key(fields: Mapping) -> tuple:
    orders = {"framework": FRAMEWORK_ORDER, "attack": ATTACK_ORDER, "target": TARGET_ORDER, "interpreter": INTERPRETER_ORDER}
    return tuple(_rank(v, orders.get(k, ())) for k, v in fields.items())


def _ordered_columns(values) -> list[str]:
    distinct = list(dict.fromkeys(str(v) for v in values))
    return sorted(distinct, key=lambda v: _rank(v, INTERPRETER_ORDER))


def pivot_table(
    records: Sequence[Mapping],
    value: str,
    *,
    name: str,
    caption: str,
    row_keys: Sequence[str] = PIVOT_ROW_KEYS,
    column_key: str = "interpreter",
) -> Table:
    """Rows = ``row_keys`` (plus context keys that vary, e.g. experiment), columns = ``column_key`` values.

    Cells are ``summary(group)[value]`` over the attacks' own records (see :func:`idls.analysis.summary`).
    """
    own = own_records(records)
    keys = (*varying_keys(own), *row_keys)
    columns = _ordered_columns(r.get(column_key) for r in own)
    rows = []
    for key, group in group_records(own, keys).items():
        fields = dict(zip(keys, key, strict=True))
        by_column = {str(c): summary(g).get(value, math.nan) for (c,), g in group_records(group, (column_key,)).items()}
        rows.append({**fields, **{c: by_column.get(c, math.nan) for c in columns}})
    rows.sort(key=lambda r: _row_sort_key({k: r[k] for k in keys}))
    return Table(name, caption, [*keys, *columns], rows, key_columns=len(keys))


def summary_table(records: Sequence[Mapping], name: str = "summary") -> Table:
    """Long form: one row per (context, model, attack, framework, target, interpreter) of own records."""
    own = own_records(records)
    keys = (*varying_keys(own), *(k for k in GROUP_KEYS if k != "attacked_interpreter"))
    rows = []
    for key, group in group_records(own, keys).items():
        s = summary(group)
        values = {c: s.get(c, math.nan) for c in (*SUMMARY_VALUE_COLUMNS, RERUN_COLUMN)}
        rows.append({**dict(zip(keys, key, strict=True)), **values})
    rows.sort(key=lambda r: _row_sort_key({k: r[k] for k in keys}))
    caption = "All metrics per attack and interpreter (means over images; confidence over successes)."
    columns = list(SUMMARY_VALUE_COLUMNS)
    if any(not math.isnan(r[RERUN_COLUMN]) for r in rows):  # a seeded interpreter (MASK): its run-to-run ceiling
        columns.insert(columns.index("map_iou") + 1, RERUN_COLUMN)
        caption += (f" {RERUN_COLUMN}: IoU@20% between the benign maps of two runs with different seeds, the ceiling "
                    "of map_iou for a seeded interpreter.")
    rows = [{c: r[c] for c in (*keys, *columns)} for r in rows]
    return Table(name, caption, [*keys, *columns], rows, key_columns=len(keys))


def gap_table(records: Sequence[Mapping]) -> Table | None:
    """The prediction-interpretation gap study (paper 001 Tables 6-8): distances to benign and target maps."""
    rows = gap_rows(records)
    if not rows:
        return None
    keys = [k for k in GAP_KEYS if len({str(r[k]) for r in rows}) > 1 or k in ("model", "attack", "target", "interpreter")]
    rows = [{k: r[k] for k in (*keys, *GAP_COLUMNS)} for r in rows]
    rows.sort(key=lambda r: _row_sort_key({k: r[k] for k in keys}))
    caption = ("Random target maps (paper 001 §5 Q1, Tables 6-8): success and distances of the adversarial map "
               "to the benign map (map_l1, map_iou: Δb) and to the target map (*_to_target: Δt).")
    return Table("gap", caption, [*keys, *GAP_COLUMNS], rows, key_columns=len(keys))


def matrix_table(matrix: Matrix, *, name: str, caption: str, corner: str = "attacked \\ evaluated", title: str = "") -> Table:
    """A matrix as a table: first column the row labels, then one column per matrix column."""
    rows = [{corner: r, **dict(zip(matrix.columns, values, strict=True))}
            for r, values in zip(matrix.rows, matrix.values, strict=True)]
    return Table(name, caption, [corner, *matrix.columns], rows, key_columns=1, title=title)


def slug(text: str) -> str:
    """A file-name-safe form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_").replace("+", "plus")


def transfer_tables(records: Sequence[Mapping]) -> list[tuple[ScopedMatrix, Table, Table]]:
    """Per transfer scope: the matrix of IoU@20% and the tables of IoU and L1 (001 Table 9, 000 Table IV)."""
    iou = interpreter_transfer_matrices(records, "map_iou")
    l1 = interpreter_transfer_matrices(records, "map_l1")  # same scopes in the same order
    out, used = [], set()
    for index, (scoped, scoped_l1) in enumerate(zip(iou, l1, strict=True)):
        base = slug(scoped.title)
        base = base if base not in used else f"{base}_{index}"
        used.add(base)
        detail = label(f"{k}={scoped.scope[k]}" for k in CONTEXT_KEYS if k != "experiment" and scoped.scope.get(k) is not None)
        out.append((
            scoped,
            matrix_table(scoped.matrix, name=f"transfer_iou_{base}", title=scoped.title,
                         caption=f"Interpreter transfer, IoU@20% to the evaluated interpreter's benign map ({scoped.title}; {detail}); "
                         "rows: interpreter attacked, columns: interpreter evaluated."),
            matrix_table(scoped_l1.matrix, name=f"transfer_l1_{base}", title=scoped.title,
                         caption=f"Interpreter transfer, L1 to the evaluated interpreter's benign map ({scoped.title}; {detail}); "
                         "paper 001 Table 9, paper 000 Table IV."),
        ))
    return out


def model_transfer_table(records: Sequence[Mapping], transfer_records: Sequence[Mapping]) -> Table | None:
    matrix = model_transfer_matrix(records, transfer_records)
    if matrix is None:
        return None
    caption = "Transfer across models: success rate of each cell's adversarial images on every model (own model: white-box)."
    return matrix_table(matrix, name="model_transfer", caption=caption, corner="source")


def paper_tables(records: Sequence[Mapping], transfer_records: Sequence[Mapping] = ()) -> list[Table]:
    """Every table of a store: per-metric pivots, summary, gap study, transfer matrices, model transfer."""
    tables = [pivot_table(records, value, name=name, caption=caption) for name, value, caption in METRIC_TABLES]
    tables.append(summary_table(records))
    optional = [gap_table(records), model_transfer_table(records, transfer_records)]
    tables += [t for t in optional if t is not None]
    for _, iou_table, l1_table in transfer_tables(records):
        tables += [iou_table, l1_table]
    return tables


# ---------------------------------------------------------------------------------
# Writers: CSV, LaTeX, terminal
# ---------------------------------------------------------------------------------
def _csv_cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest exact round-trip form
    return str(value)


def _parse_cell(text: str, is_key: bool):
    if text == "":
        return "" if is_key else math.nan
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


def write_csv(table: Table, path: Path) -> Path:
    """Write ``table`` as CSV (header = columns; empty field = NaN / missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table.columns)
        for row in table.rows:
            writer.writerow([_csv_cell(row.get(c)) for c in table.columns])
    return path


def read_csv(path: Path, key_columns: int = 0) -> Table:
    """Read a CSV written by :func:`write_csv` (numbers parsed back; empty value cells become NaN)."""
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        columns = next(reader)
        rows = [{c: _parse_cell(v, i < key_columns) for i, (c, v) in enumerate(zip(columns, line, strict=True))}
                for line in reader]
    return Table(path.stem, "", columns, rows, key_columns=key_columns)


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def format_number(value) -> str:
    """Numbers as the tables print them: NaN/missing '--', integers plain, floats with 3 decimals (1 when >= 100)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"
    return str(value)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` environment: key columns left-aligned, values right-aligned, 3 decimals."""
    align = "l" * table.key_columns + "r" * (len(table.columns) - table.key_columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        lines.append(" & ".join(latex_escape(format_number(row.get(c))) for c in table.columns) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_latex(table: Table, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_latex(table))
    return path


def write_tables(tables: Sequence[Table], out_dir: Path) -> list[Path]:
    """Write each table as ``<name>.csv`` and ``<name>.tex`` under ``out_dir``."""
    paths = []
    for table in tables:
        paths.append(write_csv(table, Path(out_dir) / f"{table.name}.csv"))
        paths.append(write_latex(table, Path(out_dir) / f"{table.name}.tex"))
    return paths


def print_summary_table(records: Sequence[Mapping], console=None, title: str = "summary") -> None:
    """The short terminal summary at the end of a run: success, confidence, L1, IoU, noise, time per group."""
    from rich.console import Console
    from rich.table import Table as RichTable

    table = summary_table(records)
    keys = table.columns[: table.key_columns]
    rich_table = RichTable(title=title)
    for column in (*keys, *TERMINAL_COLUMNS):
        rich_table.add_column(column, justify="left" if column in keys else "right")
    for row in table.rows:
        rich_table.add_row(*(MISSING if is_missing(row.get(c)) else format_number(row.get(c))
                             for c in (*keys, *TERMINAL_COLUMNS)))
    rich_table.caption = "\n".join(missing_notes(table.rows, TERMINAL_COLUMNS)) or None
    console = console or Console(width=max(Console().width, 140))
    console.print(rich_table)
