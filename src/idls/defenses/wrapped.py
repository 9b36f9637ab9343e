"""The defended classifier: ``defend(classifier, transform)`` computes ``classifier(transform(x))``.

The result is a :class:`~idls.system.Classifier` of the same class that shares the
original's network (no weights are copied) and applies the transform to the pixels
before normalisation (``Classifier.input_transform``), so its logits, feature maps
and everything built on them (CAM, Grad-CAM, RTS, MASK, every attack) see the
defended system. The original is left untouched. Example::

    defended = defend(classifier, BitDepth(4))
    torch.equal(defended(x), classifier(BitDepth(4)(x)))     # True
    defended.info.name == classifier.info.name               # True; the defence is in info.extra["defense"]

Because the network is shared, moving or re-moding the defended classifier's
network (``.to``, ``.train``) moves or re-modes the original's too.
"""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from idls.errors import UserError
from idls.system import Classifier
from idls.transforms import InputTransform


def _describe(transform: nn.Module) -> str:
    return transform.describe() if isinstance(transform, InputTransform) else type(transform).__name__


def defend(classifier: Classifier, transform: nn.Module) -> Classifier:
    """A classifier computing ``classifier(transform(x))`` for pixels ``x`` ``B x C x H x W`` in [0, 1].

    Args:
        classifier: the model to defend (not modified).
        transform: an :class:`~idls.defenses.InputTransform` (or any module mapping
            ``B x C x H x W`` in [0, 1] to the same). Applied after any defence the
            classifier already has.

    Returns:
        A shallow copy of ``classifier`` sharing its network and buffers, with the
        transform in front, the same training/eval mode, and ``info.extra["defense"]``
        naming the defence (e.g. ``'bit-depth(4)'``; chained defences joined by ``' + '``).
    """
    if not isinstance(classifier, Classifier):
        raise UserError(f"defend needs an idls Classifier, got {type(classifier).__name__}; build it with create_model")
    if not isinstance(transform, nn.Module):
        raise UserError(f"a defence must be an nn.Module such as create_defense('bit-depth', bits=4), got {type(transform).__name__}")
    wrapped = copy.copy(classifier)
    # own registries of children, parameters, buffers and hooks: what is set on the copy stays on the copy
    for key, value in classifier.__dict__.items():
        if isinstance(value, (dict, set, list)):
            wrapped.__dict__[key] = copy.copy(value)
    previous = classifier.input_transform
    transform.train(classifier.training)
    wrapped.input_transform = transform if previous is None else nn.Sequential(previous, transform)
    label = _describe(transform)
    earlier = classifier.info.extra.get("defense")
    extra = {**classifier.info.extra, "defense": label if earlier is None else f"{earlier} + {label}"}
    wrapped.info = dataclasses.replace(classifier.info, extra=extra)
    return wrapped


__all__ = ["defend"]
