"""StAdv: spatially transformed adversarial examples (Xiao et al. 2018).

A per-pixel flow field ``f`` (``B x 2 x H x W``, in pixels; channel 0 the
horizontal displacement du, channel 1 the vertical dv) moves where each output
pixel reads the clean image: ``x*[i, j] = x(i + dv[i, j], j + du[i, j])`` by
bilinear interpolation, border padding outside the image. Adam (lr 0.01,
paper 001 B2) minimises per sample::

    l_adv(x*) + tau * L_flow(f)  [+ extra loss]

with ``l_adv`` the margin ``max(max_{i != t} Z_i - Z_t, -kappa)`` (StAdv; or
cross-entropy) and ``L_flow(f) = sum_p sum_{q in N(p)} sqrt(||f_p - f_q||^2 + eps)``
over 4-neighbours inside the image (paper 001 eq. 14; each neighbouring pair
counts twice, as in the sum over p). ``tau`` defaults to the paper's 0.0005 at
224 px scaled by the pixel count (:func:`default_tau`; 0.0245 at 32 px). The constant ``sqrt(eps)`` per term is
subtracted, so a constant flow costs exactly 0 (it does not change the
gradient). Per sample the attack keeps the successful iterate with the
smallest ``L_flow`` (or ``score_fn``).

Hooks for joint attacks (as for C&W, see :mod:`idls.attacks.cw`): ``evaluate``
(logits + extra loss in one pass), ``score_fn``, and ``flow_weights``
``B x 1|2 x H x W`` multiplying the flow (AdvEdge: ``r = E(x) * (du, dv)``);
``L_flow`` is measured on the weighted flow that is actually applied.

Warping: a gather-based bilinear sampler with the pixel-centre convention of
``torch.nn.functional.grid_sample(..., align_corners=True, padding_mode='border')``
(its test oracle). Unlike grid_sample, whose coordinate normalisation is off by
up to ~1e-5 at 224 px, it reproduces the image exactly for zero flow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from idls.attacks.base import ATTACKS, Attack, Perturbation, flush_denormal, prediction_loss
from idls.attacks.cw import (
    DEFAULT_LR,
    BestIterate,
    EvaluateFn,
    ScoreFn,
    StepOutcome,
    adam_descent,
    check_weights,
    classifier_evaluation,
    margin_loss,
    margin_success,
)
from idls.attacks.options import AttackOptions, check_non_negative, check_positive, option
from idls.attacks.pgd import Iterate
from idls.errors import UserError
from idls.progress import progress_bar
from idls.system import Classifier

AdversarialLoss = Literal["margin", "ce"]
ADVERSARIAL_LOSSES: tuple[str, ...] = ("margin", "ce")
DEFAULT_STEPS = 100
PAPER_TAU = 0.0005  #: paper 001 Table 11, at 224 x 224 px
PAPER_PIXELS = 224 * 224
FLOW_EPS = 1e-8


def default_tau(height: int, width: int) -> float:
    """The paper's tau (0.0005 at 224 x 224) scaled by ``224^2 / (H W)``.

    ``L_flow`` is a sum over pixels, so this keeps the weight per pixel of the
    flow penalty independent of the image size: 0.0245 at 32 x 32 (CIFAR),
    close to the tau = 0.05 of the original StAdv paper on MNIST/CIFAR.
    """
    return PAPER_TAU * PAPER_PIXELS / (height * width)


def warp(x: Tensor, flow: Tensor) -> Tensor:
    """Bilinear warp with border padding: ``out[:, :, i, j] = x(i + flow[:, 1, i, j], j + flow[:, 0, i, j])``.

    Args:
        x: ``B x C x H x W`` images (H, W >= 2).
        flow: ``B x 2 x H x W`` displacements in pixels (du horizontal, dv vertical).

    Returns:
        ``B x C x H x W``; differentiable w.r.t. both arguments; exactly ``x`` for zero flow.
    """
    batch, channels, height, width = x.shape
    if height < 2 or width < 2:
        raise UserError(f"StAdv needs images of at least 2 x 2 pixels, got {height} x {width}")
    if flow.shape != (batch, 2, height, width):
        raise UserError(f"flow must be B x 2 x H x W = {(batch, 2, height, width)}, got {tuple(flow.shape)}")
    cols = torch.arange(width, device=x.device, dtype=flow.dtype).view(1, 1, width) + flow[:, 0]
    rows = torch.arange(height, device=x.device, dtype=flow.dtype).view(1, height, 1) + flow[:, 1]
    cols = cols.clamp(0, width - 1)
    rows = rows.clamp(0, height - 1)
    col0 = cols.detach().floor().clamp(max=width - 2)
    row0 = rows.detach().floor().clamp(max=height - 2)
    wc = (cols - col0).flatten(1).unsqueeze(1)  # B x 1 x HW
    wr = (rows - row0).flatten(1).unsqueeze(1)
    base = (row0.long() * width + col0.long()).flatten(1).unsqueeze(1).expand(batch, channels, -1)
    flat = x.flatten(2)

    def corner(offset: int) -> Tensor:
        return flat.gather(2, base + offset)

    top = corner(0) * (1 - wc) + corner(1) * wc
    bottom = corner(width) * (1 - wc) + corner(width + 1) * wc
    return (top * (1 - wr) + bottom * wr).view_as(x)


def flow_loss(flow: Tensor, eps: float = FLOW_EPS) -> Tensor:
    """StAdv's smoothness loss ``B``: ``sum_p sum_{q in N(p)} (sqrt(||f_p - f_q||^2 + eps) - sqrt(eps))``.

    ``N(p)``: the 4-neighbours of ``p`` inside the image; each adjacent pair is
    counted from both sides (hence the factor 2). Zero for a constant flow.

    Args:
        flow: ``B x 2 x H x W``.
    """

    def pair_costs(diff: Tensor) -> Tensor:
        return ((diff.pow(2).sum(1) + eps).sqrt() - math.sqrt(eps)).flatten(1).sum(1)

    horizontal = flow[..., :, 1:] - flow[..., :, :-1]
    vertical = flow[..., 1:, :] - flow[..., :-1, :]
    return 2 * (pair_costs(horizontal) + pair_costs(vertical))


@dataclass(frozen=True, eq=False, kw_only=True)
class StAdvOptions(AttackOptions):
    """Options of StAdv (:class:`StAdv` and :func:`spatial_transform_attack`)."""

    steps: int = option(DEFAULT_STEPS, "maximum Adam steps")
    tau: float | None = option(None, "weight of the flow smoothness loss (None: default_tau of the image size)")
    lr: float = option(DEFAULT_LR, "Adam learning rate (pixels per step, roughly)")
    kappa: float = option(0.0, "confidence margin on the logits")
    loss: str = option("margin", "'margin' (StAdv) or 'ce' (cross-entropy; success is then argmax)")
    early_stop: bool = option(False, "stop a sample once it succeeded and stopped improving")
    patience: int = option(0, "evaluations without a better score before a successful sample stops")

    def check(self) -> None:
        check_non_negative(steps=self.steps, kappa=self.kappa, patience=self.patience)
        if self.tau is not None:
            check_non_negative(tau=self.tau)
            self._set("tau", float(self.tau))
        check_positive(lr=self.lr)
        if self.loss not in ADVERSARIAL_LOSSES:
            raise UserError(f"unknown StAdv loss {self.loss!r}; choose one of: {', '.join(ADVERSARIAL_LOSSES)}")


def spatial_transform_attack(
    x: Tensor,
    evaluate: EvaluateFn,
    classes: Tensor,
    *,
    targeted: bool,
    options: StAdvOptions | None = None,
    score_fn: ScoreFn | None = None,
    flow_weights: Tensor | None = None,
    flow_init: Tensor | None = None,
    description: str = "stadv",
    **values: Any,
) -> Perturbation:
    """Optimise a flow field per sample (see the module docstring).

    Args:
        x: ``B x C x H x W`` clean images in [0, 1].
        evaluate: ``evaluate(it) -> Evaluation`` with ``logits`` set and ``loss``
            the extra per-sample loss (see :func:`~idls.attacks.cw.classifier_evaluation`).
        classes: ``B`` targets (targeted) or true labels (untargeted).
        targeted: attack direction.
        options: :class:`StAdvOptions` (steps, tau, lr, kappa, loss, early_stop, patience,
            progress); or give them as keywords (``**values``).
        score_fn: ``score_fn(it, evaluation) -> B_active``, lower is better among
            successes; default: ``L_flow`` of the applied flow.
        flow_weights: ``B x 1|2 x H x W`` non-negative multiplier of the flow.
        flow_init: ``B x 2 x H x W`` start flow (default zero), before weighting.
        description: the progress bar's label.

    Returns:
        :class:`~idls.attacks.base.Perturbation`; ``extras['flow']`` ``B x 2 x H x W``
        is the applied (weighted) flow of each returned image.
    """
    o = StAdvOptions.from_user("stadv", values) if options is None else options
    steps, kappa, loss = o.steps, o.kappa, o.loss
    batch, _, height, width = x.shape
    tau = default_tau(height, width) if o.tau is None else o.tau
    weights = check_weights(flow_weights, x, (1, 2), "flow_weights")
    if flow_init is not None and flow_init.shape != (batch, 2, height, width):
        raise UserError(f"flow_init must be B x 2 x H x W = {(batch, 2, height, width)}, got {tuple(flow_init.shape)}")
    x = x.detach()
    classes = classes.to(x.device)
    flow_start = torch.zeros(batch, 2, height, width, dtype=x.dtype, device=x.device)
    if flow_init is not None:
        flow_start = flow_init.detach().to(flow_start)
    confidence = kappa if loss == "margin" else 0.0

    def step_fn(flow: Tensor, index: Tensor, iteration: int) -> StepOutcome:
        applied = flow * weights[index] if weights is not None else flow
        x_adv = warp(x[index], applied).clamp(0.0, 1.0)
        it = Iterate(x=x_adv, index=index, iteration=iteration)
        evaluation = evaluate(it)
        rows_classes = classes[index]
        if loss == "margin":
            adversarial = margin_loss(evaluation.logits, rows_classes, targeted=targeted, kappa=kappa)
        else:
            adversarial = prediction_loss(evaluation.logits, rows_classes, targeted=targeted)
        smoothness = flow_loss(applied)
        total = adversarial + tau * smoothness + evaluation.loss
        succeeded = margin_success(evaluation.logits.detach(), rows_classes, targeted=targeted, kappa=confidence)
        score = score_fn(it, evaluation) if score_fn is not None else smoothness.detach()
        return StepOutcome(loss=total, x_adv=x_adv.detach(), succeeded=succeeded, score=score.detach(),
                           aux=applied.detach())

    tracker = BestIterate(x, aux=flow_start if weights is None else flow_start * weights)
    with flush_denormal(), progress_bar(total=steps, desc=description, disable=not o.progress, leave=False) as bar:
        result = adam_descent(
            flow_start, step_fn, tracker, steps=steps, lr=o.lr, patience=o.patience if o.early_stop else None, bar=bar
        )
    return tracker.perturbation(result.steps_run, {"flow": tracker.chosen_aux()})


@ATTACKS.register("stadv")
class StAdv(Attack):
    """StAdv flow-field attack (bilinear warping, flow smoothness loss, Adam).

    Defaults: 100 Adam steps of lr 0.01 (paper 001 B2), tau = 0.0005 at 224 px
    (paper 001 Table 11) scaled to the image size by :func:`default_tau`
    (0.0245 at 32 px), margin loss with kappa 0; every sample runs all steps
    and keeps its successful iterate with the smallest ``L_flow``.

    Options: :class:`StAdvOptions` (``idls options stadv``).
    """

    name = "stadv"
    joint_table = "stadv"
    joint_kind = "adam"
    uses_epsilon = False

    Options = StAdvOptions
    steps: int
    tau: float | None
    lr: float
    kappa: float
    loss: AdversarialLoss
    early_stop: bool
    patience: int

    def optimise(
        self,
        x: Tensor,
        evaluate: EvaluateFn,
        classes: Tensor,
        *,
        targeted: bool,
        score_fn: ScoreFn | None = None,
        flow_weights: Tensor | None = None,
        flow_init: Tensor | None = None,
    ) -> Perturbation:
        """:func:`spatial_transform_attack` with this attack's options (the entry point of joint attacks)."""
        return spatial_transform_attack(
            x, evaluate, classes, targeted=targeted, options=self.options, score_fn=score_fn,
            flow_weights=flow_weights, flow_init=flow_init, description=f"{self.name} ({self.mode.value})",
        )

    # -- as a joint-attack framework ---------------------------------------------------
    @property
    def iterations_per_run(self) -> int:
        """Gradient steps of one :meth:`optimise` call at most."""
        return self.steps

    def optimise_joint(self, x: Tensor, evaluate: EvaluateFn, targets: Tensor, *, score_fn: ScoreFn | None,
                       weights: Tensor | None, start: dict[str, Tensor]) -> Perturbation:
        """Targeted :meth:`optimise` with step weights ``weights`` (on the flow) from ``start``."""
        return self.optimise(x, evaluate, targets, targeted=True, score_fn=score_fn, flow_weights=weights,
                             flow_init=start.get("flow_init"))

    def continuation(self, warm: Perturbation, weights: Tensor | None) -> dict[str, Tensor]:
        """Start of a joint run from a warm-start run: its flow, before the weights were applied."""
        flow = warm.extras["flow"]  # the applied (weighted) flow
        if weights is not None:
            flow = torch.where(weights > 0, flow / weights.clamp_min(1e-12), torch.zeros_like(flow))
        return {"flow_init": flow}

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        targeted = targets is not None
        return self.optimise(x, classifier_evaluation(classifier), targets if targeted else labels, targeted=targeted)


__all__ = [
    "ADVERSARIAL_LOSSES",
    "DEFAULT_STEPS",
    "FLOW_EPS",
    "PAPER_PIXELS",
    "PAPER_TAU",
    "StAdv",
    "StAdvOptions",
    "default_tau",
    "flow_loss",
    "spatial_transform_attack",
    "warp",
]
