"""Carlini & Wagner L2 (C&W) and the per-sample Adam loop it shares with StAdv.

C&W (Carlini & Wagner 2017) optimises a tanh-parametrised image
``x* = lo + (hi - lo) * (tanh(w) + 1) / 2`` with Adam on::

    ||x* - x||_2^2 + c * max(max_{i != t} Z_i(x*) - Z_t(x*), -kappa)  [+ extra loss]

(untargeted: ``max(Z_y - max_{i != y} Z_i, -kappa)``) and binary-searches the
constant ``c`` per sample: a sample that succeeded in a round gets a smaller
``c`` next round, one that failed a larger one (x10 until it has succeeded
once, then bisection). Each round restarts from the clean image with fresh
Adam state. Per sample the attack keeps, over all rounds, the successful
iterate with the smallest L2 distance (or the smallest ``score_fn``).

``[lo, hi]`` is ``[0, 1]`` (standard C&W) or, with an L_inf cap ``epsilon``,
``[max(x - eps, 0), min(x + eps, 1)]``: the tanh parametrisation then maps
onto the intersection of the ball and the pixel box, so every iterate obeys
the cap exactly and keeps its gradient (no clipping, which would leave
coordinates stuck at the cap with zero gradient). ``w`` is scaled by the box
width so that Adam moves pixels equally fast with or without the cap.

Hooks for joint attacks (ADV², AdvEdge), on :func:`carlini_wagner_l2`:

* ``evaluate(it) -> Evaluation`` runs the model at the iterate ``it.x`` and
  returns its logits plus an extra per-sample loss (``Evaluation.loss``; e.g.
  ``lambda * map distance``) and extras for the score. One call per iteration,
  so a joint loss can share the classifier's forward pass.
  :func:`classifier_evaluation` builds it from a classifier and an optional
  ``extra_loss(it) -> B_active``.
* ``score_fn(it, evaluation) -> B_active``: lower is better among successes.
* ``perturbation_weights`` ``B x 1|C x H x W``: the perturbation is
  ``delta = weights * (x_box - x)`` (AdvEdge: the edge weights ``E(x)``).

Shared machinery (used by :mod:`idls.attacks.stadv`): :func:`margin`,
:func:`margin_loss`, :func:`margin_success`, :class:`PerSampleAdam`,
:class:`BestIterate`, :class:`StepOutcome` and :func:`adam_descent`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from idls.attacks.base import ATTACKS, Attack
from idls.attacks.options import AttackOptions, check_non_negative, check_positive, option
from idls.attacks.pgd import Evaluation, Iterate
from idls.attacks.threats import LpBall, Threat
from idls.errors import UserError
from idls.optim import BestIterate, LoopResult, PerSampleAdam, Perturbation, StepOutcome, adam_descent, flush_denormal
from idls.progress import progress_bar
from idls.system import Classifier

EvaluateFn = Callable[[Iterate], Evaluation]
ExtraLossFn = Callable[[Iterate], Tensor]
ScoreFn = Callable[[Iterate, Evaluation], Tensor]

DEFAULT_STEPS = 100
DEFAULT_SEARCH_STEPS = 5
DEFAULT_INITIAL_CONST = 0.01
DEFAULT_LR = 0.01
_TANH_LIMIT = 1 - 1e-6  # |tanh(w)| stays below this at the start point, so atanh is finite


# ---------------------------------------------------------------------------------
# Margin loss (C&W f6; StAdv's adversarial loss)
# ---------------------------------------------------------------------------------


def margin(logits: Tensor, classes: Tensor, *, targeted: bool) -> Tensor:
    """Per-sample logit margin ``B``; negative means the attack currently succeeds.

    Targeted: ``max_{i != t} Z_i - Z_t``. Untargeted (``classes`` = true labels):
    ``Z_y - max_{i != y} Z_i``.

    Args:
        logits: ``B x N``.
        classes: ``B`` long, targets (targeted) or true labels (untargeted).
    """
    classes = classes.to(logits.device).long()[:, None]
    own = logits.gather(1, classes)[:, 0]
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, classes, True)
    other = logits.masked_fill(mask, float("-inf")).amax(1)
    return other - own if targeted else own - other


def margin_loss(logits: Tensor, classes: Tensor, *, targeted: bool, kappa: float = 0.0) -> Tensor:
    """``max(margin, -kappa)`` per sample ``B`` (C&W's f6 with confidence ``kappa``)."""
    return margin(logits, classes, targeted=targeted).clamp(min=-kappa)


def margin_success(logits: Tensor, classes: Tensor, *, targeted: bool, kappa: float = 0.0) -> Tensor:
    """``B`` bool: ``margin < -kappa`` (kappa 0: argmax == target, or argmax != label)."""
    return margin(logits, classes, targeted=targeted) < -kappa


def classifier_evaluation(classifier: Classifier, extra_loss: ExtraLossFn | None = None) -> EvaluateFn:
    """The ``evaluate`` hook for a plain classifier plus an optional extra loss.

    Args:
        classifier: the model; ``evaluate(it)`` runs it once on ``it.x``.
        extra_loss: ``extra_loss(it) -> B_active`` differentiable loss added to the
            attack's objective (``it.select(per_sample)`` picks the active rows).
    """

    def evaluate(it: Iterate) -> Evaluation:
        logits = classifier(it.x)
        extra = extra_loss(it) if extra_loss is not None else logits.new_zeros(it.x.shape[0])
        return Evaluation(loss=extra, logits=logits)

    return evaluate


def check_weights(weights: Tensor | None, x: Tensor, channels: tuple[int, ...], name: str) -> Tensor | None:
    """Validate per-sample weights ``B x K x H x W`` (``K`` in ``channels``), finite and >= 0."""
    if weights is None:
        return None
    if (not isinstance(weights, Tensor) or weights.dim() != 4 or weights.shape[0] != x.shape[0]
            or weights.shape[1] not in channels or weights.shape[2:] != x.shape[2:]):
        shape = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        options = "|".join(str(c) for c in channels)
        raise UserError(f"{name} must be B x {options} x H x W for images {tuple(x.shape)}, got {shape}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise UserError(f"{name} must be finite and non-negative (e.g. edge weights in [0, 1])")
    return weights.detach().to(x)


# ---------------------------------------------------------------------------------
# C&W L2
# ---------------------------------------------------------------------------------


def box_bounds(x: Tensor, epsilon: float | None) -> tuple[Tensor, Tensor]:
    """Per-pixel bounds ``(lo, hi)`` (``B x C x H x W``): [0, 1], intersected with the L_inf ball if ``epsilon``."""
    if epsilon is None:
        return torch.zeros_like(x), torch.ones_like(x)
    return (x - epsilon).clamp(min=0.0), (x + epsilon).clamp(max=1.0)


def to_tanh_space(image: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``w`` with ``from_tanh_space(w, lo, hi) ~= image`` (up to 1e-6 of the box width)."""
    width = hi - lo
    unit = 2 * (image - lo) / width - 1
    return width * torch.atanh(unit.clamp(-_TANH_LIMIT, _TANH_LIMIT))


def from_tanh_space(w: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``lo + (hi - lo) * (tanh(w / (hi - lo)) + 1) / 2``: any real ``w`` maps into ``[lo, hi]``.

    Dividing by the box width keeps ``d x / d w = sech^2 / 2`` as in standard C&W
    (width 1), so an Adam step moves a pixel as far inside a narrow L_inf box
    as in the unit box (instead of ``width`` times less).
    """
    width = hi - lo
    return lo + width * (torch.tanh(w / width) + 1) / 2


def update_constants(const: Tensor, lower: Tensor, upper: Tensor, succeeded: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One binary-search step on the per-sample constants ``c`` (all ``B``).

    A success makes ``c`` an upper bound and moves ``c`` to the middle of
    ``[lower, upper]`` (smaller). A failure makes ``c`` a lower bound and moves
    ``c`` to the middle of ``[lower, upper]`` or, while no success bounds it
    from above, multiplies it by 10 (larger).

    Returns:
        ``(const, lower, upper)`` for the next round.
    """
    upper = torch.where(succeeded, torch.minimum(upper, const), upper)
    lower = torch.where(succeeded, lower, torch.maximum(lower, const))
    bounded = torch.isfinite(upper)
    const = torch.where(bounded, (lower + upper) / 2, const * 10)
    return const, lower, upper


@dataclass(frozen=True, eq=False, kw_only=True)
class CWOptions(AttackOptions):
    """Options of C&W L2 (:class:`CarliniWagnerL2` and :func:`carlini_wagner_l2`)."""

    steps: int = option(DEFAULT_STEPS, "Adam steps per binary-search round")
    search_steps: int = option(DEFAULT_SEARCH_STEPS, "rounds of the binary search over the constant c")
    initial_const: float = option(DEFAULT_INITIAL_CONST, "c of the first round (x10 per failed round until bounded)")
    kappa: float = option(0.0, "confidence margin on the logits (success needs margin < -kappa)")
    lr: float = option(DEFAULT_LR, "Adam learning rate (in tanh space)")
    epsilon: float | None = option(None, "optional L_inf cap on the [0, 1] scale (None: uncapped)")
    abort_early: bool = option(True, "end a sample's round when its loss stalls (window steps // 10)")

    def check(self) -> None:
        check_non_negative(steps=self.steps, kappa=self.kappa)
        check_positive(search_steps=self.search_steps, initial_const=self.initial_const, lr=self.lr)
        if self.epsilon is not None:
            check_positive(epsilon=self.epsilon)
            self._set("epsilon", float(self.epsilon))


def carlini_wagner_l2(
    x: Tensor,
    evaluate: EvaluateFn,
    classes: Tensor,
    *,
    targeted: bool,
    options: CWOptions | None = None,
    score_fn: ScoreFn | None = None,
    perturbation_weights: Tensor | None = None,
    x_init: Tensor | None = None,
    description: str = "cw",
    **values: Any,
) -> Perturbation:
    """C&W L2 with a per-sample binary search on ``c`` (see the module docstring).

    Objective per sample: ``||delta||_2^2 + c * max(margin, -kappa) + evaluation.loss``
    with ``x* = x + delta``, ``delta = weights * (x_box - x)`` (no weights: ``x_box - x``),
    ``x_box = from_tanh_space(w, lo, hi)`` in ``[lo, hi]``. Success: ``margin < -kappa``.

    Args:
        x: ``B x C x H x W`` clean images in [0, 1].
        evaluate: ``evaluate(it) -> Evaluation`` with ``logits`` set and ``loss``
            the extra per-sample loss (zeros for plain C&W); see :func:`classifier_evaluation`.
            ``it.iteration`` counts gradient steps over all rounds.
        classes: ``B`` targets (targeted) or true labels (untargeted).
        targeted: which margin to use.
        options: :class:`CWOptions` (steps, search_steps, initial_const, kappa, lr, epsilon,
            abort_early, progress); or give them as keywords (``**values``).
        score_fn: ``score_fn(it, evaluation) -> B_active``, lower is better among
            successes; default: the L2 norm of ``delta``.
        perturbation_weights: ``B x 1|C x H x W`` non-negative multiplier of ``delta``.
        x_init: start point of ``x_box`` in every round instead of ``x``.
        description: the progress bar's label.

    Returns:
        :class:`~idls.attacks.base.Perturbation`; ``extras['c']`` (``B x R``: the
        constant of each of the R rounds) and ``extras['round_success']`` (``B x R``
        bool: some iterate of that round succeeded).
    """
    o = CWOptions.from_user("cw", values) if options is None else options
    steps, kappa = o.steps, o.kappa
    weights = check_weights(perturbation_weights, x, (1, x.shape[1]), "perturbation_weights")
    if x_init is not None and x_init.shape != x.shape:
        raise UserError(f"x_init must have the images' shape {tuple(x.shape)}, got {tuple(x_init.shape)}")
    x = x.detach()
    batch = x.shape[0]
    classes = classes.to(x.device)
    lo, hi = box_bounds(x, o.epsilon)
    start = x if x_init is None else torch.minimum(torch.maximum(x_init.detach().to(x), lo), hi)
    w_start = to_tanh_space(start, lo, hi)
    const = torch.full((batch,), float(o.initial_const), dtype=x.dtype, device=x.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, math.inf)
    tracker = BestIterate(x)
    constants: list[Tensor] = []
    round_success: list[Tensor] = []
    window = max(steps // 10, 1) if o.abort_early else None
    iterations = 0

    def step_fn(w: Tensor, index: Tensor, iteration: int, c: Tensor) -> StepOutcome:
        x_rows, lo_rows, hi_rows = x[index], lo[index], hi[index]
        delta = from_tanh_space(w, lo_rows, hi_rows) - x_rows
        if weights is not None:  # weights > 1 could leave the box: clamp back into it
            delta = torch.minimum(torch.maximum(delta * weights[index], lo_rows - x_rows), hi_rows - x_rows)
        x_adv = (x_rows + delta).clamp(0.0, 1.0)
        it = Iterate(x=x_adv, index=index, iteration=iteration)
        evaluation = evaluate(it)
        rows_classes = classes[index]
        distance = delta.flatten(1).pow(2).sum(1)
        loss = distance + c[index] * margin_loss(evaluation.logits, rows_classes, targeted=targeted, kappa=kappa)
        loss = loss + evaluation.loss
        succeeded = margin_success(evaluation.logits.detach(), rows_classes, targeted=targeted, kappa=kappa)
        score = score_fn(it, evaluation) if score_fn is not None else distance.detach().sqrt()
        return StepOutcome(loss=loss, x_adv=x_adv.detach(), succeeded=succeeded, score=score.detach())

    with flush_denormal(), progress_bar(total=steps * o.search_steps, desc=description,
                                        disable=not o.progress, leave=False) as bar:
        for _ in range(o.search_steps):
            result = adam_descent(
                w_start,
                lambda w, index, iteration, c=const: step_fn(w, index, iteration, c),
                tracker,
                steps=steps,
                lr=o.lr,
                iteration_offset=iterations,
                stall_window=window,
                bar=bar,
            )
            iterations += result.steps_run
            constants.append(const)
            round_success.append(result.succeeded)
            const, lower, upper = update_constants(const, lower, upper, result.succeeded)
            if o.progress:
                bar.set_postfix(success=f"{float(tracker.succeeded.float().mean()):.2f}", refresh=False)
    extras = {"c": torch.stack(constants, dim=1), "round_success": torch.stack(round_success, dim=1)}
    return tracker.perturbation(iterations, extras)


@ATTACKS.register("cw")
class CarliniWagnerL2(Attack):
    """Carlini & Wagner L2 attack (tanh parametrisation, margin loss, Adam, binary search on c).

    Defaults: 100 Adam steps (lr 0.01) per round, 5 rounds of binary search
    starting at c = 0.01 (x10 per failed round until bounded), kappa 0, abort
    early when the loss stalls, no L_inf cap (``epsilon=None``; the papers
    compare at ``epsilon=8/255``). Each sample returns its successful iterate
    with the smallest L2 perturbation (its last iterate if it never succeeded).

    Options: :class:`CWOptions` (``idls options cw``).
    """

    name = "cw"
    Options = CWOptions
    joint_table = "cw"
    joint_kind = "adam"
    steps: int
    search_steps: int
    initial_const: float
    kappa: float
    lr: float
    epsilon: float | None
    abort_early: bool

    def optimise(
        self,
        x: Tensor,
        evaluate: EvaluateFn,
        classes: Tensor,
        *,
        targeted: bool,
        score_fn: ScoreFn | None = None,
        perturbation_weights: Tensor | None = None,
        x_init: Tensor | None = None,
    ) -> Perturbation:
        """:func:`carlini_wagner_l2` with this attack's options (the entry point of joint attacks)."""
        return carlini_wagner_l2(
            x, evaluate, classes, targeted=targeted, options=self.options, score_fn=score_fn,
            perturbation_weights=perturbation_weights, x_init=x_init, description=f"{self.name} ({self.mode.value})",
        )

    def threat(self) -> Threat:
        return Threat() if self.epsilon is None else LpBall("linf", self.epsilon)

    # -- as a joint-attack framework ---------------------------------------------------
    @property
    def iterations_per_run(self) -> int:
        """Gradient steps of one :meth:`optimise` call at most (all binary-search rounds)."""
        return self.steps * self.search_steps

    def optimise_joint(self, x: Tensor, evaluate: EvaluateFn, targets: Tensor, *, score_fn: ScoreFn | None,
                       weights: Tensor | None, start: dict[str, Tensor]) -> Perturbation:
        """Targeted :meth:`optimise` with step weights ``weights`` (on the perturbation) from ``start``."""
        return self.optimise(x, evaluate, targets, targeted=True, score_fn=score_fn, perturbation_weights=weights,
                             x_init=start.get("x_init"))

    def continuation(self, warm: Perturbation, weights: Tensor | None) -> dict[str, Tensor]:
        """Start of a joint run from a warm-start run: its images."""
        return {"x_init": warm.x_adv}

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        targeted = targets is not None
        return self.optimise(x, classifier_evaluation(classifier), targets if targeted else labels, targeted=targeted)


__all__ = [
    "BestIterate",
    "CWOptions",
    "CarliniWagnerL2",
    "DEFAULT_INITIAL_CONST",
    "DEFAULT_LR",
    "DEFAULT_SEARCH_STEPS",
    "DEFAULT_STEPS",
    "EvaluateFn",
    "ExtraLossFn",
    "LoopResult",
    "PerSampleAdam",
    "ScoreFn",
    "StepOutcome",
    "adam_descent",
    "box_bounds",
    "carlini_wagner_l2",
    "check_weights",
    "classifier_evaluation",
    "from_tanh_space",
    "margin",
    "margin_loss",
    "margin_success",
    "to_tanh_space",
    "update_constants",
]
