"""Checkpoints of a universal fit: :mod:`idls.core.checkpoints` (kept here for the attacks that import it)."""

from __future__ import annotations

from idls.core.checkpoints import (
    CHECKPOINT_KIND,
    FitCheckpoint,
    FitState,
    load_optimizer_tensors,
    optimizer_tensors,
)

__all__ = ["CHECKPOINT_KIND", "FitCheckpoint", "FitState", "load_optimizer_tensors", "optimizer_tensors"]
