"""What an optimiser returns and the one per-sample best-iterate tracker every attack loop uses."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Perturbation:
    """What an attack's optimisation returns to :meth:`Attack.run`.

    Attributes:
        x_adv: ``B x C x H x W`` chosen iterates.
        iterations_to_success: ``B`` long, first successful step count, -1 never.
        iterations_run: steps taken.
        success: ``B`` bool by the optimiser's own criterion at the chosen iterate, if any.
        score: ``B`` best score of the chosen iterate (``inf`` when it never succeeded), if any.
        extras: anything else worth keeping per sample.
    """

    x_adv: Tensor
    iterations_to_success: Tensor
    iterations_run: int
    success: Tensor | None = None
    score: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutcome:
    """What a framework computes at the iterate of the active samples.

    Attributes:
        loss: ``B_active`` objective, differentiable w.r.t. the optimised variable.
        x_adv: ``B_active x C x H x W`` the images this variable renders.
        succeeded: ``B_active`` bool, the framework's success criterion.
        score: ``B_active``, lower is better among successes.
        aux: optional ``B_active x ...`` kept along with the best iterate (StAdv: the flow).
    """

    loss: Tensor
    x_adv: Tensor
    succeeded: Tensor
    score: Tensor
    aux: Tensor | None = None


StepFn = Callable[[Tensor, Tensor, int], StepOutcome]


class BestIterate:
    """Per-sample bookkeeping of the best successful iterate over one or more loops.

    Best = the lowest score among successful iterates, the earlier one on ties.
    A sample that never succeeds returns its latest iterate with score ``inf``.

    Args:
        x: ``B x C x H x W`` the start images.
        aux: optional ``B x ...`` start value of a per-sample tensor kept with the best iterate.
    """

    def __init__(self, x: Tensor, aux: Tensor | None = None) -> None:
        batch = x.shape[0]
        self.best_x = x.detach().clone()
        self.latest_x = x.detach().clone()
        self.best_aux = None if aux is None else aux.detach().clone()
        self.latest_aux = None if aux is None else aux.detach().clone()
        self.score = torch.full((batch,), math.inf, device=x.device)
        self.first_success = torch.full((batch,), -1, dtype=torch.long, device=x.device)

    @property
    def succeeded(self) -> Tensor:
        """``B`` bool: some iterate of the sample has succeeded."""
        return torch.isfinite(self.score)

    @torch.no_grad()
    def update(self, index: Tensor, outcome: StepOutcome, iteration: int) -> Tensor:
        """Record the iterate of rows ``index``; return ``B_active`` bool: the best improved."""
        ok = outcome.succeeded.detach().to(device=self.score.device, dtype=torch.bool)
        score = outcome.score.detach().to(self.score.device).float()
        improved = ok & (score < self.score[index])
        keep = improved.view(-1, *([1] * (self.best_x.dim() - 1)))
        x_adv = outcome.x_adv.detach()
        self.best_x[index] = torch.where(keep, x_adv, self.best_x[index])
        self.latest_x[index] = x_adv
        if self.best_aux is not None and outcome.aux is not None:
            aux = outcome.aux.detach()
            keep_aux = improved.view(-1, *([1] * (aux.dim() - 1)))
            self.best_aux[index] = torch.where(keep_aux, aux, self.best_aux[index])
            self.latest_aux[index] = aux
        self.score[index] = torch.where(improved, score, self.score[index])
        fresh = ok & (self.first_success[index] < 0)
        self.first_success[index] = torch.where(fresh, torch.full_like(index, iteration), self.first_success[index])
        return improved

    def chosen_aux(self) -> Tensor | None:
        """``B x ...`` the aux tensor of the returned iterates (best, or latest if never successful)."""
        if self.best_aux is None:
            return None
        keep = self.succeeded.view(-1, *([1] * (self.best_aux.dim() - 1)))
        return torch.where(keep, self.best_aux, self.latest_aux)

    def perturbation(self, iterations_run: int, extras: dict[str, Any] | None = None) -> Perturbation:
        """The :class:`~idls.attacks.base.Perturbation` of the chosen iterates."""
        keep = self.succeeded.view(-1, *([1] * (self.best_x.dim() - 1)))
        return Perturbation(
            x_adv=torch.where(keep, self.best_x, self.latest_x),
            iterations_to_success=self.first_success.clone(),
            iterations_run=int(iterations_run),
            success=self.succeeded.clone(),
            score=self.score.clone(),
            extras=dict(extras or {}),
        )


__all__ = ["BestIterate", "Perturbation", "StepFn", "StepOutcome"]
