"""Trust under faults: kill -9 at random moments, resume with the same command, get the uninterrupted result.

Three commands, each killed with SIGKILL over and over, started again with the same arguments each
time, and at last run to the end. The uninterrupted run is the reference; it is timed on its CPU clock
(CPU seconds, not wall seconds: on a loaded machine the start-up alone can vary by more than the work).
Its work ``W`` lasts from the moment it opened its result store until its output shows all of it done
(units, epochs, the fit and the report); ``idls train`` has no store, and its output appears after the
first epoch, so there the start-up and ``W`` are worked out from the epochs that follow. Each start is
killed at a seeded random moment of the first half of the work it has left: ``u W r / 2`` CPU seconds
after it opened the store (its pid in the store's lock; ``idls train``: after the start-up), ``u``
uniform in (0, 1), ``r`` the share of the work still to do. So the kills fall inside the work, ever
later in it, and no killed start finishes: a kill loses the unit in flight, and once one unit is left
every further start is killed somewhere in that unit.

* ``idls run`` of an 8-unit experiment: no record lost or duplicated, records identical to the
  reference's (timing fields aside), one done marker per unit, bit-identical tensor files;
* ``idls train``: the final weights are bit-identical to the reference's (one intra-op thread: the
  training loop's determinism claim, docs in ``idls.defenses.training.loop``);
* ``idls attack --attack sgd-uap --fit-data ...`` (a universal fit, then its application): the same
  fitted perturbation and the same records.

The slow tests kill a real ``python -m idls.cli`` process 20 times; the fast ones (default suite) kill a
fork of the test process 3 times (no interpreter start-up: seconds instead of minutes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from idls.cli import main
from idls.core import load_artifact
from idls.errors import UserError
from idls.experiments.store import DONE_FILE, read_complete_lines
from tests.conftest import run_cli
from tests.fault_helpers import (
    FAULT_EXPERIMENT,
    FAULT_UNITS,
    Fork,
    Subprocess,
    cpu_of_run,
    holds_lock,
    idls_command,
    kill_and_resume,
    single_thread_env,
    write_fault_experiment,
)
from tests.store_compare import assert_same_results

SEED = 14  # the number: the kill moments are seeded
SLOW_KILLS, FAST_KILLS = 20, 3


def seeded_start_weights(path: Path) -> Path:
    """A seeded random ``embedded_cnn`` as a weights file (``--weights random`` is unseeded in the CLI)."""
    from idls.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model("embedded_cnn").net
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def units_done(store: Path) -> int:
    return len(read_complete_lines(store / DONE_FILE, repair=False))


def subprocess_starter(args: list[str], logs: Path):
    env, count = single_thread_env(), iter(range(10_000))
    return lambda: Subprocess(idls_command(*args), env, logs / f"start{next(count)}.log")


def fork_starter(args: list[str], logs: Path):
    count = iter(range(10_000))
    return lambda: Fork(lambda: main(list(args)), logs / f"start{next(count)}.log")


def killed_and_reference(tmp_path: Path, command, kills: int, make_args, left, *, output_after: float = 0.0):
    """Run ``make_args(reference_out)`` uninterrupted for ``W`` (see the module notes), then ``make_args(killed_out)``
    killed ``kills`` times (:func:`kill_and_resume`; ``left(folder)`` reads the share of the work still to do)
    and run to the end; returns both output folders. ``output_after``: the share of the work done when the
    output first appears; 0 for a command that writes a result store, whose lock then says when each start
    begins its work."""
    logs = tmp_path / "logs"
    logs.mkdir()
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    if command is fork_starter:  # in this process first, so that the timed forks start with everything imported
        assert run_cli(make_args(tmp_path / "warm-up")) == 0
    first = cpu_of_run(command(make_args(reference), logs)(), reference, left)
    work = max((first.worked - first.appeared) / (1 - output_after), 0.02 * first.ended)
    startup = first.appeared - output_after * work
    report = kill_and_resume(command(make_args(killed), logs), kills, seed=SEED, startup=startup, work=work,
                             left=lambda: left(killed), began=None if output_after else holds_lock(killed))
    print(f"W = {work:.2f} CPU s, start-up {startup:.2f}, in all {first.ended:.2f}; {report.killed} kills landed, "
          f"{report.mid_work} with part of the work done; {report.finished_early} starts ended before their "
          f"moment; {report.seconds:.0f} s wall; work left after each start: {report.left}")
    assert report.mid_work >= 1, "no kill landed between two units of work"
    return reference, killed


# -- idls run ------------------------------------------------------------------------------------------------
def check_run(tmp_path: Path, command, kills: int, experiment: dict) -> None:
    path = write_fault_experiment(tmp_path, experiment)
    reference, killed = killed_and_reference(
        tmp_path, command, kills, lambda out: ["run", str(path), "--out", str(out), "--no-report"],
        left=lambda store: 1 - (units_done(store) if (store / DONE_FILE).exists() else 0) / FAULT_UNITS)
    assert assert_same_results(killed, reference) == FAULT_UNITS  # one record per image and cell
    assert units_done(killed) == FAULT_UNITS


@pytest.mark.slow
def test_idls_run_killed_20_times_equals_an_uninterrupted_run(tmp_path):
    check_run(tmp_path, subprocess_starter, SLOW_KILLS, FAULT_EXPERIMENT)


def test_idls_run_forked_and_killed_3_times_equals_an_uninterrupted_run(tmp_path):
    fast = {**FAULT_EXPERIMENT, "attacks": [{"name": "pgd", "options": {"steps": 40}},
                                            {"name": "adv2", "options": {"steps": 16, "warm_start": 6}}]}
    check_run(tmp_path, fork_starter, FAST_KILLS, fast)


# -- idls train ----------------------------------------------------------------------------------------------
def epochs_done(checkpoint: Path) -> int:
    """Epochs a fit's checkpoint holds; 0 when there is none (the fit may delete it between look and read)."""
    try:
        return int(load_artifact(checkpoint).metadata["epochs_done"])
    except UserError:
        return 0


def check_training(tmp_path: Path, command, kills: int, n: int, epochs: int) -> None:
    start = seeded_start_weights(tmp_path / "start.safetensors")
    reference, killed = killed_and_reference(
        tmp_path, command, kills,
        lambda out: ["train", "standard", "--data", "embedded-train", "--n", str(n), "--weights", str(start),
                     "-o", f"epochs={epochs}", "-o", "batch_size=16", "-o", "progress=false",
                     "--out", str(out / "trained.safetensors")], output_after=1 / epochs,
        left=lambda out: 0.0 if (out / "trained.safetensors").is_file() else
        1 - epochs_done(out / "trained.checkpoint.safetensors") / epochs)
    a, b = load_file(str(killed / "trained.safetensors")), load_file(str(reference / "trained.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ from the uninterrupted run's: {different[:5]}"
    initial = load_file(str(start))
    assert any(not torch.equal(a[k], initial[k]) for k in initial), "the training changed nothing"


@pytest.mark.slow
def test_idls_train_killed_20_times_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    check_training(tmp_path, subprocess_starter, SLOW_KILLS, n=512, epochs=10)


def test_idls_train_forked_and_killed_3_times_gives_the_same_weights(tmp_path):
    check_training(tmp_path, fork_starter, FAST_KILLS, n=128, epochs=6)


# -- a universal fit (idls attack --attack sgd-uap) -------------------------------------------------------------
#: rough shares of a universal attack's work: the fit, applying it to the batches, the tables and the report
SHARES = {"fit": 0.6, "batches": 0.2, "report": 0.2}


def universal_left(store: Path, epochs: int, batches: int) -> float:
    """The share of ``idls attack --attack sgd-uap``'s work left, read from its output folder."""
    fitted = store / "fitted"
    artifacts = [p for p in fitted.glob("*.safetensors") if not p.name.endswith(".checkpoint.safetensors")] \
        if fitted.is_dir() else []
    checkpoints = list(fitted.glob("*.checkpoint.safetensors")) if fitted.is_dir() else []
    fit = 1.0 if artifacts else (epochs_done(checkpoints[0]) / epochs if checkpoints else 0.0)
    applied = (units_done(store) if (store / DONE_FILE).exists() else 0) / batches
    reported = float((store / "report.html").exists())
    return 1 - SHARES["fit"] * fit - SHARES["batches"] * applied - SHARES["report"] * reported


def check_universal_fit(tmp_path: Path, command, kills: int, fit_n: int, epochs: int) -> None:
    start = seeded_start_weights(tmp_path / "start.safetensors")
    reference, killed = killed_and_reference(
        tmp_path, command, kills,
        lambda out: ["attack", "--attack", "sgd-uap", "--weights", str(start), "--fit-data", "embedded-train",
                     "--fit-n", str(fit_n), "-o", f"epochs={epochs}", "--n", "8", "--batch-size", "4", "-i", "cam",
                     "--out", str(out)],
        left=lambda out: universal_left(out, epochs, batches=2))
    a, b = load_file(str(killed / "universal.safetensors")), load_file(str(reference / "universal.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "another perturbation was fitted"
    assert assert_same_results(killed, reference) == 8


@pytest.mark.slow
def test_universal_fit_killed_20_times_gives_the_perturbation_of_an_uninterrupted_fit(tmp_path):
    check_universal_fit(tmp_path, subprocess_starter, SLOW_KILLS, fit_n=512, epochs=12)


def test_universal_fit_forked_and_killed_3_times_gives_the_same_perturbation(tmp_path):
    check_universal_fit(tmp_path, fork_starter, FAST_KILLS, fit_n=192, epochs=5)
