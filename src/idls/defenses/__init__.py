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

from idls.defenses.wrapped import defend
from idls.transforms import (
    DEFENSES,
    BitDepth,
    InputTransform,
    MedianFilter,
    NonLocalMeans,
    bpda,
    create_defense,
    defense_from_spec,
    list_defenses,
)

__all__ = ["DEFENSES", "BitDepth", "InputTransform", "MedianFilter", "NonLocalMeans", "bpda", "create_defense",
           "defend", "defense_from_spec", "list_defenses"]
