"""Read an experiment store (the output folder of ``idls run``): complete units only.

The store contract: ``records.jsonl`` (one JSON object per line, append-only), ``done.jsonl``
(one ``{"cell", "batch", "n_records"}`` marker per completed unit, written after its records),
``tensors/<cell>/batch_<k>.safetensors``, ``experiment.yaml``, ``environment.json`` and ``plan.json``
(the whole grid: ``{"cells": {cell: batches}}``; absent in stores written before it existed).
A record counts only when its ``(cell, batch)`` unit has a done marker; a torn last line is ignored.

A folder that holds no store itself but has store sub-folders (the output of ``idls reproduce``,
one sub-folder per experiment) is read as the union of its sub-stores.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml
from safetensors.torch import load_file
from torch import Tensor

from idls.errors import UserError

RECORDS_FILE = "records.jsonl"
DONE_FILE = "done.jsonl"
CONFIG_FILE = "experiment.yaml"
ENVIRONMENT_FILE = "environment.json"
PLAN_FILE = "plan.json"
STORE_DIR_FIELD = "_store"  # added to every loaded record: the store folder its adv_path is relative to

ATTACK_KIND = "attack"
MODEL_TRANSFER_KIND = "model_transfer"
#: the result of a study (a measurement that is not an attack on images, e.g. AID's Table 10): one record per study
STUDY_KIND = "study"


@dataclass
class StorePart:
    """One experiment store folder."""

    path: Path
    config: dict | None
    environment: dict | None
    units: int
    records: list[dict]
    model_transfer: list[dict]
    studies: list[dict] = field(default_factory=list)
    #: the whole grid, cell id -> number of batches (``plan.json``); ``None`` when the store has none
    plan: dict[str, int] | None = None
    #: the (cell, batch) units with a done marker
    done_units: frozenset[tuple[str, int]] = frozenset()

    @cached_property
    def complete_cells(self) -> set[str]:
        """Cells of the plan whose every batch is done (none when the store has no plan)."""
        return complete_cells(self.plan or {}, self.done_units)

    @property
    def complete(self) -> bool | None:
        """Whether the whole grid is done: ``None`` when unknown (no plan); a study store is complete once its
        study record is written (a study writes its one record when it has finished)."""
        if self.plan is None:
            return True if self.studies else None
        return len(self.complete_cells) == len(self.plan)

    @property
    def name(self) -> str:
        """The experiment name of the records (or the folder name when there are none)."""
        names = {str(r.get("experiment")) for r in self.records if r.get("experiment")}
        return ", ".join(sorted(names)) if names else self.path.name


@dataclass
class Store:
    """The complete units of one or several experiment stores."""

    root: Path
    parts: list[StorePart]
    warnings: list[str] = field(default_factory=list)

    @property
    def records(self) -> list[dict]:
        """``kind: attack`` records of every part."""
        return [r for part in self.parts for r in part.records]

    @property
    def model_transfer(self) -> list[dict]:
        """``kind: model_transfer`` records of every part."""
        return [r for part in self.parts for r in part.model_transfer]

    @property
    def studies(self) -> list[dict]:
        return [r for p in self.parts for r in p.studies]

    @property
    def units(self) -> int:
        return sum(part.units for part in self.parts)


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The complete JSON lines of ``path`` and how many lines were unreadable (a torn last line counts)."""
    if not path.exists():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(value, dict):
            rows.append(value)
        else:
            bad += 1
    return rows, bad


def find_store_dirs(run_dir: Path) -> list[Path]:
    """``run_dir`` itself when it is a store, else its store sub-folders (sorted); UserError when none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist; pass the --out folder of `idls run` or `idls reproduce`")
    if _is_store(run_dir):
        return [run_dir]
    subs = sorted(p for p in run_dir.iterdir() if p.is_dir() and _is_store(p))
    if not subs:
        raise UserError(f"no experiment store in {run_dir} (no {RECORDS_FILE}); run `idls run EXPERIMENT.yaml --out {run_dir}` first")
    return subs


def _is_store(path: Path) -> bool:
    return (path / RECORDS_FILE).exists() or (path / DONE_FILE).exists()


def _unit(record: Mapping) -> tuple[str, int]:
    return str(record.get("cell")), int(record.get("batch", -1))


RECORD_IDENTITY: dict[str, tuple[str, ...]] = {
    ATTACK_KIND: ("image_id", "attack", "attacked_interpreter", "interpreter"),
    MODEL_TRANSFER_KIND: ("image_id", "attack", "attacked_interpreter", "source_model", "model"),
    STUDY_KIND: ("study",),
}


def _record_key(record: Mapping) -> tuple:
    """Identity of a record inside its unit: a rerun of the unit replaces it, never duplicates it."""
    kind = str(record.get("kind", ATTACK_KIND))
    fields = RECORD_IDENTITY.get(kind, ("image_id",))
    return (kind, *_unit(record), *(str(record.get(f)) for f in fields))


def load_store_part(path: Path) -> tuple[StorePart, list[str]]:
    """Read one store folder: records of complete units, deduplicated (last wins), plus warnings."""
    path = Path(path)
    warnings: list[str] = []
    raw, bad = read_jsonl(path / RECORDS_FILE)
    markers, bad_markers = read_jsonl(path / DONE_FILE)
    if bad:
        warnings.append(f"{path.name}: {bad} unreadable line(s) in {RECORDS_FILE} ignored (torn write?)")
    if bad_markers:
        warnings.append(f"{path.name}: {bad_markers} unreadable line(s) in {DONE_FILE} ignored")
    expected = {_unit(m): int(m.get("n_records", -1)) for m in markers}
    unique: dict[tuple, dict] = {}
    for record in raw:
        if _unit(record) in expected:
            unique[_record_key(record)] = {**record, STORE_DIR_FIELD: str(path)}
    incomplete = sum(1 for r in raw if _unit(r) not in expected)
    if incomplete:
        warnings.append(f"{path.name}: {incomplete} record(s) of unfinished units ignored")
    counts = Counter(_unit(r) for r in unique.values())
    short = [u for u, n in expected.items() if n >= 0 and counts.get(u, 0) != n]
    if short:
        warnings.append(f"{path.name}: {len(short)} unit(s) whose record count differs from their done marker, e.g. {short[0]}")
    records = [r for r in unique.values() if r.get("kind", ATTACK_KIND) == ATTACK_KIND]
    transfer = [r for r in unique.values() if r.get("kind") == MODEL_TRANSFER_KIND]
    studies = [r for r in unique.values() if r.get("kind") == STUDY_KIND]
    other = len(unique) - len(records) - len(transfer) - len(studies)
    if other:
        warnings.append(f"{path.name}: {other} record(s) of unknown kind ignored")
    part = StorePart(
        path=path,
        config=_read_yaml(path / CONFIG_FILE),
        environment=_read_json(path / ENVIRONMENT_FILE),
        units=len(expected),
        records=records,
        model_transfer=transfer,
        studies=studies,
        plan=_read_plan(path / PLAN_FILE),
        done_units=frozenset(expected),
    )
    return part, warnings


def complete_cells(plan: Mapping[str, int], done_units: Iterable[tuple[str, int]]) -> set[str]:
    """The cells of ``plan`` (cell -> batches) whose every batch is among ``done_units``."""
    done = set(done_units)
    return {cell for cell, batches in plan.items() if all((cell, batch) in done for batch in range(batches))}


def store_progress(path: Path) -> dict[str, int] | None:
    """``{"cells": planned, "complete_cells": done}`` of a store folder, read from ``plan.json`` and
    ``done.jsonl`` only (no records); ``None`` when it has no plan (a study, or a store older than plans)."""
    plan = _read_plan(Path(path) / PLAN_FILE)
    if plan is None:
        return None
    markers, _ = read_jsonl(Path(path) / DONE_FILE)
    return {"cells": len(plan), "complete_cells": len(complete_cells(plan, (_unit(m) for m in markers)))}


def _read_plan(path: Path) -> dict[str, int] | None:
    """``plan.json``'s cells (id -> batches), or ``None`` when absent or unreadable (completeness unknown)."""
    try:
        cells = json.loads(path.read_text()).get("cells")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(cells, dict):
        return None
    return {str(cell): int(batches) for cell, batches in cells.items() if isinstance(batches, int)}


def load_store(run_dir: Path) -> Store:
    """Load the complete units of the store in ``run_dir`` (or of every store sub-folder of it)."""
    parts, warnings = [], []
    for path in find_store_dirs(Path(run_dir)):
        part, part_warnings = load_store_part(path)
        parts.append(part)
        warnings.extend(part_warnings)
    return Store(root=Path(run_dir), parts=parts, warnings=warnings)


def _read_yaml(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML ({error.__class__.__name__}); rerun the experiment or fix the file") from None
    return value if isinstance(value, dict) else None


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; rerun the experiment or delete the file") from None
    return value if isinstance(value, dict) else None


# ---------------------------------------------------------------------------------
# Tensors of a record
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorRef:
    """Where a record's adversarial image lives: ``file#key:index`` (file relative to its store)."""

    file: Path
    key: str
    index: int

    @property
    def prefix(self) -> str:
        """Key prefix of the record's tensors inside the file (``''`` or ``'<name>/'``)."""
        return self.key.rsplit("x_adv", 1)[0] if "x_adv" in self.key else ""


def parse_adv_path(record: Mapping) -> TensorRef:
    """Parse a record's ``adv_path`` (``tensors/<cell>/batch_<k>.safetensors#x_adv:i``)."""
    adv_path = record.get("adv_path")
    try:
        file_part, rest = str(adv_path).split("#", 1)
        key, index = rest.rsplit(":", 1)
        return TensorRef(Path(record.get(STORE_DIR_FIELD, ".")) / file_part, key, int(index))
    except (ValueError, TypeError):
        raise UserError(f"record {record.get('image_id')!r} has adv_path {adv_path!r}, expected 'FILE#KEY:INDEX'; "
                        "the store was written by another idls version, rerun the experiment") from None


class TensorReader:
    """Loads the adversarial images and maps of records, caching each tensor file once."""

    BENIGN_IMAGE_KEYS = ("x", "benign", "x_benign")

    def __init__(self) -> None:
        self._files: dict[Path, dict[str, Tensor]] = {}

    def _file(self, path: Path) -> dict[str, Tensor]:
        if path not in self._files:
            if not path.exists():
                raise UserError(f"tensor file {path} is missing; the store is incomplete, rerun the experiment to restore it")
            self._files[path] = load_file(str(path))
        return self._files[path]

    def _lookup(self, ref: TensorRef, keys: Iterable[str]) -> Tensor | None:
        tensors = self._file(ref.file)
        for key in keys:
            if key in tensors and tensors[key].shape[0] > ref.index:
                return tensors[key][ref.index]
        return None

    def adversarial_image(self, record: Mapping) -> Tensor:
        """``3 x H x W`` adversarial image of the record."""
        ref = parse_adv_path(record)
        image = self._lookup(ref, [ref.key])
        if image is None:
            raise UserError(f"{ref.file} has no tensor {ref.key!r} with index {ref.index}; the store is damaged, rerun the experiment")
        return image

    def benign_image(self, record: Mapping) -> Tensor | None:
        """``3 x H x W`` benign image when the store keeps it (optional in the contract), else ``None``."""
        ref = parse_adv_path(record)
        return self._lookup(ref, [ref.prefix + k for k in self.BENIGN_IMAGE_KEYS] + list(self.BENIGN_IMAGE_KEYS))

    def maps(self, record: Mapping) -> tuple[Tensor, Tensor] | None:
        """Benign and adversarial ``h x w`` maps of the record's evaluated interpreter, or ``None``."""
        ref = parse_adv_path(record)
        name = str(record.get("interpreter"))
        benign = self._lookup(ref, [f"{ref.prefix}benign_map/{name}", f"benign_map/{name}"])
        adversarial = self._lookup(ref, [f"{ref.prefix}adversarial_map/{name}", f"adversarial_map/{name}"])
        if benign is None or adversarial is None:
            return None
        return benign, adversarial


__all__ = [
    "Store",
    "StorePart",
    "TensorReader",
    "TensorRef",
    "find_store_dirs",
    "load_store",
    "load_store_part",
    "parse_adv_path",
    "read_jsonl",
]
