"""``run_experiment``: plan the grid, open the store, run the missing units, summarise.

::

    from idls.experiments import run_experiment
    summary = run_experiment("experiments/adv2_cifar.yaml", "runs/adv2", quick=True)

Running the same call again resumes: finished units are skipped, unfinished ones run again.
``cells=[...]`` runs only the selected cells of the grid (:mod:`~idls.experiments.selection`) into the same store.
"""

from __future__ import annotations

import time
import warnings as _warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from idls.errors import UserError
from idls.experiments.backends import BACKENDS, run_units
from idls.experiments.cells import Cell, Unit, expand_cells, expand_units
from idls.experiments.config import Experiment, load_experiment
from idls.experiments.execute import UnitOutput, Workspace
from idls.experiments.selection import select_cells
from idls.experiments.store import ExperimentStore


@dataclass
class Plan:
    """The cells and units of an experiment, and warnings about what was left out."""

    cells: list[Cell]
    units: list[Unit]
    images_by_model: dict[int, int]
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunSummary:
    """What a call of :func:`run_experiment` did."""

    out: Path
    experiment: str
    cells: int
    units: int
    units_run: int
    units_skipped: int
    records_written: int
    records_total: int
    seconds: float
    recovered_records_dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    #: cells of the grid this call was asked to run (``cells`` selectors), or ``None`` for all of them
    cells_selected: int | None = None
    #: finished units of the selected cells discarded before running them again (``redo``)
    units_discarded: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "out": str(self.out)}


def plan_experiment(experiment: Experiment, workspace: Workspace) -> Plan:
    """Load each model and its images (to know the usable interpreters and image counts) and expand the grid."""
    interpreters_by_model: dict[int, list[str]] = {}
    images_by_model: dict[int, int] = {}
    notes: list[str] = []
    for index, model in enumerate(experiment.models):
        usable, skipped = workspace.usable_interpreters(index)
        interpreters_by_model[index] = usable
        notes += skipped
        images_by_model[index] = len(workspace.images(index))
        if images_by_model[index] < experiment.data.n:
            notes.append(f"{model.name} classifies only {images_by_model[index]} of the images correctly "
                         f"(asked for data.n = {experiment.data.n}); attacking those {images_by_model[index]}")
        input_size = workspace.model_classifier(index).input_size
        for receiver in experiment.transfer_models:
            other = workspace.classifier(receiver).input_size
            if other != input_size:
                raise UserError(f"transfer_models: {receiver.name} takes {other} px images but {model.name} "
                                f"takes {input_size} px; transfer needs models of the same input size")
    cells = expand_cells(experiment, interpreters_by_model, images_by_model, notes)
    return Plan(cells, expand_units(cells, experiment.data.batch_size), images_by_model, notes)


def fit_attacks(plan: Plan, workspace: Workspace, experiment: Experiment, out: Path) -> Plan:
    """Fit, once and in this process, the cells whose attack is fitted on a data set (universal perturbations);
    their units then apply the saved artifact (``out/fitted/CELL.safetensors``, reused on resume)."""
    from idls.attacks import ATTACKS

    if not any(ATTACKS.get(c.attack).needs_fit and "perturbation" not in c.options for c in plan.cells):
        return plan
    cells = [workspace.fit_cell(c, out) if ATTACKS.get(c.attack).needs_fit and "perturbation" not in c.options else c
             for c in plan.cells]
    return Plan(cells, expand_units(cells, experiment.data.batch_size), plan.images_by_model, plan.warnings)


def run_experiment(
    experiment: str | Path | Experiment,
    out: str | Path,
    *,
    backend: str = "local",
    quick: bool = False,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
    ray_address: str | None = None,
    cells: Sequence[str] | None = None,
    redo: bool = False,
) -> RunSummary:
    """Run (or resume) an experiment into the store ``out``.

    Args:
        experiment: a YAML file or a loaded :class:`Experiment`.
        out: output folder (created; a folder holding another configuration's results is refused).
        backend: ``'local'`` (this process) or ``'ray'`` (actors of a Ray cluster).
        quick: fewer images and iterations (the file's ``quick:`` section); only with a file.
        overrides: dotted keys -> values (``--set``), only with a file.
        progress: show a progress bar over units.
        ray_address: Ray cluster address (default: the connected one, ``RAY_ADDRESS``, or a new local one).
        cells: run only the cells matching one of these selectors (``KEY=PATTERN,...``, see
            :mod:`~idls.experiments.selection`); the store keeps the whole grid's configuration, so a later
            call without them runs the rest. ``cells``, ``units`` and ``units_skipped`` of the summary
            count the whole grid; the selected cells' units that were not run are not "skipped".
        redo: first discard the selected cells' finished units and fitted artifacts, so they run again
            (e.g. after an upgrade changed a default); needs ``cells``. Other cells, fitted detectors and
            trained models are kept.
    """
    started = time.perf_counter()
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if redo and not cells:
        raise UserError("--redo re-runs the cells --cells selects; add --cells KEY=PATTERN "
                        "(to re-run every cell, choose a new --out)")
    if isinstance(experiment, Experiment):
        if overrides or (quick and not experiment.quick):
            raise UserError("quick and overrides apply when loading: use load_experiment(path, overrides, quick=True)")
    else:
        experiment = load_experiment(experiment, overrides, quick=quick)
    if backend == "ray":
        from idls.experiments.backends import import_ray

        import_ray()  # fail before any work when ray is missing
    workspace = Workspace(experiment)
    workspace.artifact_dir = Path(out)
    plan = plan_experiment(experiment, workspace)
    _report_notes(plan.warnings, progress)
    selected = select_cells(plan.cells, cells or ())
    store = ExperimentStore.open(out, experiment.to_dict(), {"backend": backend})
    try:
        store.write_plan({c.id: c.n_batches(experiment.data.batch_size) for c in plan.cells})
        discarded = 0
        if redo:
            discarded = store.forget({c.id for c in selected})
            for cell in selected:
                workspace.forget_fit(cell, Path(out))
        whole = plan
        if cells:
            plan = Plan(selected, expand_units(selected, experiment.data.batch_size), plan.images_by_model, plan.warnings)
        plan = fit_attacks(plan, workspace, experiment, Path(out))
        if any(m.training is not None for m in experiment.models):  # trained during planning: workers load the files
            experiment = replace(experiment, models=workspace.resolved_models())
            workspace.experiment = experiment
        if experiment.detectors:
            from idls.experiments.detector_fit import fit_detectors

            experiment = replace(experiment, detectors=fit_detectors(workspace, Path(out)))
            workspace.experiment = experiment
        pending = [u for u in plan.units if not store.is_done(*u.key)]
        written = 0
        title = experiment.name + (f" ({len(selected)} of {len(whole.cells)} cells)" if cells else "")
        with _progress_bar(progress, len(plan.units), len(plan.units) - len(pending), title) as advance:
            def commit(unit: Unit, output: UnitOutput) -> None:
                nonlocal written
                store.commit(unit.cell.id, unit.batch, output.records, output.tensors)
                written += len(output.records)
                advance(unit)

            run_units(backend, experiment, workspace, pending, commit, ray_address=ray_address)
        total = len(store.records())
        recovered = store.recovery.dropped_records
    finally:
        store.close()
    whole_done = sum(1 for u in whole.units if store.is_done(*u.key))
    return RunSummary(
        out=Path(out), experiment=experiment.name, cells=len(whole.cells), units=len(whole.units),
        units_run=len(pending), units_skipped=whole_done - len(pending), records_written=written,
        records_total=total, seconds=time.perf_counter() - started, recovered_records_dropped=recovered,
        warnings=plan.warnings, cells_selected=len(selected) if cells else None, units_discarded=discarded,
    )


def _report_notes(notes: list[str], console: bool) -> None:
    """Show what the plan left out: on the console next to the progress bar, else as Python warnings."""
    if console:
        from rich.console import Console

        for note in notes:
            Console(stderr=True).print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    else:
        for note in notes:
            _warnings.warn(note, stacklevel=3)


class _progress_bar:
    """A rich progress bar over units (a no-op when disabled); ``advance(unit)`` after each unit."""

    def __init__(self, enabled: bool, total: int, done: int, title: str) -> None:
        self.enabled, self.total, self.done, self.title = enabled, total, done, title
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda unit: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[unit]}"))
        self._progress.start()
        task = self._progress.add_task(self.title, total=self.total, completed=self.done, unit="")

        def advance(unit: Unit) -> None:
            self._progress.update(task, advance=1, unit=f"{unit.cell.id} batch {unit.batch}")

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


__all__ = ["Plan", "RunSummary", "plan_experiment", "run_experiment"]
