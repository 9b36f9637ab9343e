"""Comparing two experiment stores: the same records (timing aside), the same done markers, the same tensors.

Used wherever a run that was interrupted, resumed or distributed must equal an uninterrupted one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from idls.experiments import read_records
from idls.experiments.store import DONE_FILE, RECORDS_FILE, TENSORS_DIR

#: record fields that measure time, so differ between two runs of the same unit
TIMING_FIELDS = frozenset({"seconds", "cpu_seconds"})


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def canonical(records: list[dict]) -> dict:
    """Records keyed by (kind, cell, image, interpreter, model), without timing fields; asserts no duplicates."""
    keyed = {(r["kind"], r["cell"], r["image_id"], r["interpreter"], r["model"]): without_timing(r) for r in records}
    assert len(keyed) == len(records), "duplicate records"
    return keyed


def done_markers(store: Path) -> Counter:
    """How often each (cell, batch, n_records) marker appears in ``done.jsonl`` (every line must be whole)."""
    data = (store / DONE_FILE).read_bytes()
    assert data.endswith(b"\n"), "a torn done line"
    return Counter((e["cell"], e["batch"], e["n_records"]) for e in map(json.loads, data.splitlines()))


def assert_same_results(store: Path, reference: Path) -> int:
    """``store`` holds exactly ``reference``'s results: every record once and equal to its twin (timing
    aside), one done marker per unit, bit-identical tensor files, no torn lines. Returns the record count."""
    raw = (store / RECORDS_FILE).read_bytes()
    assert raw.endswith(b"\n"), "a torn record line"
    assert len(raw.splitlines()) == len(read_records(store)), "records of unfinished units are left in the file"
    resumed, clean = canonical(read_records(store)), canonical(read_records(reference))
    assert resumed.keys() == clean.keys(), "records lost or added"
    assert resumed == clean
    markers, expected = done_markers(store), done_markers(reference)
    assert markers == expected and set(markers.values()) == {1}, "a unit is missing or marked done twice"
    files = sorted(p.relative_to(reference) for p in (reference / TENSORS_DIR).rglob("*.safetensors"))
    assert files == sorted(p.relative_to(store) for p in (store / TENSORS_DIR).rglob("*.safetensors"))
    leftovers = [*store.glob("*.tmp"), *(store / TENSORS_DIR).rglob("*.tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    for name in files:
        a, b = load_file(str(store / name)), load_file(str(reference / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    return len(resumed)
