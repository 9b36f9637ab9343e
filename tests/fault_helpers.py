"""Fault injection for the trust-under-faults tests: a small experiment, and kill -9 at chosen moments.

:func:`kill_and_resume` starts a command (a subprocess, or a fork of this process for the fast variants),
SIGKILLs it at each of the given moments after its start, starts it again, and at last lets it finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import idls

#: PGD and ADV² on CAM against a random-weight embedded CNN: 4 images in batches of one -> 8 units
FAULT_EXPERIMENT = {
    "name": "faults",
    "models": [{"name": "embedded_cnn", "weights": "random", "init_seed": 0}],
    "data": {"source": "embedded", "n": 4, "pool": 200, "batch_size": 1},
    "interpreters": ["cam"],
    "attacks": [{"name": "pgd", "options": {"steps": 30}}, {"name": "adv2", "options": {"steps": 12, "warm_start": 6}}],
    "targets": ["benign"],
}
FAULT_UNITS = 8


def write_fault_experiment(folder: Path, experiment: dict | None = None) -> Path:
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(experiment or FAULT_EXPERIMENT))
    return path


def idls_command(*args: str) -> list[str]:
    """The ``idls`` command line of this checkout's package, run by this interpreter."""
    return [sys.executable, "-m", "idls.cli", *args]


def single_thread_env() -> dict[str, str]:
    """This environment with one intra-op thread (bit-exact reductions) and this checkout's ``idls`` first on
    the path, the cache of this test session kept (``IDLS_CACHE_DIR``)."""
    source = str(Path(idls.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": path}


@dataclass
class KillReport:
    """What happened to each start: killed while running, or finished (exit status) before its moment."""

    killed: int = 0
    finished_early: int = 0
    seconds: float = 0.0
    #: what ``observe()`` returned after each start (e.g. the units done so far)
    progress: list[object] = field(default_factory=list)


def kill_moments(seed: int, count: int, start: float, end: float) -> list[float]:
    """``count`` seeded moments spread uniformly over (``start``, ``end``) seconds, in random order."""
    import random

    rng = random.Random(seed)
    return [rng.uniform(start, end) for _ in range(count)]


def timed_run(process: Process, output: Path, timeout: float = 900) -> tuple[float, float]:
    """Wait for an uninterrupted run: (seconds until ``output`` appeared, seconds until the run ended).

    Before its output appears a run is starting Python, importing and planning: a kill there tests
    nothing about resuming, so kill moments are drawn between the two."""
    began, appeared = time.monotonic(), None
    while True:
        status = process.wait(0.02)
        if appeared is None and output.exists():
            appeared = time.monotonic() - began
        if status is not None:
            assert status == 0, process.error()
            ended = time.monotonic() - began
            return (ended if appeared is None else appeared), ended
        assert time.monotonic() - began < timeout, "the uninterrupted run did not end"


def kill_and_resume(start: Callable[[], Process], moments: Sequence[float], *, finish_timeout: float = 600,
                    observe: Callable[[], object] | None = None) -> KillReport:
    """Start, SIGKILL ``moments[i]`` seconds after the i-th start (unless it ended earlier, which must be a
    success), and finally run once more to the end, which must succeed."""
    report = KillReport()
    began = time.monotonic()
    for moment in moments:
        process = start()
        status = process.wait(moment)
        if status is None:
            process.kill()
            report.killed += 1
        else:
            assert status == 0, f"a run ended with status {status} before its kill: {process.error()}"
            report.finished_early += 1
        if observe is not None:
            report.progress.append(observe())
    process = start()
    status = process.wait(finish_timeout)
    assert status == 0, f"the final run ended with status {status}: {process.error()}"
    report.seconds = time.monotonic() - began
    return report


class Process:
    """A started run that can be waited for (with a timeout) and killed with SIGKILL."""

    def wait(self, timeout: float) -> int | None:  # pragma: no cover - interface
        raise NotImplementedError

    def kill(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def error(self) -> str:
        return ""


class Subprocess(Process):
    """A command in a new process (its stderr kept in a file for failure messages)."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=handle)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def error(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


class Fork(Process):
    """``work()`` in a fork of this process (no interpreter start-up: the fast variants); exit status 0 when
    it returns, the ``SystemExit`` code when it exits, 70 with the traceback on stderr when it raises."""

    def __init__(self, work: Callable[[], object], log: Path) -> None:
        self.log = log
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child never returns into pytest
            code = 70
            try:
                handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(handle, 1)
                os.dup2(handle, 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                work()
                code = 0
            except SystemExit as exit_:
                code = int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
            except BaseException:  # noqa: BLE001 - reported through the exit status
                traceback.print_exc()
            finally:
                os._exit(code)

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)

    def error(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
