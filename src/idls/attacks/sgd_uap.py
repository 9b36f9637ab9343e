"""SGD-UAP (Shafahi et al. 2020): a universal perturbation by minibatch sign-gradient ascent.

Per minibatch ``x`` ``b x C x H x W`` (labels ``y``) of the fit data, reshuffled each epoch::

    untargeted: g = grad_delta mean_i min(CE(f(clamp(x_i + delta, 0, 1)), y_i), beta)
    targeted:   g = -grad_delta mean_i CE(f(clamp(x_i + delta, 0, 1)), t)
    delta <- Proj_eps(delta + step_size * direction(g))

with ``direction`` the sign (L_inf) or ``g / ||g||_2`` (L2), from ``delta = 0``. The
clipping at ``beta`` stops images already fooled with confidence from dominating
the mean, so the steps serve the images not fooled yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.attacks.base import ATTACKS
from idls.attacks.fit_checkpoint import FitCheckpoint
from idls.attacks.options import option
from idls.attacks.pgd import step_direction
from idls.attacks.targets import TargetMode
from idls.attacks.universal import (
    BudgetOptions,
    UniversalAttack,
    epoch_order,
    predictions,
    project_delta,
)
from idls.errors import UserError
from idls.optim import flush_denormal
from idls.progress import progress_bar
from idls.system import Classifier


@dataclass(frozen=True, eq=False, kw_only=True)
class SGDUAPOptions(BudgetOptions):
    """Options of :class:`SGDUAP`."""

    epochs: int = option(10, "passes over the fit data")
    batch_size: int = option(64, "images per gradient step")
    step_size: float | None = option(None, "step length on the [0, 1] scale (default epsilon / 10)")
    beta: float = option(10.0, "untargeted: clip each image's cross-entropy at beta")

    def check(self) -> None:
        super().check()
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        for name in ("step_size", "beta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{name} must be a positive number, got {value}")


@ATTACKS.register("sgd-uap")
class SGDUAP(UniversalAttack):
    """Universal perturbation by minibatch sign-gradient ascent on a clipped cross-entropy (Shafahi et al.).

    The progress bar shows the epoch's running fooling ratio (share of images whose
    prediction on ``x + delta`` differs from that on ``x``); the metadata records the
    final fooling ratio on the fit data (``fit_fooling_ratio``). Checkpoints after each
    epoch. Options: :class:`SGDUAPOptions` (``idls options sgd-uap``).
    """

    name = "sgd-uap"
    Options = SGDUAPOptions
    modes: ClassVar[tuple[TargetMode, ...]] = (TargetMode.UNTARGETED, TargetMode.TARGETED)
    epochs: int
    batch_size: int
    step_size: float | None
    beta: float

    def _fit(self, classifier: Classifier, images: Tensor, labels: Tensor, *, progress: bool,
             checkpoint: FitCheckpoint) -> tuple[Tensor, dict[str, Any]]:
        device, count = classifier.device, images.shape[0]
        step = self.epsilon / 10 if self.step_size is None else self.step_size
        clean = predictions(classifier, images, None)
        labels = labels.to(device)
        delta = torch.zeros((1, *images.shape[1:]), device=device)
        start = 0
        state = checkpoint.load()
        if state is not None:
            delta, start = state.tensors["delta"].to(device), state.epochs_done
        batches = math.ceil(count / self.batch_size)
        with flush_denormal(), progress_bar(total=self.epochs * batches, initial=start * batches,
                                            desc=self.name, disable=not progress, leave=False) as bar:
            for epoch in range(start, self.epochs):
                fooled = seen = 0
                for index in epoch_order(count, epoch, self.seed).split(self.batch_size):
                    x = images[index.to(images.device)].to(device)
                    on_device = index.to(device)
                    variable = delta.detach().requires_grad_(True)
                    with torch.enable_grad():
                        logits = classifier((x + variable).clamp(0.0, 1.0))
                        loss = self._loss(logits, labels[on_device])
                        (grad,) = torch.autograd.grad(loss, variable)
                    with torch.no_grad():
                        fooled += int((logits.argmax(1) != clean[on_device]).sum())
                        seen += index.numel()
                        delta = project_delta(delta + step * step_direction(grad, self.norm), self.epsilon, self.norm)
                    bar.update(1)
                    bar.set_postfix(fooling=f"{fooled / seen:.3f}", refresh=False)
                checkpoint.save(epoch + 1, {"delta": delta})
        fooling = float((predictions(classifier, images, delta) != clean).float().mean())
        return delta, {"fit_fooling_ratio": fooling}

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The objective to ascend, mean over the minibatch."""
        if self.target_class is not None:
            return -F.cross_entropy(logits, torch.full_like(labels, self.target_class))
        return F.cross_entropy(logits, labels, reduction="none").clamp(max=self.beta).mean()


__all__ = ["SGDUAP", "SGDUAPOptions"]
