"""Pattern baselines of the universal attacks: what a perturbation with no optimisation achieves.

Reported beside every fitted universal perturbation at the same budget: a fitted
attack is only interesting well above them.

* ``random-sign``: ``+-eps`` per value (L_inf) with seeded random signs, or the same
  signs scaled to L2 norm ``eps``.
* ``chessboard``: ``+-eps`` alternating in squares of ``cell`` pixels, the same sign
  on every channel (L2: scaled to norm ``eps``). A fine chessboard is known to fool
  some CIFAR ResNets often on its own.

Both are "fitted" like every universal attack (so they run through the same
commands, artifacts and held-out checks), but the fit data only fixes the image
size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from idls.attacks.base import ATTACKS
from idls.attacks.fit_checkpoint import FitCheckpoint
from idls.attacks.options import option
from idls.attacks.universal import BudgetOptions, UniversalAttack, predictions
from idls.errors import UserError
from idls.system import Classifier


def _to_budget(signs: Tensor, epsilon: float, norm: str) -> Tensor:
    """``signs`` (+-1, ``1 x C x H x W``) as a perturbation at the edge of the budget."""
    return signs * epsilon if norm == "linf" else signs * (epsilon / float(signs.norm()))


class PatternBaseline(UniversalAttack):
    """A fixed pattern at the budget's edge; subclasses draw the signs (:meth:`signs`)."""

    def signs(self, image_size: tuple[int, int, int]) -> Tensor:
        """``1 x C x H x W`` of +-1."""
        raise NotImplementedError

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool,
             checkpoint: FitCheckpoint) -> tuple[Tensor, dict[str, Any]]:
        size = tuple(int(s) for s in images.shape[1:])
        delta = _to_budget(self.signs(size), self.epsilon, self.norm).to(classifier.device)
        clean = predictions(classifier, images, None)
        fooling = float((predictions(classifier, images, delta) != clean).float().mean())
        return delta, {"fit_fooling_ratio": fooling}


@ATTACKS.register("random-sign")
class RandomSign(PatternBaseline):
    """Seeded random signs at the budget (a baseline; see the module docstring)."""

    name = "random-sign"
    Options = BudgetOptions

    def signs(self, image_size: tuple[int, int, int]) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, 2, (1, *image_size), generator=generator).float() * 2 - 1


@dataclass(frozen=True, eq=False, kw_only=True)
class ChessboardOptions(BudgetOptions):
    """Options of :class:`Chessboard`."""

    cell: int = option(1, "side of the chessboard's squares in pixels")

    def check(self) -> None:
        super().check()
        if isinstance(self.cell, bool) or self.cell < 1:
            raise UserError(f"cell must be a whole number of pixels >= 1, got {self.cell!r}")


@ATTACKS.register("chessboard")
class Chessboard(PatternBaseline):
    """A chessboard of ``+-eps`` squares of ``cell`` pixels (a baseline; see the module docstring)."""

    name = "chessboard"
    Options = ChessboardOptions
    cell: int

    def signs(self, image_size: tuple[int, int, int]) -> Tensor:
        channels, height, width = image_size
        rows = torch.arange(height).div(self.cell, rounding_mode="floor")
        cols = torch.arange(width).div(self.cell, rounding_mode="floor")
        board = ((rows[:, None] + cols[None, :]) % 2).float() * 2 - 1
        return board.expand(1, channels, height, width).clone()


__all__ = ["Chessboard", "ChessboardOptions", "PatternBaseline", "RandomSign"]
