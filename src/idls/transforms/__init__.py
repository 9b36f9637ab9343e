"""Input transforms: pixels ``B x C x H x W`` in [0, 1] -> same (bit depth, median, non-local means), by name.

The lowest layer of the defences: attacks that adapt to a defence (``adaptive-adv2``) build its
transforms from here, and :mod:`idls.defenses` puts them in front of classifiers and detectors.
Non-differentiable transforms pass gradients straight through (BPDA). Example::

    squeeze = defense_from_spec("median:size=3")
    y = squeeze(x)                                  # x: B x C x H x W in [0, 1]
"""

from __future__ import annotations

import inspect
from typing import Any

from idls.core.specs import parse_spec
from idls.errors import UserError
from idls.transforms.input_transforms import (
    DEFENSES,
    BitDepth,
    InputTransform,
    MedianFilter,
    NonLocalMeans,
    bpda,
)


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
           "defense_from_spec", "list_defenses"]
