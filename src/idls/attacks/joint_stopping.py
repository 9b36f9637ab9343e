"""Per-sample stopping of the joint phase: when a sample is done and leaves the batch.

Every ``check_every`` joint iterations (``iteration % check_every == 0``, not at 0)
each still-running sample is checked; it is *done* when

* ``distance`` is set and its best map distance is at most ``distance``
  (the ``stop_distance`` option), or
* ``patience`` > 0, its best iterate leads by a logit margin of at least
  ``margin`` (target logit minus the best other; the prediction is safely on
  target) **and** its best map distance has improved by at most ``tolerance``
  (relative) over the last ``patience`` checks (the map loss has converged).

"Best" is the best iterate the engine keeps (among successful iterates, the
lowest selection score, the earlier on ties; :class:`~idls.optim.BestIterate`).
:class:`SampleStopper` mirrors that rule to know the margin and the distance of
each sample's best iterate, so it needs no extra pass. A done sample leaves the
batch of :func:`~idls.attacks.pgd.projected_gradient_descent` (no further
forward or backward pass) and returns its best iterate; the attack's final
re-check of success with the real classifier (:meth:`~idls.attacks.base.Attack.run`)
is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from idls.attacks.cw import margin
from idls.attacks.defaults import DEFAULT_CHECK_EVERY, JointDefaults
from idls.attacks.pgd import Evaluation, Iterate


@dataclass(frozen=True)
class StopRule:
    """When a sample of the joint phase is done (see the module docstring).

    Attributes:
        check_every: joint iterations between checks.
        patience: checks over which the best map distance must have converged; 0: no such stopping.
        tolerance: relative improvement of the best map distance below which it counts as converged.
        margin: logit lead of the target class the best iterate needs.
        distance: stop at this best map distance, or ``None``.
    """

    check_every: int = DEFAULT_CHECK_EVERY
    patience: int = 0
    tolerance: float = 0.0
    margin: float = 0.0
    distance: float | None = None

    @classmethod
    def from_settings(cls, settings: JointDefaults, distance: float | None = None) -> StopRule:
        """The rule of a joint attack's settings (and its ``stop_distance``)."""
        return cls(check_every=settings.check_every, patience=settings.stop_patience,
                   tolerance=settings.stop_tolerance, margin=settings.stop_margin, distance=distance)

    @property
    def stops(self) -> bool:
        """Whether any sample can stop before the last iteration."""
        return self.patience > 0 or self.distance is not None


class SampleStopper:
    """The ``stop_fn`` of :func:`~idls.attacks.pgd.projected_gradient_descent` for one batch.

    Args:
        rule: when a sample is done.
        targets: ``B`` target classes (the margin is measured towards them).
    """

    def __init__(self, rule: StopRule, targets: Tensor) -> None:
        batch, device = targets.shape[0], targets.device
        self.rule = rule
        self.targets = targets
        self.best = torch.full((batch,), math.inf, device=device)
        self.best_margin = torch.full((batch,), -math.inf, device=device)
        #: the best distance at the last ``patience + 1`` checks of each sample, oldest first
        self.history = torch.full((batch, rule.patience + 1), math.inf, device=device)

    @torch.no_grad()
    def __call__(self, it: Iterate, evaluation: Evaluation, succeeded: Tensor, score: Tensor) -> Tensor:
        """``B_active`` bool: the active samples done after this evaluation."""
        index = it.index.to(self.best.device)
        score = score.to(self.best.device).float()
        improved = succeeded.to(self.best.device) & (score < self.best[index])  # the engine's best-iterate rule
        self.best[index] = torch.where(improved, score, self.best[index])
        if evaluation.logits is not None:
            lead = -margin(evaluation.logits.detach().float(), it.select(self.targets), targeted=True)
            self.best_margin[index] = torch.where(improved, lead.to(self.best.device), self.best_margin[index])
        done = torch.zeros(index.shape[0], dtype=torch.bool, device=self.best.device)
        if it.iteration == 0 or it.iteration % self.rule.check_every != 0:
            return done
        best = self.best[index]
        if self.rule.distance is not None:
            done |= best <= self.rule.distance
        if self.rule.patience > 0:
            history = torch.cat([self.history[index, 1:], best[:, None]], 1)
            self.history[index] = history
            oldest = history[:, 0]
            converged = torch.isfinite(oldest) & (oldest - best <= self.rule.tolerance * oldest)
            done |= converged & (self.best_margin[index] >= self.rule.margin)
        return done


__all__ = ["SampleStopper", "StopRule"]
