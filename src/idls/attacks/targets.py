"""Target classes for attacks: seeded random wrong classes, least-likely classes, modes.

Random targets are drawn on the CPU from a seeded :class:`torch.Generator`, so
the same seed gives the same targets on every device. Passing ``indices``
(dataset positions) makes an image's target independent of how the data set
was split into batches, which keeps resumed runs identical to fresh ones.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from idls.errors import UserError


class TargetMode(str, Enum):
    """What the attacker wants the classifier to say."""

    TARGETED = "targeted"  #: a given class, by default a seeded random wrong class
    UNTARGETED = "untargeted"  #: anything but the true label
    LEAST_LIKELY = "least_likely"  #: the class the clean image scores lowest

    @classmethod
    def parse(cls, value: str | TargetMode) -> TargetMode:
        """``'targeted'``, ``'untargeted'`` or ``'least_likely'`` (also with a hyphen) -> mode."""
        if isinstance(value, TargetMode):
            return value
        try:
            return cls(str(value).strip().lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(m.value for m in cls)
            raise UserError(f"unknown target mode {value!r}; choose one of: {choices}") from None

    @property
    def is_targeted(self) -> bool:
        """Targeted and least-likely attacks aim at a class; untargeted ones do not."""
        return self is not TargetMode.UNTARGETED


def random_targets(labels: Tensor, num_classes: int, seed: int, indices: Tensor | None = None) -> Tensor:
    """Seeded targets ``B`` drawn uniformly from the classes other than each label.

    Args:
        labels: true classes ``B`` (long).
        num_classes: number of classes N (>= 2).
        seed: generator seed; same seed (and indices) -> same targets.
        indices: optional dataset positions ``B`` (non-negative, long). When given,
            the target of an image depends only on (seed, its index, its label),
            not on the batch it travels in.

    Returns:
        ``B`` long on ``labels.device``, never equal to ``labels``.
    """
    if num_classes < 2:
        raise UserError(f"targeted attacks need at least 2 classes, got num_classes={num_classes}")
    labels_cpu = labels.detach().long().cpu()
    if labels_cpu.numel() and (int(labels_cpu.min()) < 0 or int(labels_cpu.max()) >= num_classes):
        raise UserError(f"labels must lie in [0, {num_classes - 1}], got range [{int(labels_cpu.min())}, {int(labels_cpu.max())}]")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    if indices is None:
        offsets = torch.randint(1, num_classes, (labels_cpu.numel(),), generator=generator)
    else:
        idx = indices.detach().long().cpu()
        if idx.numel() and int(idx.min()) < 0:
            raise UserError("target indices must be non-negative dataset positions")
        length = int(idx.max()) + 1 if idx.numel() else 0
        offsets = torch.randint(1, num_classes, (length,), generator=generator)[idx]
    return ((labels_cpu + offsets) % num_classes).to(labels.device)


def least_likely_targets(logits: Tensor) -> Tensor:
    """The lowest-scoring class ``B`` of each row of ``logits`` ``B x N`` (first on ties)."""
    return logits.detach().argmin(1)


__all__ = ["TargetMode", "least_likely_targets", "random_targets"]
