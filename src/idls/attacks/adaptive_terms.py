"""Extra terms of the adaptive joint attacks (:mod:`idls.attacks.adaptive`) and Algorithm 2's first stage.

Each term is an :class:`~idls.attacks.joint_objective.ExtraTerm`: ADV²'s joint
objective adds its per-sample ``loss`` at every evaluation and lets it adjust the
best-iterate ``score``.

- :func:`squeezed_space_pgd`: paper 001 Algorithm 2, line 1 - PGD over the
  squeezed benign image ``psi(x0)`` on the squeezer's grid, giving ``x+``.
- :class:`ProbabilityMatch`: Algorithm 2, line 2 - ``w * ||softmax f(x) - softmax f(x+)||_1``.
- :class:`SqueezedAgreement`: the smoothing squeezers' ``l_sqz`` - ``w * CE(softmax f(x), f(psi(x)))``.
- :class:`EnsembleTerm`: the interpretation loss of further interpreters (and a
  detector's differentiable score), so that one ADV² run attacks them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from idls import metrics
from idls.attacks.joint_objective import EVALUATION_CHUNK, LambdaSchedule, map_mse
from idls.attacks.pgd import Evaluation, Iterate
from idls.interpreters import Interpreter
from idls.optim import BestIterate, Perturbation, StepOutcome, flush_denormal
from idls.system import Classifier
from idls.transforms import InputTransform


# ---------------------------------------------------------------------------------
# Feature squeezing: quantising squeezers (bit depth)
# ---------------------------------------------------------------------------------
def squeeze_l1(classifier: Classifier, squeezer: InputTransform, x: Tensor) -> Tensor:
    """Feature squeezing's score ``B``: ``||softmax f(x) - softmax f(psi(x))||_1`` of images ``B x C x H x W``."""
    with torch.no_grad():
        return (classifier(x).softmax(1) - classifier(squeezer(x)).softmax(1)).abs().sum(1)


def squeezed_space_pgd(classifier: Classifier, squeezer: InputTransform, x: Tensor, targets: Tensor, *,
                       epsilon: float, steps: int) -> Perturbation:
    """Algorithm 2, line 1: targeted PGD over ``psi(x0)`` that stays on the squeezer's grid.

    The search set is ``psi(B_eps(x0))``, the squeezed images of the attack's own
    ball: per pixel, the grid values from ``psi(x0 - eps)`` to ``psi(x0 + eps)``
    (``psi`` is monotone). So every ``x+`` is the squeezed image of a point of the
    ball, the point that stage (ii) has to imitate. Each step moves a pixel by one
    grid level against the sign of the cross-entropy gradient (the paper's
    ``alpha = 1/2^i`` on an ``i``-bit grid of spacing ``1/(2^i - 1)`` rounds to
    exactly one level for ``i >= 2``; for ``i = 1`` 1/2 would tie, so the step is
    one level there too) and re-clamps to the set. Per sample the successful
    iterate with the lowest cross-entropy is kept (a sample that never reaches the
    target keeps its last iterate).

    Args:
        classifier: the attacked model (eval mode).
        squeezer: a transform with ``quantises = True`` and ``levels`` (grid values ``k / levels``).
        x: ``B x C x H x W`` benign images ``x0`` in [0, 1].
        targets: ``B`` target classes.
        epsilon: L_inf radius of the attack's ball.
        steps: PGD steps (the start ``psi(x0)`` is evaluated too).

    Returns:
        :class:`~idls.optim.Perturbation` whose ``x_adv`` ``B x C x H x W`` is ``x+`` (on the grid),
        ``success`` ``B`` bool (``x+`` is classified as the target).
    """
    level = 1.0 / float(squeezer.levels)
    psi = squeezer.transform
    x = x.detach()
    with torch.no_grad():
        low, high = psi((x - epsilon).clamp(0.0, 1.0)), psi((x + epsilon).clamp(0.0, 1.0))
        current = psi(x)
    tracker = BestIterate(current)
    everyone = torch.arange(x.shape[0], device=x.device)
    with flush_denormal():
        for t in range(steps + 1):
            z = current.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = classifier(z)
                loss = F.cross_entropy(logits, targets, reduction="none")
            ok = logits.detach().argmax(1) == targets
            tracker.update(everyone, StepOutcome(loss.detach(), z.detach(), ok, loss.detach()), t)
            if t == steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), z)
            with torch.no_grad():
                current = torch.minimum(torch.maximum(psi(z - level * grad.sign()), low), high)
    return tracker.perturbation(steps)


def ball_point_of(x_plus: Tensor, x: Tensor, epsilon: float) -> Tensor:
    """The point of ``B_eps(x)`` nearest ``x_plus`` (both ``B x C x H x W``).

    When ``x_plus`` lies in ``psi(B_eps(x))`` for a monotone ``psi``, its squeezed image is
    ``x_plus``: some point of the ball squeezes to it, and the nearest one lies between that
    point and ``x_plus``.
    """
    return torch.minimum(torch.maximum(x_plus, x - epsilon), x + epsilon).clamp(0.0, 1.0)


class ProbabilityMatch:
    """Algorithm 2, line 2: ``weight * ||softmax f(x) - p+||_1`` with ``p+ = softmax f(x+)`` fixed.

    Uses the logits of ADV²'s own pass: no extra forward.

    Args:
        reference: ``B x N`` probabilities ``p+``.
        weight: lambda.
        start: ``B x C x H x W`` start of the warm start (e.g. :func:`ball_point_of` ``x+``), or ``None``.
    """

    def __init__(self, reference: Tensor, weight: float, start: Tensor | None = None) -> None:
        self.reference = reference.detach()
        self.weight = float(weight)
        self.start = start

    def loss(self, it: Iterate, logits: Tensor, extras: dict[str, Tensor]) -> Tensor:
        distance = (logits.softmax(1) - it.select(self.reference)).abs().sum(1)
        extras["squeeze_match"] = distance.detach()
        return self.weight * distance

    def score(self, it: Iterate, evaluation: Evaluation, base: Tensor) -> Tensor:
        return base


# ---------------------------------------------------------------------------------
# Feature squeezing: smoothing squeezers (median, non-local means)
# ---------------------------------------------------------------------------------
class SqueezedAgreement:
    """The smoothing squeezers' ``l_sqz``: ``weight * CE(softmax f(x), f(psi(x)))``.

    The target distribution is the prediction of the unsqueezed iterate ``x``
    (detached): the prediction loss already drives ``f(x)`` to the target class, and
    the detector compares the two predictions, so the squeezed prediction is pulled
    towards the unsqueezed one rather than the other way round (which would fight the
    prediction loss). The gradient reaches ``x`` through ``psi``'s ``forward`` (the
    transform's own gradient, or BPDA's identity for non-differentiable ones). Cost:
    one forward + backward of the classifier on ``psi(x)`` per exact evaluation.

    With ``every = k > 1`` the term is evaluated exactly at every ``k``-th iteration
    only; in between, each sample's term is its first-order model around the last
    exact evaluation: the stored value, with the stored gradient ``g`` (``<g, x>`` in
    the graph, so the step still feels the squeezer at the cost of one product).
    That spreads the extra pass over ``k`` steps (per-iteration cost ``1 + 1/k``
    classifier passes on top of ADV²'s).
    """

    start: Tensor | None = None

    def __init__(self, classifier: Classifier, squeezer: InputTransform, weight: float, *, every: int = 1,
                 batch: int | None = None) -> None:
        self.classifier = classifier
        self.squeezer = squeezer
        self.weight = float(weight)
        self.every = int(every)
        self.batch = batch
        self._gradient: Tensor | None = None  # B x C x H x W, the term's gradient at each sample's last exact evaluation
        self._cross_entropy: Tensor | None = None  # B, the unweighted term there
        self._known: Tensor | None = None  # B bool, samples with an exact evaluation

    def loss(self, it: Iterate, logits: Tensor, extras: dict[str, Tensor]) -> Tensor:
        amortised = self.every > 1 and self.batch is not None and torch.is_grad_enabled() and it.x.requires_grad
        if amortised and it.iteration % self.every != 0 and self._known is not None \
                and bool(self._known[it.index.to(self._known.device)].all()):
            index = it.index.to(self._known.device)
            extras["squeeze_agreement"] = self._cross_entropy[index]
            return _first_order(it.x, self._gradient[index], self.weight * self._cross_entropy[index])
        squeezed = self.classifier(self.squeezer(it.x))
        target = logits.detach().softmax(1)
        cross_entropy = -(target * squeezed.log_softmax(1)).sum(1)
        extras["squeeze_agreement"] = cross_entropy.detach()
        term = self.weight * cross_entropy
        if not amortised:
            return term
        (gradient,) = torch.autograd.grad(term.sum(), it.x)
        self._remember(it.index, cross_entropy.detach(), gradient)
        return _first_order(it.x, gradient, term.detach())

    def _remember(self, index: Tensor, cross_entropy: Tensor, gradient: Tensor) -> None:
        """Store the exact unweighted term ``B_active`` and the weighted term's gradient ``B_active x C x H x W``."""
        if self._gradient is None:
            self._gradient = gradient.new_zeros((self.batch, *gradient.shape[1:]))
            self._cross_entropy = cross_entropy.new_zeros(self.batch)
            self._known = torch.zeros(self.batch, dtype=torch.bool, device=gradient.device)
        rows = index.to(gradient.device)
        self._gradient[rows], self._cross_entropy[rows], self._known[rows] = gradient, cross_entropy, True

    def score(self, it: Iterate, evaluation: Evaluation, base: Tensor) -> Tensor:
        return base


def _first_order(x: Tensor, gradient: Tensor, value: Tensor) -> Tensor:
    """``B`` values ``value`` whose gradient w.r.t. ``x`` ``B x C x H x W`` is ``gradient``: ``<g, x>`` moved to ``value``."""
    linear = (gradient * x).flatten(1).sum(1)
    return linear + (value - linear).detach()


# ---------------------------------------------------------------------------------
# Interpreter ensembles (and a differentiable detector)
# ---------------------------------------------------------------------------------
@dataclass
class Member:
    """A further attacked interpreter of :class:`EnsembleTerm`.

    Attributes:
        name: its label in the results (``map_distance/<name>``).
        real: the interpreter (real maps, for selection and the final distances).
        view: its :meth:`~idls.interpreters.base.Interpreter.for_joint_attack` view (in-graph maps).
        target_maps: ``B x h x w`` its target maps (its benign maps by default).
        schedule: its lambda over the joint iterations (its own family's row of the defaults table).
        encoder_weight: RTS encoder cross-entropy weight of its row.
        select_every: period of its real-map evaluations where its in-graph map is a surrogate.
    """

    name: str
    real: Interpreter
    view: Interpreter
    target_maps: Tensor
    schedule: LambdaSchedule
    encoder_weight: float = 0.0
    select_every: int = 1


class EnsembleTerm:
    """``sum_k lambda_k(t) * MSE(g_k(x), m_k) + detector_weight * s(x)`` over further interpreters ``g_k``.

    The best-iterate score becomes the *sum* of the real maps' L1 distances over all
    attacked interpreters (ADV²'s own plus every member's). A member whose in-graph map
    is a surrogate (Grad, IG) costs a real attribution, so it is evaluated every
    ``select_every`` iterations (and at ``last_iteration``), on the samples that succeed;
    other iterates are then no candidates.

    Args:
        targets: ``B`` target classes (the maps explain them).
        members: the further interpreters.
        detector: a fitted detector with ``differentiable_score`` (``score(x, create_graph=True)``
            gives ``B`` scores, higher = more adversarial), or ``None``.
        detector_weight: its weight in the loss.
        last_iteration: iteration of the final iterate (always a candidate), ``None``: none forced.
    """

    start: Tensor | None = None

    def __init__(self, targets: Tensor, members: list[Member], detector: Any = None, detector_weight: float = 0.0,
                 last_iteration: int | None = None) -> None:
        self.targets = targets
        self.members = members
        self.detector = detector
        self.detector_weight = float(detector_weight)
        self.last_iteration = last_iteration

    def loss(self, it: Iterate, logits: Tensor, extras: dict[str, Tensor]) -> Tensor:
        classes = it.select(self.targets)
        total = logits.new_zeros(it.x.shape[0])
        for member in self.members:
            out = member.view.joint_forward(it.x, classes)
            distance = map_mse(out.maps, it.select(member.target_maps))
            extras[f"map/{member.name}"] = out.maps.detach()
            total = total + member.schedule(it.iteration) * distance
            if member.encoder_weight and out.encoder_logits is not None:
                total = total + member.encoder_weight * F.cross_entropy(out.encoder_logits, classes, reduction="none")
        if self.detector is not None and self.detector_weight:
            scores = self.detector.score(it.x, create_graph=True)
            extras["detector_score"] = scores.detach()
            total = total + self.detector_weight * scores
        return total

    def score(self, it: Iterate, evaluation: Evaluation, base: Tensor) -> Tensor:
        score = base.clone()
        rows = torch.isfinite(score).nonzero().flatten()
        classes = it.select(self.targets)
        for member in self.members:
            if rows.numel() == 0:
                break
            targets = it.select(member.target_maps)[rows]
            if member.view.joint_map_is_exact:
                distance = metrics.map_l1(evaluation.extras[f"map/{member.name}"][rows], targets).float()
            elif self._selects(member, it.iteration):
                ok = metrics.success(evaluation.logits.detach()[rows], target=classes[rows])
                maps = member.real.attribute_in_chunks(it.x.detach()[rows], classes[rows], EVALUATION_CHUNK)
                distance = torch.where(ok, metrics.map_l1(maps, targets).float(), torch.inf)
            else:
                score[rows] = torch.inf
                break
            score[rows] = score[rows] + distance.to(score.device)
            rows = rows[torch.isfinite(score[rows])]
        return score

    def _selects(self, member: Member, iteration: int) -> bool:
        if iteration % member.select_every == 0:
            return True
        return self.last_iteration is not None and iteration >= self.last_iteration


__all__ = [
    "EnsembleTerm",
    "Member",
    "ProbabilityMatch",
    "SqueezedAgreement",
    "ball_point_of",
    "squeeze_l1",
    "squeezed_space_pgd",
]
