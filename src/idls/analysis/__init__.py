"""Analyses of experiment stores: loading complete units, grouping, transferability, the gap study."""

from idls.analysis.gap import gap_rows
from idls.analysis.groups import is_own, own_records, summaries_by, summary
from idls.analysis.store_reader import Store, TensorReader, load_store
from idls.analysis.transfer import (
    Matrix,
    ScopedMatrix,
    interpreter_transfer_matrices,
    interpreter_transfer_matrix,
    model_transfer_matrix,
    row_transfer,
)

__all__ = [
    "Matrix",
    "ScopedMatrix",
    "Store",
    "TensorReader",
    "gap_rows",
    "interpreter_transfer_matrices",
    "interpreter_transfer_matrix",
    "is_own",
    "load_store",
    "model_transfer_matrix",
    "own_records",
    "row_transfer",
    "summaries_by",
    "summary",
]
