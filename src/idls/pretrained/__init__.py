"""Weights shipped inside the idls package: the embedded CNN and its RTS masker.

Both are trained by idls's own code (:func:`idls.embedded.train_embedded`,
:func:`idls.interpreters.rts_training.train_embedded_rts`) with their default recipes, on one
thread, so they are bit-reproducible: ``python -m idls.pretrained.rebuild`` (``make pretrained``)
trains them from scratch and writes the files of this folder again. Shipping them saves a new user
the training (about a minute and a quarter on one core) before the first demo.

Lookup order, for both: this folder, then the user cache (``cache_dir()/embedded``), then train
and cache. A file here is used only when it was made for the current recipe: the classifier's file
name carries the recipe's cache key, and the masker's sidecar names the classifier weights and the
recipe it was trained for, so a changed recipe retrains instead of loading stale weights.
"""

from __future__ import annotations

from pathlib import Path

#: the folder that holds the shipped weights (package data)
PACKAGED_DIR = Path(__file__).resolve().parent
#: the shipped RTS masker of the embedded CNN (its sidecar ``embedded_rts.json`` beside it)
EMBEDDED_RTS_FILE = "embedded_rts.safetensors"


def packaged_path(name: str) -> Path:
    """The path a shipped file named ``name`` has in this folder (it may not exist)."""
    return PACKAGED_DIR / name


__all__ = ["EMBEDDED_RTS_FILE", "PACKAGED_DIR", "packaged_path"]
