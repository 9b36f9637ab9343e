"""The one per-sample Adam and the Adam descent loop shared by C&W and StAdv."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from idls.optim.tracking import BestIterate, StepFn

if TYPE_CHECKING:  # the bars themselves come from idls.progress.progress_bar
    from tqdm.std import tqdm

_STALL_TOLERANCE = 1e-4  # abort early: relative loss decrease below this over a window


class PerSampleAdam:
    """Adam with one step count per sample, so rows can be updated independently.

    The update is torch.optim.Adam's (no weight decay, no amsgrad) applied to
    rows ``index`` of a ``B x ...`` variable: with all rows every step it equals
    ``torch.optim.Adam`` on the whole tensor.
    """

    def __init__(self, like: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.lr = float(lr)
        self.beta1, self.beta2 = betas
        self.eps = float(eps)
        self.first = torch.zeros_like(like)
        self.second = torch.zeros_like(like)
        self.count = torch.zeros(like.shape[0], dtype=torch.long, device=like.device)

    def step(self, index: Tensor, grad: Tensor) -> Tensor:
        """Record gradient ``grad`` (``B_active x ...``) of rows ``index``; return the update to subtract."""
        first = self.first[index] * self.beta1 + grad * (1 - self.beta1)
        second = self.second[index] * self.beta2 + grad * grad * (1 - self.beta2)
        count = self.count[index] + 1
        self.first[index], self.second[index], self.count[index] = first, second, count
        shape = (-1,) + (1,) * (grad.dim() - 1)
        exponent = count.to(grad.dtype).view(shape)
        bias1 = 1 - self.beta1**exponent
        bias2_sqrt = (1 - self.beta2**exponent).sqrt()
        return (self.lr / bias1) * first / (second.sqrt() / bias2_sqrt + self.eps)


@dataclass
class LoopResult:
    """One run of :func:`adam_descent`.

    Attributes:
        variable: ``B x ...`` final variable (each sample's last iterate).
        succeeded: ``B`` bool, some iterate of this run succeeded.
        steps_run: gradient steps taken (the maximum over the batch).
    """

    variable: Tensor
    succeeded: Tensor
    steps_run: int


def adam_descent(
    variable: Tensor,
    step_fn: StepFn,
    tracker: BestIterate,
    *,
    steps: int,
    lr: float,
    iteration_offset: int = 0,
    stall_window: int | None = None,
    patience: int | None = None,
    bar: tqdm | None = None,
) -> LoopResult:
    """Minimise ``step_fn(...).loss`` per sample with Adam, tracking the best iterate.

    Each evaluation ``t = 0 .. steps`` calls ``step_fn(rows, index, iteration_offset + t)``
    once for the active samples (``rows`` = their variable, requiring grad),
    records the outcome in ``tracker``, then takes one Adam step (one backward).

    A sample stops (keeps its iterate and is no longer evaluated) when
    ``stall_window`` is set and its loss fell by less than 1e-4 (relative) over
    the last ``stall_window`` steps (C&W's abort-early), or when ``patience`` is
    set and it has succeeded and its best score has not improved for
    ``patience`` evaluations (``0``: stop at the first success). The loop ends
    when every sample has stopped.

    Args:
        variable: ``B x ...`` start values of the optimised variable.
        step_fn: ``(rows, index, iteration) -> StepOutcome`` for the active rows.
        tracker: best-iterate bookkeeping, updated in place.
        steps: maximum number of Adam steps.
        lr: Adam learning rate.
        iteration_offset: added to ``t`` in the iteration numbers.
        stall_window: abort-early window in steps, or ``None``.
        patience: early stop after success, or ``None``.
        bar: progress bar advanced once per step.
    """
    variable = variable.detach().clone()
    batch = variable.shape[0]
    device = variable.device
    adam = PerSampleAdam(variable, lr)
    everyone = torch.arange(batch, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    succeeded = torch.zeros(batch, dtype=torch.bool, device=device)
    reference = torch.full((batch,), math.inf, device=device)
    stale = torch.zeros(batch, dtype=torch.long, device=device)
    steps_run = 0
    for t in range(steps + 1):
        whole = bool(active.all())
        index = everyone if whole else active.nonzero().flatten()
        rows = (variable if whole else variable[index]).detach().requires_grad_(True)
        with torch.enable_grad():
            outcome = step_fn(rows, index, iteration_offset + t)
        if outcome.loss.shape != (index.numel(),):
            raise ValueError(f"the loss must have one value per active sample ({index.numel()}), "
                             f"got shape {tuple(outcome.loss.shape)}")
        with torch.no_grad():
            improved = tracker.update(index, outcome, iteration_offset + t)
            succeeded[index] |= outcome.succeeded.detach().to(device=device, dtype=torch.bool)
            stop = torch.zeros_like(improved)
            if patience is not None:
                stale[index] = torch.where(improved, torch.zeros_like(index), stale[index] + 1)
                stop |= tracker.succeeded[index] & (stale[index] >= patience)
            if stall_window is not None and t % stall_window == 0:
                loss = outcome.loss.detach().float()
                previous = reference[index]
                if t > 0:
                    stop |= (previous - loss) < _STALL_TOLERANCE * previous.abs()
                reference[index] = loss
        if t == steps or bool(stop.all()):
            break
        (grad,) = torch.autograd.grad(outcome.loss.sum(), rows)
        with torch.no_grad():
            moved = rows.detach() - adam.step(index, grad)
            moved = torch.where(stop.view(-1, *([1] * (moved.dim() - 1))), rows.detach(), moved)
            if whole:
                variable = moved
            else:
                variable[index] = moved
            active[index] = ~stop
        steps_run = t + 1
        if bar is not None:
            bar.update(1)
    return LoopResult(variable=variable, succeeded=succeeded, steps_run=steps_run)


__all__ = ["LoopResult", "PerSampleAdam", "adam_descent"]
