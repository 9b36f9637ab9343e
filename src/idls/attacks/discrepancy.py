"""The 2-class interpretation discrepancy of paper 000 Eq. 20 (after Boopathy et al. 2020).

For a benign image ``x``, a perturbed one ``x'``, its true class ``y`` and a second class ``t``::

    D(x, x') = 0.5 * (||g_y(x) - g_y(x')||_1 + ||g_t(x) - g_t(x')||_1)

where ``g_c`` is the interpreter's map of class ``c`` (min-max normalised, bilinearly upsampled to
the image's resolution, as a user sees it) and ``||.||_1`` sums over the image's pixels, so the
weight ``gamma`` of robust training means the same as in the paper's 32 x 32 CIFAR setting whatever
the interpreter's own resolution. Both the interpretation attack
(:mod:`idls.attacks.interpretation_pgd`) and interpretation-robust training
(:mod:`idls.defenses.training`) maximise it; ``t`` defaults to the benign image's runner-up
class (the class the model confuses ``y`` with most), so no attack target is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from idls.interpreters.base import Interpreter
from idls.system import upsample_maps


def runner_up_classes(logits: Tensor, labels: Tensor) -> Tensor:
    """``B`` long: the highest-scoring class other than ``labels`` (``logits`` ``B x N``)."""
    masked = logits.detach().clone()
    masked.scatter_(1, labels.view(-1, 1), float("-inf"))
    return masked.argmax(1)


def map_l1_sum(maps: Tensor, other: Tensor) -> Tensor:
    """``B``: ``||maps - other||_1`` summed over each sample's pixels (``B x h x w`` each)."""
    return (maps - other).abs().flatten(1).sum(1)


def image_maps(interpreter: Interpreter, x: Tensor, classes: tuple[Tensor, ...], *, create_graph: bool) -> list[Tensor]:
    """Maps ``B x H x W`` at the resolution of ``x`` (``B x C x H x W``) of each class choice (``B`` long each)."""
    maps = interpreter.attribute_classes(x, classes, create_graph=create_graph)
    size = tuple(x.shape[-2:])
    return [m if tuple(m.shape[-2:]) == size else upsample_maps(m, size) for m in maps]


@dataclass
class BenignMaps:
    """The benign side of Eq. 20, computed once per batch: maps of the two classes, ``B x h x w`` each."""

    true_class: Tensor
    second_class: Tensor
    labels: Tensor
    second: Tensor

    @classmethod
    def of(cls, interpreter: Interpreter, x: Tensor, labels: Tensor, second: Tensor | None = None, *,
           create_graph: bool = False) -> BenignMaps:
        """Maps of ``labels`` and ``second`` (default: runner-up classes) at images ``x`` ``B x C x H x W``.

        ``create_graph`` keeps them in the autograd graph (training differentiates both sides).
        """
        if second is None:
            with torch.no_grad():
                second = runner_up_classes(interpreter.classifier(x), labels)
        true_class, second_class = image_maps(interpreter, x, (labels, second), create_graph=create_graph)
        return cls(true_class=true_class, second_class=second_class, labels=labels, second=second)

    def select(self, index: Tensor) -> BenignMaps:
        """The rows ``index`` (the engine's active samples)."""
        return BenignMaps(self.true_class[index], self.second_class[index], self.labels[index], self.second[index])


def two_class_discrepancy(interpreter: Interpreter, benign: BenignMaps, x_other: Tensor) -> Tensor:
    """Eq. 20: ``B`` discrepancies between the benign maps and the maps of ``x_other`` (differentiable
    w.r.t. ``x_other`` and the model's parameters)."""
    other_true, other_second = image_maps(interpreter, x_other, (benign.labels, benign.second), create_graph=True)
    return 0.5 * (map_l1_sum(benign.true_class, other_true) + map_l1_sum(benign.second_class, other_second))


__all__ = ["BenignMaps", "image_maps", "map_l1_sum", "runner_up_classes", "two_class_discrepancy"]
