"""The joint objective of ADV²-style attacks and its PGD driver, shared by every joint attack.

    minimise  l_prd(f(x*), y_t) + lambda(t) * l_int(g(x*), m_t)

:class:`JointObjective` computes loss, success and the best-iterate score at an
iterate from one :meth:`~idls.interpreters.base.Interpreter.joint_forward` pass
of the attacked interpreter; :func:`warm_start_pgd` and :func:`joint_pgd` run
it on the shared projected-gradient engine (with the framework's step rule).
The MASK bilevel loop (:mod:`idls.attacks.joint_mask`) and the attacks
(:mod:`idls.attacks.joint`) build on these pieces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from idls import metrics
from idls.attacks.base import Perturbation, prediction_loss
from idls.attacks.defaults import DEFAULT_CHECK_EVERY, GRAD_PHASES
from idls.attacks.joint_stopping import SampleStopper, StopRule
from idls.attacks.pgd import Evaluation, Iterate, StepRule, projected_gradient_descent
from idls.interpreters import Interpreter
from idls.system import Classifier

EVALUATION_CHUNK = 256


# ---------------------------------------------------------------------------------
# Loss pieces
# ---------------------------------------------------------------------------------
def map_mse(maps: Tensor, target: Tensor) -> Tensor:
    """Mean squared error ``B`` between maps ``B x h x w`` (the interpretation loss)."""
    return (maps - target).flatten(1).pow(2).mean(1)


def smoothed_cross_entropy(logits: Tensor, targets: Tensor, target_probability: float) -> Tensor:
    """Cross-entropy ``B`` towards soft labels: ``p`` on the target, ``(1 - p) / (N - 1)`` elsewhere.

    Paper 001 §3.6: keeps the prediction gradient alive where the plain
    cross-entropy saturates (GRAD). ``p = 1`` is the plain cross-entropy.
    """
    log_prob = logits.log_softmax(1)
    on_target = log_prob.gather(1, targets[:, None])[:, 0]
    elsewhere = log_prob.sum(1) - on_target
    others = (1 - target_probability) / max(logits.shape[1] - 1, 1)
    return -(target_probability * on_target + others * elsewhere)


@dataclass(frozen=True)
class LambdaSchedule:
    """``lambda(t)`` over ``total`` joint iterations (see :mod:`idls.attacks.defaults`).

    ``'ramp'``: ``c * (1 + t / total)`` (c -> 2c); ``'phases'``: c times the
    multiplier of the :data:`GRAD_PHASES` phase that contains ``t / total``;
    ``'constant'``: c. Iterations past ``total`` keep the last value.
    """

    kind: str
    c: float
    total: int
    phases: tuple[tuple[float, float], ...] = GRAD_PHASES

    def progress(self, iteration: int) -> float:
        return min(max(iteration, 0) / self.total, 1.0) if self.total > 0 else 1.0

    def __call__(self, iteration: int) -> float:
        share = self.progress(iteration)
        if self.kind == "ramp":
            return self.c * (1.0 + share)
        if self.kind == "phases":
            edge = 0.0
            for length, multiplier in self.phases:
                edge += length
                if share < edge:
                    return self.c * multiplier
            return self.c * self.phases[-1][1]
        return self.c


class ExtraTerm(Protocol):
    """An extra per-sample term of a joint objective (the adaptive attacks, :mod:`idls.attacks.adaptive`).

    ``loss`` is added to the joint loss at every evaluation (it may record
    ``B_active`` tensors in ``extras`` for its ``score``); ``score`` turns the
    objective's selection score ``B_active`` (real-map L1, ``inf`` where not
    evaluated) into the one the best iterate is chosen by; ``start`` (``B x C x H x W``
    or ``None``) is where the step frameworks' warm start begins instead of the
    benign images (it is projected onto the threat set first).
    """

    start: Tensor | None

    def loss(self, it: Iterate, logits: Tensor, extras: dict[str, Tensor]) -> Tensor:
        """``B_active`` loss at the iterate (``logits`` ``B_active x N`` of the same pass)."""
        ...

    def score(self, it: Iterate, evaluation: Evaluation, base: Tensor) -> Tensor:
        """``B_active`` selection score from the objective's own ``base`` score."""
        ...


class JointObjective:
    """Loss, success and selection score of a joint attack on one batch.

    Args:
        interpreter: the attacked interpreter as :meth:`~idls.interpreters.base.Interpreter.for_joint_attack`
            returns it (its ``joint_forward`` gives logits and maps in one pass).
        targets: ``B`` target classes (the interpreter explains these).
        target_maps: ``B x h x w`` target maps m_t.
        schedule: lambda over the joint iterations.
        include_prediction: add the PGD prediction loss (cross-entropy, with
            label smoothing if set); Adam frameworks supply their own.
        label_smoothing: ``(start, end)`` target probability over the joint steps, or None.
        encoder_weight: RTS encoder cross-entropy weight.
        select_every: real-map evaluation period (only matters where the in-graph map is not the real one).
        last_iteration: iteration number of the final iterate (always evaluated);
            ``None``: none is forced (Adam frameworks, which may stop early).
        extra: an :class:`ExtraTerm` added to the loss and the selection score (adaptive attacks);
            ``None``: ADV²'s objective alone.
    """

    def __init__(
        self,
        interpreter: Interpreter,
        targets: Tensor,
        target_maps: Tensor,
        schedule: LambdaSchedule,
        *,
        include_prediction: bool = True,
        label_smoothing: tuple[float, float] | None = None,
        encoder_weight: float = 0.0,
        select_every: int = 1,
        last_iteration: int | None = None,
        extra: ExtraTerm | None = None,
    ) -> None:
        self.interpreter = interpreter
        self.targets = targets
        self.target_maps = target_maps
        self.schedule = schedule
        self.include_prediction = include_prediction
        self.label_smoothing = label_smoothing
        self.encoder_weight = float(encoder_weight)
        self.select_every = max(1, int(select_every))
        self.last_iteration = last_iteration
        self.extra = extra

    def target_probability(self, iteration: int) -> float:
        start, end = self.label_smoothing or (1.0, 1.0)
        return start + (end - start) * self.schedule.progress(iteration)

    def evaluate(self, it: Iterate) -> Evaluation:
        """Per-sample loss ``B_active`` at the iterate (one ``joint_forward`` pass), with logits and map extras."""
        classes = it.select(self.targets)
        out = self.interpreter.joint_forward(it.x, classes)
        distance = map_mse(out.maps, it.select(self.target_maps))
        loss = self.schedule(it.iteration) * distance
        if self.include_prediction:
            if self.label_smoothing is None:
                loss = loss + prediction_loss(out.logits, classes, targeted=True)
            else:
                loss = loss + smoothed_cross_entropy(out.logits, classes, self.target_probability(it.iteration))
        if self.encoder_weight and out.encoder_logits is not None:
            loss = loss + self.encoder_weight * F.cross_entropy(out.encoder_logits, classes, reduction="none")
        extras = {"map": out.maps, "map_mse": distance.detach()}
        if self.extra is not None:
            loss = loss + self.extra.loss(it, out.logits, extras)
        return Evaluation(loss=loss, logits=out.logits, extras=extras)

    def success(self, it: Iterate, evaluation: Evaluation) -> Tensor:
        return metrics.success(evaluation.logits.detach(), target=it.select(self.targets))

    def selects_at(self, iteration: int) -> bool:
        """Whether iterates of this iteration are candidates for the best iterate."""
        if self.interpreter.joint_map_is_exact or iteration % self.select_every == 0:
            return True
        return self.last_iteration is not None and iteration >= self.last_iteration

    def score(self, it: Iterate, evaluation: Evaluation) -> Tensor:
        """Selection score ``B_active``, lower is better; ``inf`` where not evaluated.

        ADV²: the L1 distance of the real map to m_t; an :attr:`extra` term may change it.
        """
        score = self.map_score(it, evaluation)
        return score if self.extra is None else self.extra.score(it, evaluation, score)

    def map_score(self, it: Iterate, evaluation: Evaluation) -> Tensor:
        """L1 distance ``B_active`` of the real map to m_t; ``inf`` where not evaluated."""
        score = torch.full((it.x.shape[0],), math.inf, device=it.x.device)
        if not self.selects_at(it.iteration):
            return score
        if self.interpreter.joint_map_is_exact:
            return metrics.map_l1(evaluation.extras["map"].detach(), it.select(self.target_maps)).float()
        ok = self.success(it, evaluation)
        if bool(ok.any()):
            rows = ok.nonzero().flatten()
            classes = it.select(self.targets)[rows]
            maps = self.interpreter.attribute_in_chunks(it.x.detach()[rows], classes, EVALUATION_CHUNK)
            score[rows] = metrics.map_l1(maps, it.select(self.target_maps)[rows]).float()
        return score


# ---------------------------------------------------------------------------------
# PGD driver: warm start, joint phase with per-sample stopping
# ---------------------------------------------------------------------------------
def joint_pgd(
    x: Tensor,
    objective: JointObjective,
    *,
    x_init: Tensor | None,
    epsilon: float,
    step_size: float,
    steps: int,
    step_weights: Tensor | None = None,
    stop_rule: StopRule | None = None,
    step_rule: StepRule | None = None,
    progress: bool = False,
    description: str = "adv2",
) -> Perturbation:
    """Run the joint phase: one :func:`projected_gradient_descent` call with per-sample stopping.

    With a ``stop_rule`` that stops (:class:`~idls.attacks.joint_stopping.StopRule`),
    a sample that is done leaves the batch: later iterations run forward and
    backward on the still-running samples only, and the done sample returns its
    best iterate. The trajectory of a running sample does not depend on the others.
    A stateful ``step_rule`` (momentum) keeps full-batch rows.
    ``extras['evaluations']`` (``B`` long) counts the objective evaluations of each sample.
    """
    stopper = None
    if stop_rule is not None and stop_rule.stops:
        stopper = SampleStopper(stop_rule, objective.targets)
    return projected_gradient_descent(
        x, objective.evaluate, success_fn=objective.success, score_fn=objective.score, epsilon=epsilon,
        step_size=step_size, steps=steps, step_weights=step_weights, x_init=x_init, step_rule=step_rule,
        stop_fn=stopper, progress=progress, description=description,
    )


def warm_start_pgd(
    classifier: Classifier,
    x: Tensor,
    targets: Tensor,
    *,
    epsilon: float,
    step_size: float,
    steps: int,
    step_weights: Tensor | None = None,
    step_rule: StepRule | None = None,
    progress: bool = False,
    x_init: Tensor | None = None,
) -> Perturbation:
    """Plain targeted PGD (cross-entropy) for ``steps`` steps from ``x_init`` (default ``x``): the start of
    the joint phase."""

    def loss_fn(it: Iterate) -> Evaluation:
        logits = classifier(it.x)
        return Evaluation(prediction_loss(logits, it.select(targets), targeted=True), logits)

    return projected_gradient_descent(
        x, loss_fn, success_fn=lambda it, ev: metrics.success(ev.logits, target=it.select(targets)),
        epsilon=epsilon, step_size=step_size, steps=steps, step_weights=step_weights, step_rule=step_rule,
        x_init=x_init, progress=progress, description="warm start",
    )


def combine_first_success(warm: Tensor, joint: Tensor, warm_steps: int) -> Tensor:
    """Iterations to first success over warm start + joint phase (``B`` long, -1 never)."""
    later = torch.where(joint >= 0, joint + warm_steps, joint)
    return torch.where(warm >= 0, warm, later)


__all__ = [
    "DEFAULT_CHECK_EVERY",
    "EVALUATION_CHUNK",
    "ExtraTerm",
    "JointObjective",
    "LambdaSchedule",
    "StopRule",
    "combine_first_success",
    "joint_pgd",
    "map_mse",
    "smoothed_cross_entropy",
    "warm_start_pgd",
]
