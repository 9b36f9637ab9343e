"""Threat models: the set of images an attack may return for a clean image.

Every attack declares its threat (:meth:`idls.attacks.base.Attack.threat`), and
:meth:`~idls.attacks.base.Attack.run` re-checks each returned batch against it
(as foolbox's attacks do), so a bug in an optimiser can never hand back an
image outside its budget silently. Images are ``B x C x H x W`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: slack for float rounding in the membership checks (pixel scale)
TOLERANCE = 1e-5


@dataclass(frozen=True)
class Threat:
    """The pixel box [0, 1] alone (e.g. uncapped C&W, StAdv's warps)."""

    def contains(self, x: Tensor, x_adv: Tensor, tolerance: float = TOLERANCE) -> Tensor:
        """``B`` bool: ``x_adv`` lies in the threat set around ``x`` (both ``B x C x H x W``)."""
        flat = x_adv.flatten(1)
        return (flat >= -tolerance).all(1) & (flat <= 1 + tolerance).all(1) & torch.isfinite(flat).all(1)

    def describe(self) -> str:
        return "pixel box [0, 1]"


@dataclass(frozen=True)
class LpBall(Threat):
    """The ``norm`` ball of radius ``epsilon`` around the clean image, intersected with [0, 1].

    Attributes:
        norm: ``'linf'`` or ``'l2'``.
        epsilon: radius on the [0, 1] pixel scale.
    """

    norm: str = "linf"
    epsilon: float = 8 / 255

    def contains(self, x: Tensor, x_adv: Tensor, tolerance: float = TOLERANCE) -> Tensor:
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        return super().contains(x, x_adv, tolerance) & (size <= self.epsilon + tolerance)

    def describe(self) -> str:
        return f"{self.norm} ball of radius {self.epsilon:.6g} in [0, 1]"


__all__ = ["LpBall", "TOLERANCE", "Threat"]
