"""Maps for interpretation-based detectors: several interpreters' maps of one input, at one side.

Shared by :mod:`idls.defenses.detectors.multi_interpreter` (paper 000's detector) and
:mod:`idls.defenses.detectors.ensemble` (the interpreter-ensemble detector). Every map explains
the classifier's prediction (docs/design.md §1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.errors import UserError
from idls.interpreters import (
    Interpreter,
    interpreter_class,
    interpreter_for,
)
from idls.system import Classifier


# -- maps ------------------------------------------------------------------------------------------
def resize_maps(maps: Tensor, side: int) -> Tensor:
    """Maps ``B x h x w`` -> ``B x side x side``: bilinear upsampling, area averaging to go down (differentiable)."""
    if maps.shape[-2:] == (side, side):
        return maps
    if maps.shape[-1] < side or maps.shape[-2] < side:
        return F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    return F.adaptive_avg_pool2d(maps[:, None], side)[:, 0]


def build_interpreters(names: tuple[str, ...], classifier: Classifier) -> list[Interpreter]:
    """The named interpreters for ``classifier``; one that cannot explain it is a one-line UserError."""
    built = []
    for name in names:
        reason = interpreter_class(name).unavailable_reason(classifier, {})
        if reason is not None:
            raise UserError(f"interpreter {name!r} cannot explain model {classifier.info.name!r}: {reason}; "
                            "choose other interpreters (e.g. interpreters=[grad,gradcam])")
        built.append(interpreter_for(name, classifier))
    return built


def in_graph_maps(interpreters: list[Interpreter], x: Tensor) -> list[Tensor]:
    """Differentiable maps ``B x h x w`` of the predicted classes, one per interpreter (joint-attack path).

    Each interpreter's :meth:`~idls.interpreters.base.Interpreter.joint_forward` of its
    ``for_joint_attack()`` twin: the real map where ``joint_map_is_exact``, else the
    smooth-surrogate map (Grad, IG) or MASK's look-ahead map.
    """
    with torch.no_grad():
        classes = interpreters[0].classifier(x).argmax(1)
    return [twin.joint_forward(x, classes).maps for twin in interpreters]


def check_interpreter_names(names: tuple[str, ...], low: int, high: int | None) -> None:
    if not isinstance(names, tuple) or not all(isinstance(n, str) for n in names):
        raise UserError(f"interpreters must be a list of interpreter names, e.g. interpreters=[grad,cam]; got {names!r}")
    if len(names) < low or (high is not None and len(names) > high):
        wanted = f"{low} or {high}" if high == low + 1 else f"at least {low}"
        raise UserError(f"interpreters takes {wanted} interpreter names, got {len(names)}: {list(names)}")
    for name in names:
        interpreter_class(name)  # unknown names: UserError listing the choices


def check_side(name: str, side: int | None) -> None:
    if side is not None and (not isinstance(side, int) or isinstance(side, bool) or side < 1):
        raise UserError(f"{name} must be a positive integer (or null for the default), got {side!r}")


# -- multi-interpreter ----------------------------------------------------------------------------


__all__ = ["build_interpreters", "check_interpreter_names", "check_side", "in_graph_maps", "resize_maps"]
