"""The append-only result store of an experiment run (format: the store schema, ``docs`` of the report).

Layout of the output folder::

    experiment.yaml      resolved configuration
    environment.json     library versions, git revision, platform, start time, command
    plan.json            {"cells": {cell id: number of batches}}: the whole grid, rewritten by every run
                         (a run of some cells, ``--cells``, still lists them all), so readers can tell
                         complete cells and a complete store from partial ones
    records.jsonl        one JSON record per line (kind: attack | model_transfer)
    done.jsonl           {"cell", "batch", "n_records"} per finished unit
    tensors/<cell>/batch_<k>.safetensors

Commit protocol of one unit (cell, batch), each step flushed and fsync'ed before the next:
the tensor file (written to a temporary name, then renamed), the unit's records (one
append), the done line (one append). A unit is complete iff its done line exists, so a
run killed at any moment loses at most the units in flight. Opening a store recovers:
torn last lines (a kill mid-write) are cut off, records of units without a done line
(or whose record count does not match it) are dropped, and those units run again.
One process writes a store at a time (an exclusive ``flock`` on ``.lock``, which holds the writer's pid).
A write that fails because the disk takes no more data (full, over quota, read-only) is a one-line
:class:`~idls.errors.UserError` that names the folder; the failed append is cut back first, so the
files hold whole lines only, and the same command resumes once there is space. :meth:`ExperimentStore.forget` discards some cells'
finished units (``--redo``), done lines first, so that they run again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from idls.errors import UserError, storage_error

CONFIG_FILE = "experiment.yaml"
ENVIRONMENT_FILE = "environment.json"
RECORDS_FILE = "records.jsonl"
DONE_FILE = "done.jsonl"
PLAN_FILE = "plan.json"
TENSORS_DIR = "tensors"
LOCK_FILE = ".lock"
#: configuration keys that may change between a run and its resumption
RESUMABLE_CHANGES: tuple[str, ...] = ("device", "source_file")


def tensor_file(cell_id: str, batch: int) -> str:
    """Path of a unit's tensor file relative to the output folder."""
    return f"{TENSORS_DIR}/{cell_id}/batch_{batch:05d}.safetensors"


# ---------------------------------------------------------------------------------
# Line files
# ---------------------------------------------------------------------------------
def read_complete_lines(path: Path, *, repair: bool = True) -> list[bytes]:
    """The complete (newline-terminated) lines of ``path``; with ``repair``, cut a torn last line off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return [line for line in data[:end].split(b"\n")[:-1] if line.strip()]


def _parse(lines: Sequence[bytes]) -> list[dict]:
    """JSON objects of complete lines (a line that does not parse is skipped: it cannot be a whole write)."""
    parsed = []
    for line in lines:
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(value, dict):
            parsed.append(value)
    return parsed


def _cell_of(line: bytes) -> str | None:
    """The ``cell`` of one record line (``None`` when it does not parse)."""
    parsed = _parse([line])
    return str(parsed[0].get("cell")) if parsed else None


def _write_all(fd: int, payload: bytes) -> None:
    """``os.write`` until every byte of ``payload`` is written (a write may take only part of it)."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _append(path: Path, lines: Sequence[Mapping[str, Any]]) -> None:
    """Append JSON lines, then fsync; a failed append is cut back off the file, so no torn line stays."""
    payload = "".join(json.dumps(line, allow_nan=True) + "\n" for line in lines).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, payload)
            os.fsync(fd)
        except OSError:
            try:  # shrinking needs no space; should it fail too, opening the store cuts the torn line
                os.ftruncate(fd, start)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def _replace(path: Path, payload: bytes) -> None:
    """Atomically replace ``path`` with ``payload`` (temporary file, fsync, rename, fsync of the folder)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def _disk_errors(root: Path) -> Iterator[None]:
    """Turn a write that failed for lack of space (or quota, or a read-only disk) into one line naming the store."""
    try:
        yield
    except OSError as exc:
        error = storage_error(exc, f"the result store {root}", "run the same command again: it resumes from the "
                                                                "last finished unit")
        if error is None:
            raise
        raise error from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------
def git_revision(folder: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``idls`` (``None`` outside a git checkout)."""
    folder = folder or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_dirty(folder: Path | None = None) -> bool | None:
    """Whether the checkout holding ``idls`` has uncommitted changes (``None`` outside a git checkout)."""
    folder = folder or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def environment_info(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Versions, git revision, platform, start time and command line of this run."""
    import torch
    import torchvision

    from idls import __version__

    info = {
        "idls": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "platform": platform.platform(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv),
    }
    info.update(extra or {})
    return info


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """Dotted key of the first difference between two configurations, or ``None`` when equal."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}{key}"
            if path in RESUMABLE_CHANGES:
                continue
            if key not in old or key not in new:
                return path
            found = first_difference(old[key], new[key], f"{path}.")
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{prefix}{i}.")
            if found is not None:
                return found
        return None
    return None if old == new else prefix.rstrip(".") or "(root)"


# ---------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------
@dataclass
class Recovery:
    """What opening the store repaired: dropped records (unfinished units) and re-opened units."""

    dropped_records: int = 0
    reopened_units: int = 0


class ExperimentStore:
    """Append-only records + done markers + tensor files in one output folder (see the module notes).

    Use :meth:`open` (locks the folder, checks or writes the configuration, recovers) and
    :meth:`close` (or a ``with`` block).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._done: dict[tuple[str, int], int] = {}
        self._lock_handle: Any = None
        self.recovery = Recovery()

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path, config: Mapping[str, Any], environment: Mapping[str, Any] | None = None
             ) -> ExperimentStore:
        """Open (or create) the store of ``config`` in ``root``.

        Raises:
            UserError: ``root`` holds another configuration's results, or another process writes it.
        """
        store = cls(root)
        with _disk_errors(store.root):
            store.root.mkdir(parents=True, exist_ok=True)
            store._lock()
        try:
            with _disk_errors(store.root):
                store._check_or_write_config(config)
                if not (store.root / ENVIRONMENT_FILE).exists():
                    _replace(store.root / ENVIRONMENT_FILE,
                             json.dumps(environment_info(environment), indent=2).encode())
                store.recovery = store.recover()
        except BaseException:
            store.close()
            raise
        return store

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            return
        # flock, not a pid file alone: the OS releases the lock when its process dies, so a killed run
        # never blocks the next one; the pid inside only names the holder in the refusal
        handle = open(self.root / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"another idls run is writing {self.root} (pid {holder}); "
                            "wait for it or choose another --out") from None
        except OSError as exc:  # e.g. a network file system without locks
            handle.close()
            raise UserError(f"cannot lock {self.root / LOCK_FILE} ({exc.strerror}); choose an --out on a local disk"
                            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    def close(self) -> None:
        """Release the folder lock."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> ExperimentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_or_write_config(self, config: Mapping[str, Any]) -> None:
        path = self.root / CONFIG_FILE
        plain = json.loads(json.dumps(config))
        if path.exists():
            try:
                stored = yaml.safe_load(path.read_text())
            except yaml.YAMLError:
                stored = None
            difference = first_difference(stored, plain)
            if difference is not None:
                raise UserError(f"{self.root} holds results of a different configuration ({difference} changed); "
                                "use another --out, or delete the folder to start over")
            return
        if (self.root / RECORDS_FILE).exists() or (self.root / DONE_FILE).exists():
            raise UserError(f"{self.root} holds records but no {CONFIG_FILE}; use another --out")
        header = "# resolved configuration of this run (written by idls; do not edit)\n"
        _replace(path, (header + yaml.safe_dump(plain, sort_keys=False)).encode())

    # -- recovery ---------------------------------------------------------------------
    def recover(self) -> Recovery:
        """Cut torn lines, drop records of unfinished units and load the done set (see the module notes)."""
        done_path, records_path = self.root / DONE_FILE, self.root / RECORDS_FILE
        done: dict[tuple[str, int], int] = {}
        for entry in _parse(read_complete_lines(done_path)):
            key = (str(entry.get("cell")), int(entry.get("batch", -1)))
            done.setdefault(key, int(entry.get("n_records", -1)))
        lines = read_complete_lines(records_path)
        counts: dict[tuple[str, int], int] = {}
        keys: list[tuple[str, int] | None] = []
        for line in lines:
            parsed = _parse([line])
            key = (str(parsed[0].get("cell")), int(parsed[0].get("batch", -1))) if parsed else None
            keys.append(key)
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        complete = {key for key, n in done.items() if counts.get(key, 0) == n}
        recovery = Recovery(reopened_units=len(done) - len(complete))
        kept = [line for line, key in zip(lines, keys, strict=True) if key in complete]
        recovery.dropped_records = len(lines) - len(kept)
        if recovery.dropped_records:
            _replace(records_path, b"".join(line + b"\n" for line in kept))
        if recovery.reopened_units:
            entries = [{"cell": c, "batch": b, "n_records": done[(c, b)]} for c, b in done if (c, b) in complete]
            _replace(done_path, "".join(json.dumps(e) + "\n" for e in entries).encode())
        self._done = {key: done[key] for key in complete}
        return recovery

    # -- writing ----------------------------------------------------------------------
    def write_plan(self, batches_by_cell: Mapping[str, int]) -> None:
        """Record the whole grid (cell id -> number of batches) in :data:`PLAN_FILE`."""
        with _disk_errors(self.root):
            _replace(self.root / PLAN_FILE, json.dumps({"cells": dict(batches_by_cell)}, indent=1).encode())

    def is_done(self, cell_id: str, batch: int) -> bool:
        return (cell_id, batch) in self._done

    @property
    def done_units(self) -> set[tuple[str, int]]:
        return set(self._done)

    def commit(self, cell_id: str, batch: int, records: Sequence[Mapping[str, Any]],
               tensors: Mapping[str, Tensor] | None = None) -> None:
        """Write one unit: tensors, then records, then the done line (each durable before the next)."""
        if self.is_done(cell_id, batch):
            raise RuntimeError(f"unit ({cell_id}, {batch}) is already in the store")
        with _disk_errors(self.root):
            if tensors:
                from safetensors.torch import save

                path = self.root / tensor_file(cell_id, batch)
                path.parent.mkdir(parents=True, exist_ok=True)
                _replace(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
            if records:
                _append(self.root / RECORDS_FILE, records)
            _append(self.root / DONE_FILE, [{"cell": cell_id, "batch": batch, "n_records": len(records)}])
        self._done[(cell_id, batch)] = len(records)

    def forget(self, cell_ids: Collection[str]) -> int:
        """Discard every finished unit of ``cell_ids`` (records, done lines, tensor files); returns how many.

        The done lines go first, so a run killed in between leaves records of units that are not done,
        which opening the store drops as after any kill: the cells simply run again.
        """
        forget = set(cell_ids)
        units = {key for key in self._done if key[0] in forget}
        if not units:
            return 0
        with _disk_errors(self.root):
            entries = [{"cell": c, "batch": b, "n_records": n} for (c, b), n in self._done.items() if (c, b) not in units]
            _replace(self.root / DONE_FILE, "".join(json.dumps(e) + "\n" for e in entries).encode())
            for key in units:
                del self._done[key]
            lines = read_complete_lines(self.root / RECORDS_FILE, repair=False)
            kept = [line for line in lines if _cell_of(line) not in forget]
            _replace(self.root / RECORDS_FILE, b"".join(line + b"\n" for line in kept))
            for cell in forget:
                shutil.rmtree(self.root / TENSORS_DIR / cell, ignore_errors=True)
        return len(units)

    # -- reading ----------------------------------------------------------------------
    def records(self) -> list[dict]:
        """The records of finished units (call after :meth:`open`, which recovered the files)."""
        return read_records(self.root)


def read_records(root: str | Path) -> list[dict]:
    """Records of finished units of the store in ``root`` (read-only: torn or unfinished ones are skipped)."""
    root = Path(root)
    done = {(str(e.get("cell")), int(e.get("batch", -1))) for e in
            _parse(read_complete_lines(root / DONE_FILE, repair=False))}
    return [r for r in _parse(read_complete_lines(root / RECORDS_FILE, repair=False))
            if (str(r.get("cell")), int(r.get("batch", -1))) in done]


__all__ = [
    "CONFIG_FILE",
    "DONE_FILE",
    "ENVIRONMENT_FILE",
    "ExperimentStore",
    "PLAN_FILE",
    "RECORDS_FILE",
    "Recovery",
    "TENSORS_DIR",
    "environment_info",
    "first_difference",
    "git_dirty",
    "git_revision",
    "read_complete_lines",
    "read_records",
    "tensor_file",
]
