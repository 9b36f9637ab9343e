"""A full disk: ENOSPC injected at the store's writes is one clear error, and the same command then resumes.

The store writes a unit as a tensor file (atomic replace), a records append and a done-line append. Each
of them, and the configuration written when the store opens, is made to fail once with ENOSPC through
``idls run``: the command exits with status 2 and one ``error:`` line naming the folder and the fix, no
traceback; "freeing space" (undoing the injection) and running the same command again completes the store
with exactly the records, done markers and tensors of an uninterrupted run. A failed append is cut back at
once; an append torn without that clean-up (the process died with it) is cut off when the store reopens.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from idls.core import load_artifact, save_artifact
from idls.errors import UserError, storage_error
from idls.experiments import run_experiment
from idls.experiments import store as store_module
from idls.experiments.store import CONFIG_FILE, DONE_FILE, RECORDS_FILE
from tests.conftest import run_cli
from tests.fault_helpers import FAULT_EXPERIMENT, FAULT_UNITS, write_fault_experiment
from tests.store_compare import assert_same_results

#: the fault experiment with few steps: 8 quick units
QUICK = {**FAULT_EXPERIMENT, "attacks": [{"name": "pgd", "options": {"steps": 4}},
                                         {"name": "adv2", "options": {"steps": 3, "warm_start": 2}}]}


def no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FullDisk:
    """Makes the ``occurrence``-th store write to a file called ``name`` (``'tensor'``: a unit's tensor file)
    fail with ENOSPC. An append first writes half its bytes: through the store's own append (which must cut
    them back), or, with ``torn``, bypassing it (a process that died mid-write leaves them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, occurrence: int = 1, torn: bool = False) -> None:
        self.name, self.occurrence, self.torn, self.seen, self.failed = name, occurrence, torn, 0, False
        append, replace, write_all = store_module._append, store_module._replace, store_module._write_all

        def half_then_full(fd: int, payload: bytes) -> None:
            write_all(fd, payload[: len(payload) // 2])
            raise no_space()

        def failing_append(path: Path, lines) -> None:
            if not self._hit(path):
                return append(path, lines)
            if self.torn:
                payload = "".join(store_module.json.dumps(line) + "\n" for line in lines).encode()
                with open(path, "ab") as handle:
                    handle.write(payload[: len(payload) // 2])
                raise no_space()
            monkeypatch.setattr(store_module, "_write_all", half_then_full)
            try:
                return append(path, lines)
            finally:
                monkeypatch.setattr(store_module, "_write_all", write_all)

        def failing_replace(path: Path, payload: bytes) -> None:
            if self._hit(path):
                raise no_space()
            return replace(path, payload)

        monkeypatch.setattr(store_module, "_append", failing_append)
        monkeypatch.setattr(store_module, "_replace", failing_replace)

    def _hit(self, path: Path) -> bool:
        matches = path.suffix == ".safetensors" if self.name == "tensor" else path.name == self.name
        if not matches or self.failed:
            return False
        self.seen += 1
        self.failed = self.seen == self.occurrence
        return self.failed


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return write_fault_experiment(tmp_path_factory.mktemp("disk"), QUICK)


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert run_experiment(experiment, out, progress=False).units_run == FAULT_UNITS
    return out


def expected_error(out: Path) -> str:
    return (f"error: cannot write the result store {out}: no space left on the device; free space, then run the "
            "same command again: it resumes from the last finished unit")


@pytest.mark.parametrize("name, occurrence, torn", [
    (CONFIG_FILE, 1, False),  # when the store opens
    ("tensor", 3, False),  # the tensor file of the third unit
    (RECORDS_FILE, 5, False),  # the records of the fifth unit: half written, cut back by the append itself
    (DONE_FILE, 2, True),  # the second done line, torn: cut off when the store reopens
], ids=["config", "tensor", "records", "done-torn"])
def test_a_full_disk_is_one_clear_error_and_the_same_command_resumes(name, occurrence, torn, experiment, reference,
                                                                      tmp_path, capsys, monkeypatch):
    out = tmp_path / "store"
    command = ["run", str(experiment), "--out", str(out), "--no-report"]
    disk = FullDisk(monkeypatch, name, occurrence, torn)
    assert run_cli(command) == 2
    assert disk.failed, "the injected failure was not reached"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line.lower()] == [expected_error(out)]
    if name in (RECORDS_FILE, DONE_FILE):
        written = (out / name).read_bytes()
        assert written.endswith(b"\n") != torn, "the failed append must be cut back (and the torn one left)"
    assert not list(out.rglob("*.tmp")), "a failed replace left its temporary file"
    monkeypatch.undo()  # space freed
    assert run_cli(command) == 0
    assert assert_same_results(out, reference) == FAULT_UNITS


def test_quota_and_read_only_disks_are_named_and_other_errors_pass_through():
    quota = storage_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "the result store runs/x", "run it again")
    assert str(quota) == ("cannot write the result store runs/x: the disk quota is exceeded; free space or raise "
                          "the quota, then run it again")
    read_only = storage_error(OSError(errno.EROFS, "Read-only file system"), "X", "run it again")
    assert str(read_only) == "cannot write X: the file system is read-only; remount it writable, then run it again"
    assert storage_error(OSError(errno.EIO, "I/O error"), "X", "run it again") is None  # a real fault: not hidden


def test_a_full_disk_while_saving_an_artifact_names_the_file(tmp_path, monkeypatch):
    import torch

    from idls.core import artifacts

    def full(path, write):
        raise no_space()

    monkeypatch.setattr(artifacts, "_atomic_write", full)
    target = tmp_path / "uap.safetensors"
    with pytest.raises(UserError) as error:
        save_artifact(target, {"delta": torch.zeros(3)}, {"kind": "test"})
    assert str(error.value) == (f"cannot write artifact {str(target)!r}: no space left on the device; free space, "
                                "then run the same command again")
    monkeypatch.undo()
    save_artifact(target, {"delta": torch.zeros(3)}, {"kind": "test"})
    assert load_artifact(target, kind="test").tensors["delta"].shape == (3,)


def test_a_full_disk_outside_the_store_is_one_line_through_the_cli(experiment, tmp_path, capsys, monkeypatch):
    """The CLI's safety net: a disk that fills while the report is written (after the store is complete)."""
    from idls.report import experiment_report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "store" / "report.html"))

    monkeypatch.setattr(experiment_report, "write_experiment_report", full)
    assert run_cli(["run", str(experiment), "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"error: cannot write {tmp_path / 'store' / 'report.html'}: no space left "
                                            "on the device; free space, then run the same command again")
