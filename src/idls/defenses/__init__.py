"""Defences: input transforms placed in front of a classifier, and the defended classifier.

A defence is an :class:`InputTransform` (``B x C x H x W`` in [0, 1] -> same); :func:`defend`
returns a :class:`~idls.system.Classifier` that computes ``classifier(transform(x))`` in every
pass (logits, feature maps, so interpreters explain the defended system) and that every attack
accepts. Example::

    from idls.attacks import create_attack
    from idls.defenses import create_defense, defend

    defended = defend(classifier, create_defense("bit-depth", bits=4))
    defended.info.extra["defense"]                     # 'bit-depth(4)'
    result = create_attack("pgd", steps=10).run(defended, x, labels)

Non-differentiable transforms pass gradients straight through (BPDA), so gradient
attacks adapt to them.
"""

from __future__ import annotations

import inspect
from typing import Any

from idls.core.specs import parse_spec
from idls.defenses.transforms import (
    DEFENSES,
    BitDepth,
    InputTransform,
    MedianFilter,
    NonLocalMeans,
    bpda,
)
from idls.defenses.wrapped import defend
from idls.errors import UserError


def create_defense(name: str, **options: Any) -> InputTransform:
    """Build defence ``name`` (options are its keyword arguments, e.g. ``bits=4``)."""
    factory = DEFENSES.get(name)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise UserError(f"bad option for defence {name!r}: {exc}") from None
    return factory(**options)


def defense_from_spec(spec: str) -> InputTransform:
    """``'NAME'`` or ``'NAME:KEY=VALUE,...'`` (values read as YAML) -> the defence (e.g. ``'bit-depth:bits=4'``)."""
    name, options = parse_spec(spec, "defence")
    return create_defense(name, **options)


def list_defenses() -> list[str]:
    return DEFENSES.names()


__all__ = ["DEFENSES", "BitDepth", "InputTransform", "MedianFilter", "NonLocalMeans", "bpda", "create_defense",
           "defend", "defense_from_spec", "list_defenses"]
