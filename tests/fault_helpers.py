"""Fault injection for the trust-under-faults tests: a small experiment, and kill -9 at random moments.

:func:`kill_and_resume` starts a command (a subprocess, or a fork of this process for the fast variants),
SIGKILLs it at a seeded random moment of the work it has left, starts it again, and at last lets it
finish. Moments are read on the process's own CPU clock (``/proc/PID/stat``), not the wall clock: on a
loaded machine a run's start-up can take twice as long from one start to the next, which would move a
wall-clock moment out of the work, while the CPU seconds a run has spent say how far it got.
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
from idls.experiments.store import LOCK_FILE

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


def holds_lock(store: Path) -> Callable[[int], bool]:
    """Whether process ``pid`` has opened the result store ``store`` (its pid is in the store's lock file): from
    then on it does the work (before, it starts Python and plans)."""
    lock = store / LOCK_FILE

    def opened(pid: int) -> bool:
        try:
            return lock.read_text().strip() == str(pid)
        except OSError:
            return False

    return opened


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
    """What happened to each start: killed while running, or finished (exit status 0) before its moment."""

    killed: int = 0
    finished_early: int = 0
    seconds: float = 0.0
    #: the share of the work left after each start (1: nothing done, 0: finished)
    left: list[float] = field(default_factory=list)

    @property
    def mid_work(self) -> int:
        """Kills after which some but not all of the work was done."""
        return sum(0 < share < 1 for share in self.left)




def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (``None`` once it is reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


@dataclass
class RunTimes:
    """CPU seconds of an uninterrupted run: when its output appeared, when its work was done, when it ended."""

    appeared: float
    worked: float
    ended: float


def cpu_of_run(process: Process, output: Path, left: Callable[[Path], float], timeout: float = 900) -> RunTimes:
    """Wait for a run that must succeed, noting its CPU seconds when ``output`` appeared and when ``left(output)``
    (the share of its work still to do) reached 0."""
    began, appeared, worked, spent = time.monotonic(), None, None, 0.0
    while True:
        status = process.poll()
        spent = cpu_seconds(process.pid) or spent
        if appeared is None and output.exists():
            appeared = spent
        if worked is None and output.exists() and left(output) <= 0:
            worked = spent
        if status is not None:
            assert status == 0, process.error()
            return RunTimes(spent if appeared is None else appeared, spent if worked is None else worked, spent)
        assert time.monotonic() - began < timeout, "the run did not end"
        time.sleep(0.005)


#: a start is killed within this share of the work it has left, so that no killed start finishes: the kills
#: all fall in the work, the last unit left is killed again and again, and the final start finishes it
KILL_WINDOW = 0.5


def kill_and_resume(start: Callable[[], Process], kills: int, *, seed: int, startup: float, work: float,
                    left: Callable[[], float], began: Callable[[int], bool] | None = None, timeout: float = 600
                    ) -> KillReport:
    """Start ``kills`` times, each start killed with SIGKILL at a seeded random moment of the work it has left:
    ``u * KILL_WINDOW * work * left()`` CPU seconds after the start's work began, ``u`` uniform in (0, 1)
    (``work``: the CPU seconds of the whole work, ``left()``: the share still to do, read from the output).
    The work begins when ``began(pid)`` holds (a signal of that start in the output, e.g. its pid in the
    store's lock), or else ``startup`` CPU seconds after the start. A start that ends before its moment
    must succeed. At last one more start runs to the end and must succeed."""
    import random

    rng = random.Random(seed)
    report = KillReport()
    clock = time.monotonic()
    for _ in range(kills):
        after = (0.0 if began else startup) + rng.uniform(0, 1) * KILL_WINDOW * work * max(left(), 0.05)
        process = start()
        status = process.run_until(after, timeout, began)
        if status is None:
            process.kill()
            report.killed += 1
        else:
            assert status == 0, f"a run ended with status {status} before its kill: {process.error()}"
            report.finished_early += 1
        report.left.append(round(left(), 3))
    process = start()
    status = process.run_until(float("inf"), timeout)
    assert status == 0, f"the final run ended with status {status}: {process.error()}"
    report.seconds = time.monotonic() - clock
    return report


class Process:
    """A started run: polled, run until it has spent some CPU seconds, killed with SIGKILL."""

    pid: int
    log: Path

    def poll(self) -> int | None:  # pragma: no cover - interface
        """The exit status once it ended, else ``None``."""
        raise NotImplementedError

    def kill(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def run_until(self, after: float, timeout: float, began: Callable[[int], bool] | None = None) -> int | None:
        """Wait until it ends (its exit status) or has spent ``after`` CPU seconds past the moment ``began(pid)``
        first held (without ``began``: past its start); ``None``: still running then."""
        deadline = time.monotonic() + timeout
        base = 0.0 if began is None else None
        while True:
            status = self.poll()
            if status is not None:
                return status
            spent = cpu_seconds(self.pid) or 0.0
            if base is None and began(self.pid):
                base = spent
            if base is not None and spent >= base + after:
                return None
            assert time.monotonic() < deadline, f"the run did not end within {timeout} s: {self.error()}"
            time.sleep(0.005)

    def error(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


class Subprocess(Process):
    """A command in a new process (its stderr kept in a file for failure messages)."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as handle:
            self.process = subprocess.Popen(list(command), env=env, stdout=subprocess.DEVNULL, stderr=handle)
        self.pid = self.process.pid

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class Fork(Process):
    """``work()`` in a fork of this process (no interpreter start-up: the fast variants); exit status 0 when
    it returns, the ``SystemExit`` code when it exits, 70 with the traceback in ``log`` when it raises."""

    def __init__(self, work: Callable[[], object], log: Path) -> None:
        self.log = log
        self.status: int | None = None
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

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
