"""The ``budget`` knob of the joint attacks: how much work each one does, in three levels.

``budget`` is an option of every joint attack (``-o budget=fast``). A level turns the
row of :func:`idls.attacks.defaults.joint_defaults` (which *is* the ``'paper'`` level)
into the settings the attack runs with:

* ``'fast'``: the fewest forward + backward passes that keep the reference
  quality where the rows were tuned for it (step frameworks on small inputs),
  with per-sample stopping;
* ``'paper'``: the defaults table as it is (quality of the published setting,
  per-sample stopping where the row has it);
* ``'best'``: more iterations and no early stop (every sample runs every step).

Rows tuned for a level replace the table's values with their own (``tuned``);
the other rows are scaled: their ``steps`` and ``warm_start`` times ``scale``, and
per-sample stopping kept only if the level ``stops``. The user's explicit options
(``steps=...``) are applied after the level. The measured quality and cost of each
level are in docs/benchmarks.md (``benchmarks/joint_budget.py``); how they were
tuned (on training photos, checked on test photos) in docs/notes/measured.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from idls.errors import UserError

BUDGETS: tuple[str, ...] = ("fast", "paper", "best")
DEFAULT_BUDGET = "paper"
SMALL, LARGE = "small", "large"  #: size classes of the defaults table (see ``LARGE_INPUT`` there)


@dataclass(frozen=True)
class Budget:
    """One level of the ``budget`` knob.

    Attributes:
        name: the option value.
        summary: one line for the options reference.
        scale: ``steps`` and ``warm_start`` of rows without tuned values, relative to the table.
        stops: keep a row's per-sample stopping (``False``: ``stop_patience`` 0, every sample runs all steps).
        tuned: ``{(table, size class, family): {setting: value}}`` settings that replace the row's
            values (the rows tuned for this level); the scale does not apply to them.
    """

    name: str
    summary: str
    scale: float = 1.0
    stops: bool = True
    tuned: Mapping[tuple[str, str, str], Mapping[str, Any]] = field(default_factory=dict)


# The fast level on small inputs (PGD table), tuned on CIFAR training photos: a short warm start, a larger joint
# step than the table's and per-sample stopping (checks every 10 joint iterations; a sample stops once its best
# iterate leads by a logit of margin and its best map L1 improved by at most `stop_tolerance` over
# `stop_patience` checks).
_FAST_CAM: dict[str, Any] = {"steps": 100, "warm_start": 10, "joint_step_size": 0.5 / 255, "check_every": 10,
                             "stop_patience": 2, "stop_tolerance": 0.03, "stop_margin": 1.0}
_FAST_GRAD: dict[str, Any] = {"steps": 200, "warm_start": 10, "joint_step_size": 0.2 / 255, "check_every": 10,
                              "stop_patience": 3, "stop_tolerance": 0.01, "stop_margin": 1.0}

LEVELS: dict[str, Budget] = {
    "fast": Budget(
        "fast", "fewest passes at reference quality (tuned: PGD-like frameworks on small inputs)", scale=0.25,
        tuned={("pgd", SMALL, "cam"): _FAST_CAM, ("pgd", SMALL, "rts"): _FAST_CAM, ("pgd", SMALL, "grad"): _FAST_GRAD},
    ),
    "paper": Budget("paper", "the defaults table: the published setting's quality, per-sample stopping where tuned"),
    "best": Budget("best", "twice the iterations, no early stop", scale=2.0, stops=False),
}


def budget_level(name: str) -> Budget:
    """The level called ``name``; a one-line :class:`UserError` for any other name."""
    if name not in LEVELS:
        raise UserError(f"unknown budget {name!r}; choose one of: {', '.join(BUDGETS)}")
    return LEVELS[name]


__all__ = ["BUDGETS", "Budget", "DEFAULT_BUDGET", "LARGE", "LEVELS", "SMALL", "budget_level"]
