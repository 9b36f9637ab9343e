"""The experiment grid: cells (one attack configuration each) and units (a cell's image batches).

Cells = models x attacks x (joint attacks only: frameworks x targets x interpreters) x seeds.
A classifier-only attack (pgd, cw, stadv) is one cell per model and seed, evaluated with every
interpreter; a joint attack (adv2, advedge, advedge+) is one cell per framework, target map and
attacked interpreter, evaluated with that interpreter (with all of them when
``evaluate_all_interpreters``). A unit is one batch of one cell; the unit order is
deterministic and no unit's result depends on the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idls.errors import UserError
from idls.experiments.config import AttackSpec, Experiment, spec_dict

NONE = "none"  #: attacked interpreter / target of classifier-only attacks
HASH_LENGTH = 10


@dataclass
class Cell:
    """One attack configuration of the grid.

    Attributes:
        id: stable identifier: readable fields plus a hash of everything that shapes the results.
        model_index: position of the model in ``experiment.models``.
        attacked_interpreter: the interpreter a joint attack is crafted against, ``'none'`` otherwise.
        evaluated: interpreters whose maps are evaluated on the adversarial images.
        n_images: images attacked (the first ``n_images`` selected images of the model).
        options: keyword arguments of ``create_attack`` (all but ``interpreter``).
    """

    id: str
    experiment: str
    model_index: int
    model: str
    weights: str
    data: str
    attack: str
    framework: str
    target: str
    mode: str
    epsilon: float | None
    seed: int
    attacked_interpreter: str
    evaluated: tuple[str, ...]
    n_images: int
    options: dict[str, Any] = field(default_factory=dict)
    #: the attack's :meth:`~idls.attacks.base.Attack.variant` label ('' for most attacks)
    variant: str = ""
    #: the model's training defence (``ModelSpec.training``), or ``None``
    training: str | None = None

    @property
    def joint(self) -> bool:
        """Whether the attack is crafted against an interpreter."""
        return self.attacked_interpreter != NONE

    def record_keys(self) -> dict[str, Any]:
        """The cell fields every record of this cell carries (see the store schema)."""
        return {
            "experiment": self.experiment, "cell": self.id, "model": self.model, "weights": self.weights,
            "data": self.data, "attack": self.attack, "framework": self.framework, "target": self.target,
            "mode": self.mode, "epsilon": self.epsilon, "seed": self.seed,
            "attacked_interpreter": self.attacked_interpreter, "variant": self.variant,
            **({} if self.training is None else {"training": self.training}),
        }

    def n_batches(self, batch_size: int) -> int:
        return math.ceil(self.n_images / batch_size)


@dataclass(eq=False)
class Unit:
    """Batch ``batch`` of ``cell``: images ``start`` to ``stop`` (exclusive) of the model's selection."""

    cell: Cell
    batch: int
    start: int
    stop: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.cell.id, self.batch)


def attack_epsilon(attack: object) -> float | None:
    """The L_inf / cap radius an attack object uses (``None`` for StAdv and uncapped C&W)."""
    value = getattr(attack, "epsilon", None)
    return None if value is None else float(value)


def expand_cells(
    experiment: Experiment,
    interpreters_by_model: Mapping[int, Sequence[str]] | None = None,
    images_by_model: Mapping[int, int] | None = None,
    notes: list[str] | None = None,
) -> list[Cell]:
    """All cells of the grid, in a deterministic order (models, attacks, frameworks, targets, interpreters, seeds).

    Args:
        interpreters_by_model: model index -> the interpreters usable with it (default: all listed).
        images_by_model: model index -> number of selected images (default: ``data.n``).
        notes: collects one line per (attack, interpreter) pair left out because the attack cannot be
            crafted against that interpreter (:meth:`~idls.attacks.base.Attack.interpreter_unavailable_reason`).

    Raises:
        UserError: an attack rejects its options (the message names the cell).
    """
    from idls.attacks import ATTACKS
    from idls.interpreters import interpreter_class
    from idls.runner import attack_needs_interpreter

    cells: list[Cell] = []
    for index, model in enumerate(experiment.models):
        usable = list(experiment.interpreters if interpreters_by_model is None else interpreters_by_model[index])
        available = experiment.data.n if images_by_model is None else images_by_model[index]
        for spec in experiment.attacks:
            if attack_needs_interpreter(spec.name):
                attacked = []
                for name in usable:
                    if spec.interpreters is not None and name not in spec.interpreters:
                        continue
                    reason = ATTACKS.get(spec.name).interpreter_unavailable_reason(interpreter_class(name))
                    if reason is None:
                        attacked.append(name)
                    elif notes is not None:
                        notes.append(f"skipping {spec.name} against {name} on {model.name}: {reason}")
                frameworks = experiment.frameworks if accepts_option(spec.name, "framework") else [spec.name]
                targets = experiment.targets if accepts_option(spec.name, "target_map") else [NONE]
                variants = [(framework, target, name) for framework in frameworks
                            for target in targets for name in attacked]
            else:
                variants = [(spec.name, NONE, NONE)]
            cells += [_cell(experiment, index, spec, framework, target, attacked, seed, usable, available)
                      for framework, target, attacked in variants for seed in experiment.seeds]
    ids = [c.id for c in cells]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"attacks: two entries give the same cell {duplicates[0]}; list each attack configuration once")
    return cells


def _cell(experiment: Experiment, index: int, spec: AttackSpec, framework: str, target: str, attacked: str,
          seed: int, usable: Sequence[str], available: int) -> Cell:
    """One cell: the attack's final options (checked by building it), evaluated interpreters, image count, id."""
    from idls.attacks import create_attack

    model = experiment.models[index]
    joint = attacked != NONE
    # the experiment's mode, unless the attack's own options set one (a universal or untargeted-only attack)
    options = {"mode": experiment.mode, **experiment.attack_options_for(spec, attacked if joint else None),
               "seed": seed, "progress": False}
    if joint and framework != spec.name:
        options["framework"] = framework
    if joint and target != NONE:
        options["target_map"] = target
    if _takes_epsilon(spec.name, framework) and experiment.epsilon is not None:
        options.setdefault("epsilon", experiment.epsilon)
    evaluated = tuple(usable) if not joint or experiment.evaluate_all_interpreters else (attacked,)
    if joint:  # the attacked interpreter first
        evaluated = (attacked,) + tuple(n for n in evaluated if n != attacked)
    try:
        attack = create_attack(spec.name, **({"interpreter": attacked} if joint else {}), **options)
    except UserError as exc:
        where = f"{model.name} / {spec.name}" + (f" / {framework} / {target} / {attacked}" if joint else "")
        raise UserError(f"attack {where}: {exc}") from None
    n_images = min(available, experiment.data.n_by_interpreter.get(attacked, available))
    identity = {  # everything that shapes the cell's results
        "model": spec_dict(model) | {"interpreter_options": {
            name: experiment.interpreter_options_for(model, name) for name in evaluated}},
        "data": spec_dict(experiment.data) | {"n_by_interpreter": None},
        "attack": spec.name, "options": options, "attacked": attacked, "evaluated": evaluated,
        "n_images": n_images, "transfer": [spec_dict(m) for m in experiment.transfer_models],
    }
    return Cell(
        id=cell_id(model.name, spec.name, framework, target, attacked, seed, identity),
        experiment=experiment.name, model_index=index, model=model.name, weights=model.weights,
        data=experiment.data.source, attack=spec.name, framework=framework, target=target, mode=experiment.mode,
        epsilon=attack_epsilon(attack), seed=seed, attacked_interpreter=attacked, evaluated=evaluated,
        n_images=n_images, options=options, variant=attack.variant(), training=model.training,
    )


def _takes_epsilon(attack_name: str, framework: str) -> bool:
    """Whether the experiment's ``epsilon`` applies: attacks with an epsilon option whose threat
    (their own, or their framework's for joint attacks) has an epsilon ball (not StAdv)."""
    from idls.attacks import ATTACKS

    balls = ATTACKS.get(attack_name).uses_epsilon and (framework not in ATTACKS or ATTACKS.get(framework).uses_epsilon)
    return balls and accepts_option(attack_name, "epsilon")


def accepts_option(attack_name: str, option: str) -> bool:
    """Whether attack ``attack_name`` takes option ``option`` (a field of its ``Options``)."""
    from idls.attacks import ATTACKS
    from idls.attacks.base import attack_options

    return option in attack_options(ATTACKS.get(attack_name))


def cell_id(model: str, attack: str, framework: str, target: str, attacked: str, seed: int,
            identity: Mapping[str, Any]) -> str:
    """``model.attack[.framework.target.interpreter].sSEED.HASH`` (the hash covers ``identity``)."""
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:HASH_LENGTH]
    parts = [model, attack]
    if attacked != NONE:
        target_label = target if "/" not in target and "\\" not in target else "file-" + Path(target).stem
        if framework != attack:  # attacks that run on a framework's optimiser and steer the map towards a target
            parts += [framework, target_label]
        parts += [attacked]
    return ".".join(parts + [f"s{seed}", digest])


def expand_units(cells: Sequence[Cell], batch_size: int) -> list[Unit]:
    """Units of all cells, ordered by (model, batch, cell): a batch's images stay warm across cells."""
    units = [
        Unit(cell, batch, batch * batch_size, min((batch + 1) * batch_size, cell.n_images))
        for cell in cells for batch in range(cell.n_batches(batch_size))
    ]
    order = {id(cell): i for i, cell in enumerate(cells)}
    return sorted(units, key=lambda u: (u.cell.model_index, u.batch, order[id(u.cell)]))


__all__ = ["NONE", "Cell", "Unit", "accepts_option", "attack_epsilon", "cell_id", "expand_cells", "expand_units"]
