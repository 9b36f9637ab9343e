"""Projected gradient descent: the shared engine and the plain PGD attack.

:func:`projected_gradient_descent` is the loop every PGD-style attack uses
(plain PGD here; ADV² and AdvEdge supply a joint loss, a map-distance score and
edge step weights). Its callbacks all receive an :class:`Iterate`, which holds
the current images of the samples still being optimised and their positions in
the full batch (``it.select(per_sample_tensor)`` picks their rows)::

    def loss_fn(it):                        # -> Tensor B_active or Evaluation
        logits = classifier(it.x)
        return Evaluation(prediction_loss(logits, it.select(targets), targeted=True), logits)

    def success_fn(it, ev):                 # -> B_active bool
        return metrics.success(ev.logits, target=it.select(targets))

    outcome = projected_gradient_descent(x, loss_fn, success_fn=success_fn, epsilon=8/255,
                                         step_size=1/255, steps=100)

A joint attack adds ``score_fn = lambda it, ev: ev.extras["map_distance"]`` so
that each sample keeps its successful iterate with the smallest map distance,
and ``step_weights`` (``B x 1|C x H x W``) to shape the step (AdvEdge).

Per iteration the engine runs ``loss_fn`` once (one forward), reads success
and score off that same evaluation, and back-propagates once: the cost is one
forward + backward of whatever ``loss_fn`` computes (plus one last forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from idls import metrics
from idls.attacks.base import ATTACKS, Attack, prediction_loss
from idls.attacks.options import AttackOptions, check_non_negative, option
from idls.attacks.threats import LpBall
from idls.errors import UserError
from idls.optim import BestIterate, Perturbation, StepOutcome, flush_denormal
from idls.progress import progress_bar
from idls.system import Classifier

Norm = Literal["linf", "l2"]
NORMS: tuple[str, ...] = ("linf", "l2")
_TINY = 1e-12


@dataclass(frozen=True)
class Iterate:
    """The current iterate of the samples still being optimised.

    Attributes:
        x: ``B_active x C x H x W`` images (requires grad inside ``loss_fn``).
        index: ``B_active`` long, their rows in the full batch.
        iteration: steps taken so far (0 = the start point).
    """

    x: Tensor
    index: Tensor
    iteration: int

    def select(self, per_sample: Tensor) -> Tensor:
        """Rows of a full-batch per-sample tensor (``B x ...``) for the active samples."""
        return per_sample[self.index.to(per_sample.device)]


@dataclass
class Evaluation:
    """What ``loss_fn`` computed at an iterate (one forward pass).

    Attributes:
        loss: ``B_active`` per-sample losses to minimise (differentiable w.r.t. ``it.x``).
        logits: ``B_active x N`` classifier logits, when the loss computed them.
        extras: other per-sample tensors (e.g. ``'map'``, ``'map_distance'``).
    """

    loss: Tensor
    logits: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


LossFn = Callable[[Iterate], "Tensor | Evaluation"]
CriterionFn = Callable[[Iterate, Evaluation], Tensor]
#: ``stop_fn(it, evaluation, succeeded, score) -> B_active`` bool: the active samples that are done after this
#: evaluation (``succeeded`` and ``score`` are what the engine recorded for them, ``B_active`` each)
StopFn = Callable[[Iterate, Evaluation, Tensor, Tensor], Tensor]
#: ``rule(grad, index) -> direction``: the unit step of the active rows ``index`` (``B_active x C x H x W``)
#: from their loss gradient; ``None`` in the engine means :func:`step_direction` (sign / L2-normalised)
StepRule = Callable[[Tensor, Tensor], Tensor]


def _per_sample(value: float | Tensor, index: Tensor, like: Tensor) -> Tensor | float:
    """A float, or the active rows of a ``B`` tensor shaped ``B_active x 1 x 1 x 1``."""
    if isinstance(value, Tensor):
        return value.to(like.device, like.dtype)[index].view(-1, *([1] * (like.dim() - 1)))
    return value


def _sample_norms(t: Tensor) -> Tensor:
    """Per-sample L2 norms of ``B x ...`` shaped ``B x 1 x ... x 1``."""
    return t.flatten(1).norm(dim=1).clamp(min=_TINY).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: Tensor, x: Tensor, epsilon: float | Tensor, norm: Norm) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``epsilon`` around ``x``, then onto [0, 1].

    Clamping to [0, 1] after the ball projection only shrinks each coordinate of
    the perturbation (``x`` is in [0, 1]), so the result lies in both sets.
    ``epsilon`` is a float or a tensor broadcastable to ``x`` (``B x 1 x 1 x 1``).
    """
    delta = x_adv - x
    if norm == "linf":
        radius = torch.as_tensor(epsilon, dtype=x.dtype, device=x.device)
        delta = torch.maximum(torch.minimum(delta, radius), -radius)
    else:
        delta = delta * torch.clamp(epsilon / _sample_norms(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def step_direction(grad: Tensor, norm: Norm) -> Tensor:
    """Steepest-descent direction of unit size: sign (L_inf) or grad / ||grad||_2 per sample (L2)."""
    return grad.sign() if norm == "linf" else grad / _sample_norms(grad)


def random_start_point(x: Tensor, epsilon: float | Tensor, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A uniform random point of the ``norm`` ball around ``x``, clamped to [0, 1].

    ``epsilon`` is a float or a tensor broadcastable to ``x`` (``B x 1 x 1 x 1``).

    Noise is drawn on the generator's device (CPU by default) and moved to ``x``,
    so the same seed gives the same start on every device.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if norm == "linf":
        unit = torch.rand(x.shape, generator=generator, device=gen_device, dtype=torch.float64) * 2 - 1
    else:
        direction = torch.randn(x.shape, generator=generator, device=gen_device, dtype=torch.float64)
        radius = torch.rand(x.shape[0], generator=generator, device=gen_device, dtype=torch.float64)
        radius = radius.pow(1.0 / x[0].numel()).view(-1, *([1] * (x.dim() - 1)))
        unit = direction / _sample_norms(direction) * radius
    return project(x + unit.to(x) * epsilon, x, epsilon, norm)


def _check_engine_args(x: Tensor, epsilon: float | Tensor, step_size: float | Tensor, steps: int, norm: str,
                       step_weights: Tensor | None, x_init: Tensor | None, patience: int) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    if steps < 0:
        raise UserError(f"steps must be >= 0, got {steps}")
    if patience < 0:
        raise UserError(f"patience must be >= 0, got {patience}")
    for name, value in (("epsilon", epsilon), ("step_size", step_size)):
        if isinstance(value, Tensor):
            if value.shape != (x.shape[0],) or bool((value < 0).any()):
                raise UserError(f"{name} must be a float or a non-negative tensor with one value per image")
        elif value < 0:
            raise UserError(f"{name} must be non-negative, got {value}")
    if step_weights is not None and (
        step_weights.dim() != 4 or step_weights.shape[0] != x.shape[0] or step_weights.shape[1] not in (1, x.shape[1])
        or step_weights.shape[2:] != x.shape[2:]
    ):
        raise UserError(f"step_weights must be B x 1|C x H x W for images {tuple(x.shape)}, got {tuple(step_weights.shape)}")
    if x_init is not None and x_init.shape != x.shape:
        raise UserError(f"x_init must have the images' shape {tuple(x.shape)}, got {tuple(x_init.shape)}")


def projected_gradient_descent(
    x: Tensor,
    loss_fn: LossFn,
    *,
    success_fn: CriterionFn,
    epsilon: float | Tensor,
    step_size: float | Tensor,
    steps: int,
    norm: Norm = "linf",
    score_fn: CriterionFn | None = None,
    step_weights: Tensor | None = None,
    x_init: Tensor | None = None,
    random_start: bool = False,
    early_stop: bool = False,
    patience: int = 0,
    generator: torch.Generator | None = None,
    step_rule: StepRule | None = None,
    stop_fn: StopFn | None = None,
    progress: bool = False,
    description: str = "pgd",
) -> Perturbation:
    """Minimise a per-sample loss by projected (sign or L2-normalised) gradient steps.

    Each iteration ``t = 0 .. steps`` evaluates ``loss_fn`` at the current
    iterate of every active sample, records success and the best iterate, then
    (unless ``t == steps``) takes one step
    ``x <- Proj(x - step_size * step_weights * direction(grad loss))`` where the
    projection is onto the ``norm`` ball of radius ``epsilon`` around ``x`` *and*
    onto [0, 1].

    Best iterate, per sample: among the iterates where ``success_fn`` holds, the
    one with the lowest ``score_fn``; ties keep the earlier one. Without a
    ``score_fn`` the score is the loss itself, so plain PGD keeps the successful
    iterate with the highest target-class confidence (targeted CE) or lowest
    true-class confidence (untargeted). A sample that never succeeds returns its
    last iterate with score ``inf``.

    Early stop, per sample: a sample is *done* once it has succeeded and its best
    score has not improved for ``patience`` evaluations (``patience=0``: done at
    its first success). With ``early_stop`` a done sample is no longer evaluated
    or updated, and the loop ends when all samples are done; without it every
    sample runs all ``steps``.

    Args:
        x: ``B x C x H x W`` clean images in [0, 1] (centre of the ball).
        loss_fn: ``loss_fn(it) -> B_active`` losses or an :class:`Evaluation`.
        success_fn: ``success_fn(it, evaluation) -> B_active`` bool.
        epsilon: ball radius (float or ``B`` tensor), on the [0, 1] pixel scale.
        step_size: step length (float or ``B`` tensor); per-coordinate for L_inf,
            L2 length of the step for L2.
        steps: maximum number of gradient steps.
        norm: ``'linf'`` (sign steps) or ``'l2'`` (normalised-gradient steps).
        score_fn: ``score_fn(it, evaluation) -> B_active``, lower is better.
        step_weights: ``B x 1|C x H x W`` multiplier of the unit step (AdvEdge).
        x_init: start point instead of ``x`` (e.g. the result of a warm-start
            stage); it is projected onto the constraint set first.
        random_start: add uniform noise from the ball to the start point.
        early_stop: freeze samples that are done (see above).
        patience: evaluations without improvement before a successful sample is done.
        generator: randomness of the random start (CPU generator recommended).
        step_rule: ``rule(grad, index) -> direction`` replacing the plain sign / L2
            direction (e.g. MI-FGSM's momentum, :class:`idls.attacks.mifgsm.Momentum`).
        stop_fn: ``stop_fn(it, evaluation, succeeded, score) -> B_active`` bool, samples done after this
            evaluation (see above); called after the best iterate is recorded.
        progress: show a progress bar.
        description: the bar's label.

    Returns:
        :class:`~idls.attacks.base.Perturbation` with ``x_adv`` (best or last
        iterates), ``success`` (by ``success_fn`` at the returned iterate),
        ``score`` (``inf`` if never successful), ``iterations_to_success`` (first
        successful step count, -1 never), ``iterations_run`` and ``extras['evaluations']``
        (``B`` long: the evaluations of ``loss_fn`` each sample took part in, each one forward and, but
        for a sample's last, one backward pass).
    """
    _check_engine_args(x, epsilon, step_size, steps, norm, step_weights, x_init, patience)
    x = x.detach()
    batch = x.shape[0]
    device = x.device
    radius = _as_broadcast(epsilon, x)
    start = x if x_init is None else project(x_init.detach().to(x), x, radius, norm)
    if random_start:
        start = project(random_start_point(start, radius, norm, generator), x, radius, norm)
    x_adv = start.clone()
    tracker = BestIterate(x_adv)
    stale = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    evaluations = torch.zeros(batch, dtype=torch.long, device=device)
    freeze = early_stop or stop_fn is not None
    everyone = torch.arange(batch, device=device)
    iterations_run = 0

    with flush_denormal(), progress_bar(total=steps, desc=description, disable=not progress, leave=False) as bar:
        for t in range(steps + 1):
            index = (~done).nonzero().flatten() if freeze else everyone
            whole = index.numel() == batch
            x_act = (x_adv if whole else x_adv[index]).detach().requires_grad_(True)
            it = Iterate(x=x_act, index=index, iteration=t)
            with torch.enable_grad():
                evaluation = loss_fn(it)
            if not isinstance(evaluation, Evaluation):
                evaluation = Evaluation(loss=evaluation)
            if evaluation.loss.shape != (index.numel(),):
                raise ValueError(f"loss_fn must return one loss per active sample ({index.numel()}), "
                                 f"got shape {tuple(evaluation.loss.shape)}")
            # success and score may need autograd themselves (e.g. a gradient map of the real model for selection)
            succeeded = success_fn(it, evaluation).detach().to(device=device, dtype=torch.bool)
            score = (score_fn(it, evaluation) if score_fn is not None else evaluation.loss).detach().to(device).float()
            with torch.no_grad():
                evaluations[index] += 1
                improved = tracker.update(index, StepOutcome(evaluation.loss, x_act, succeeded, score), t)
                stale[index] = torch.where(improved, torch.zeros_like(index), stale[index] + 1)
                if early_stop:
                    done[index] = (tracker.first_success[index] >= 0) & (stale[index] >= patience)
                if stop_fn is not None:
                    stopped = stop_fn(it, evaluation, succeeded, score)
                    done[index] |= stopped.detach().to(device=device, dtype=torch.bool)
            if progress:
                bar.set_postfix(success=f"{float((tracker.first_success >= 0).float().mean()):.2f}", refresh=False)
            if t == steps or (freeze and bool(done.all())):
                break
            (grad,) = torch.autograd.grad(evaluation.loss.sum(), x_act)
            with torch.no_grad():
                direction = step_direction(grad, norm) if step_rule is None else step_rule(grad, index)
                step = direction * _per_sample(step_size, index, x_act)
                if step_weights is not None:
                    step = step * step_weights.to(x_act)[index]
                x_new = project(x_act.detach() - step, x[index], _per_sample(epsilon, index, x_act), norm)
                if freeze:  # samples that became done at this evaluation keep their iterate
                    x_new = torch.where(done[index].view(-1, 1, 1, 1), x_act.detach(), x_new)
                if whole:
                    x_adv = x_new
                else:
                    x_adv[index] = x_new
            iterations_run = t + 1
            bar.update(1)

    return tracker.perturbation(iterations_run, {"evaluations": evaluations})


def _as_broadcast(value: float | Tensor, like: Tensor) -> float | Tensor:
    """A ``B`` tensor reshaped to ``B x 1 x 1 x 1`` (floats pass through)."""
    if isinstance(value, Tensor):
        return value.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return value


# ---------------------------------------------------------------------------------
# The PGD attack
# ---------------------------------------------------------------------------------

DEFAULT_EPSILON = {"linf": 8 / 255, "l2": 0.5}
DEFAULT_STEPS = 100


@dataclass(frozen=True, eq=False, kw_only=True)
class PGDOptions(AttackOptions):
    """Options of :class:`PGD` (defaults: docs/design.md §4)."""

    epsilon: float | None = option(None, "radius of the ball on the [0, 1] pixel scale (default 8/255 for linf, "
                                         "0.5 for l2)")
    step_size: float | None = option(None, "step per iteration (default 1/255 for linf, epsilon / 10 for l2)")
    steps: int = option(DEFAULT_STEPS, "maximum number of steps")
    norm: str = option("linf", "'linf' (sign steps) or 'l2' (normalised-gradient steps)")
    random_start: bool = option(False, "start from a uniform random point of the ball")
    early_stop: bool = option(False, "stop each sample once it has succeeded and stopped improving")
    patience: int = option(0, "evaluations without a lower loss before a successful sample stops (early_stop)")

    def check(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        check_non_negative(steps=self.steps, patience=self.patience)
        self._set("epsilon", float(DEFAULT_EPSILON[self.norm] if self.epsilon is None else self.epsilon))
        self._set("step_size", float(self.default_step_size() if self.step_size is None else self.step_size))
        check_non_negative(epsilon=self.epsilon, step_size=self.step_size)

    def default_step_size(self) -> float:
        return 1 / 255 if self.norm == "linf" else self.epsilon / 10


@ATTACKS.register("pgd")
class PGD(Attack):
    """PGD on the cross-entropy (Madry et al. 2018) with correct per-sample best-iterate tracking.

    Defaults (docs/design.md §4): L_inf ball 8/255, sign steps of 1/255, at most 100
    steps, targeted at seeded random wrong classes, no random start, and all
    steps run (the papers' protocol: each sample keeps its successful iterate
    with the lowest loss, i.e. the highest target confidence). L2: epsilon 0.5,
    step epsilon / 10. ``early_stop=True`` stops each sample at its first
    success (after ``patience`` steps without improvement) - much faster, but
    the perturbation is then as small as the attack could make it.
    Options: :class:`PGDOptions` (``idls options pgd``).
    """

    name = "pgd"
    Options = PGDOptions
    joint_table = "pgd"
    joint_kind = "steps"
    epsilon: float
    step_size: float
    steps: int
    norm: Norm
    random_start: bool
    early_stop: bool
    patience: int

    def threat(self) -> LpBall:
        return LpBall(self.norm, self.epsilon)

    def step_rule(self) -> StepRule | None:
        """A fresh step rule for one run (``None``: the engine's sign / L2-normalised step)."""
        return None

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        targeted = targets is not None
        classes = targets if targeted else labels

        def loss_fn(it: Iterate) -> Evaluation:
            logits = classifier(it.x)
            return Evaluation(prediction_loss(logits, it.select(classes), targeted=targeted), logits)

        def success_fn(it: Iterate, evaluation: Evaluation) -> Tensor:
            if targeted:
                return metrics.success(evaluation.logits, target=it.select(classes))
            return metrics.success(evaluation.logits, label=it.select(classes))

        return projected_gradient_descent(
            x,
            loss_fn,
            success_fn=success_fn,
            epsilon=self.epsilon,
            step_size=self.step_size,
            steps=self.steps,
            norm=self.norm,
            random_start=self.random_start,
            early_stop=self.early_stop,
            patience=self.patience,
            generator=self.generator(),
            step_rule=self.step_rule(),
            progress=self.progress,
            description=f"{self.name} ({self.mode.value})",
        )


__all__ = [
    "StepRule",
    "StopFn",
    "DEFAULT_EPSILON",
    "DEFAULT_STEPS",
    "Evaluation",
    "Iterate",
    "NORMS",
    "PGD",
    "PGDOptions",
    "project",
    "projected_gradient_descent",
    "random_start_point",
    "step_direction",
]
