"""Declarative experiments: YAML grids, an append-only result store with resume, local and Ray backends.

::

    from idls.experiments import load_experiment, run_experiment
    experiment = load_experiment("experiments/adv2_cifar.yaml", {"data.n": 8}, quick=True)
    summary = run_experiment(experiment, "runs/adv2")          # run again to resume

Modules: :mod:`~idls.experiments.config` (YAML -> :class:`Experiment`),
:mod:`~idls.experiments.cells` (grid -> cells and units), :mod:`~idls.experiments.execute`
(one unit), :mod:`~idls.experiments.store` (records, done markers, tensors, recovery),
:mod:`~idls.experiments.backends` (local, Ray), :mod:`~idls.experiments.run` (the driver).
"""

from idls.experiments.cells import Cell, Unit, expand_cells, expand_units
from idls.experiments.config import (
    AttackSpec,
    DataSpec,
    Experiment,
    ModelSpec,
    experiment_from_mapping,
    load_experiment,
    parse_overrides,
)
from idls.experiments.execute import UnitOutput, Workspace, run_unit
from idls.experiments.run import Plan, RunSummary, plan_experiment, run_experiment
from idls.experiments.store import ExperimentStore, read_records

__all__ = [
    "AttackSpec",
    "Cell",
    "DataSpec",
    "Experiment",
    "ExperimentStore",
    "ModelSpec",
    "Plan",
    "RunSummary",
    "Unit",
    "UnitOutput",
    "Workspace",
    "expand_cells",
    "expand_units",
    "experiment_from_mapping",
    "load_experiment",
    "parse_overrides",
    "plan_experiment",
    "read_records",
    "run_experiment",
    "run_unit",
]
