"""MI-FGSM: momentum iterative FGSM (Dong et al., CVPR 2018).

PGD whose step direction accumulates a momentum of L1-normalised gradients::

    g_{t+1} = mu * g_t + grad_t / ||grad_t||_1          (per sample)
    x_{t+1} = Proj(x_t - alpha * sign(g_{t+1}))         (L_inf; L2: g / ||g||_2)

(``-`` because the engine minimises the loss; for an untargeted attack the loss
is minus the cross-entropy of the true class.) Everything else is PGD's: the
threat model, targets, best-iterate bookkeeping and early stop come from
:class:`~idls.attacks.pgd.PGD` and its engine. As a joint-attack framework
(``--attack adv2 --framework mifgsm``) the momentum shapes the warm start and
the joint phase of ADV² and AdvEdge, which otherwise run as on PGD.

Defaults follow the paper: 10 iterations of ``epsilon / 10`` and decay 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from idls.attacks.base import ATTACKS
from idls.attacks.options import check_non_negative, option
from idls.attacks.pgd import PGD, Norm, PGDOptions, StepRule, step_direction

DEFAULT_DECAY = 1.0
DEFAULT_STEPS = 10
_TINY = 1e-12


class Momentum:
    """The MI-FGSM step rule: per-sample momentum of L1-normalised gradients (a callable :data:`StepRule`).

    State is one buffer ``B x C x H x W`` over the whole batch, allocated at the
    first call; ``index`` (``B_active`` long) selects the rows of the active samples.

    Args:
        decay: the momentum factor ``mu``.
        norm: ``'linf'`` (sign of the momentum) or ``'l2'`` (L2-normalised momentum).
    """

    def __init__(self, decay: float = DEFAULT_DECAY, norm: Norm = "linf") -> None:
        self.decay = float(decay)
        self.norm: Norm = norm
        self.velocity: Tensor | None = None

    def __call__(self, grad: Tensor, index: Tensor) -> Tensor:
        """Unit step ``B_active x C x H x W`` of rows ``index`` from their gradient ``grad``."""
        rows = int(index.max()) + 1 if index.numel() else 0
        if self.velocity is None or self.velocity.shape[0] < rows or self.velocity.shape[1:] != grad.shape[1:]:
            grown = torch.zeros((max(rows, grad.shape[0]), *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            if self.velocity is not None and self.velocity.shape[1:] == grad.shape[1:]:
                grown[: self.velocity.shape[0]] = self.velocity
            self.velocity = grown
        l1 = grad.abs().flatten(1).sum(1).clamp_min(_TINY).view(-1, *([1] * (grad.dim() - 1)))
        velocity = self.decay * self.velocity[index] + grad / l1
        self.velocity[index] = velocity
        return step_direction(velocity, self.norm)


@dataclass(frozen=True, eq=False, kw_only=True)
class MIFGSMOptions(PGDOptions):
    """PGD's options with the paper's defaults, plus the momentum decay."""

    steps: int = option(DEFAULT_STEPS, "number of steps")
    step_size: float | None = option(None, "step per iteration (default epsilon / steps)")
    decay: float = option(DEFAULT_DECAY, "momentum factor mu (0: plain sign steps)")

    def check(self) -> None:
        check_non_negative(decay=self.decay)
        super().check()

    def default_step_size(self) -> float:
        return self.epsilon / max(self.steps, 1)


@ATTACKS.register("mifgsm")
class MIFGSM(PGD):
    """MI-FGSM (Dong et al. 2018): PGD with a momentum of normalised gradients.

    Takes every option of :class:`~idls.attacks.pgd.PGD` (``epsilon``, ``norm``,
    ``mode``, ``random_start``, ``early_stop``...) with the paper's defaults
    ``steps=10`` and ``step_size=epsilon / steps``, plus ``decay`` (the momentum
    factor, default 1.0). Options: :class:`MIFGSMOptions` (``idls options mifgsm``).
    """

    name = "mifgsm"
    Options = MIFGSMOptions
    decay: float

    def step_rule(self) -> StepRule:
        return Momentum(self.decay, self.norm)


__all__ = ["DEFAULT_DECAY", "MIFGSM", "MIFGSMOptions", "Momentum"]
