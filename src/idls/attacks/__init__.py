"""Attack registry: ``create_attack(name, **options)`` and the shared PGD engine.

Names: ``idls list`` / :func:`list_attacks`. A module registers an attack with
``@ATTACKS.register("name")`` on its :class:`Attack` subclass (import
``ATTACKS`` from ``idls.attacks.base``). Every attack is called the same way::

    attack = create_attack("pgd", epsilon=8 / 255, steps=100)
    result = attack.run(classifier, x, labels)      # -> AttackResult
"""

from __future__ import annotations

import importlib

from idls.attacks.base import (
    ATTACKS,
    Attack,
    AttackResult,
    Perturbation,
    create_attack,
    flush_denormal,
    list_attacks,
    list_frameworks,
    prediction_loss,
)
from idls.attacks.pgd import PGD, Evaluation, Iterate, project, projected_gradient_descent
from idls.attacks.targets import TargetMode, least_likely_targets, random_targets

# Attacks written in other modules register themselves on import; one not written yet must not break the others.
for _module in ("mifgsm", "cw", "stadv", "joint", "edge", "universal", "sgd_uap", "uap", "universal_baselines",
                "generative_uap", "jap", "adaptive", "interpretation_pgd"):
    try:
        importlib.import_module(f"idls.attacks.{_module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"idls.attacks.{_module}":
            raise

__all__ = [
    "ATTACKS",
    "PGD",
    "Attack",
    "AttackResult",
    "Evaluation",
    "Iterate",
    "Perturbation",
    "TargetMode",
    "create_attack",
    "flush_denormal",
    "least_likely_targets",
    "list_attacks",
    "list_frameworks",
    "prediction_loss",
    "project",
    "projected_gradient_descent",
    "random_targets",
]
