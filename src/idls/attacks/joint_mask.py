"""ADV² against MASK: the bilevel attack (paper 001 §3.5-3.6, Algorithm 1; docs/design.md §4).

MASK's map is itself the result of an optimisation, ``m*(x) = argmin_m l_map(m; x)``,
so the attack alternates between the image and a running estimate of the mask.
After a warm start of plain PGD steps, each iteration (all samples batched):

1. *prediction step*: ``x <- Proj(x - alpha * w * sign(grad_x CE(f(x), y_t)))``
   (``alpha`` = ``joint_step_size``, by default the attack's ``step_size``);
2. *inner steps*: ``inner_steps`` Adam steps of MASK on the per-sample mask
   estimate (:class:`~idls.interpreters.mask.MaskOptimizer`, explaining y_t);
3. *interpretation direction* ``d = w * sign(grad_x l_int)`` with ``l_int`` =
   the *look-ahead distance* (``lookahead_steps`` differentiable steps from the
   estimate, :func:`~idls.interpreters.mask.unrolled_mask_steps`, one at a time;
   the mean over the look-ahead maps of their mean squared error to m_t) plus
   ``region_weight`` x the *region contrast* (:func:`region_contrast`: deleting
   m_t's region should remove y_t, deleting the rest should keep it);
4. *bisection*, per sample: the largest step ``s`` in ``[0, max_step]`` such that
   ``Proj(x - s d)`` keeps the target's logit margin (target minus best other)
   at least ``margin``; each sample gets its own ``s`` (:func:`bisect_step_sizes`);
5. every ``reset_every`` iterations (and at the last) the estimate is *reset* to
   a fresh MASK run on the current image (:meth:`MaskInterpreter.optimize`, whose
   Adam moments the inner steps then continue): that is the real interpreter's
   map, so these are also the iterations whose iterates are candidates for the
   best one (per sample: successful, smallest map L1 to m_t).

``w`` are the AdvEdge weights (1 for ADV²). The directions are sign steps, so
lambda only scales a gradient whose sign is taken: the balance between the two
goals is set by ``max_step`` and ``margin``, not by ``lam``.

Why the region term. The look-ahead alone only sees where the current mask
estimate moves next, while the real map restarts from "everything deleted";
on small masks it stalls well short of the target. The region contrast states
the fixed point MASK looks for directly, and the two together are what reach
the benchmark's quality (the variant comparison and the look-ahead step counts
are recorded in docs/notes/measured.md; current numbers in docs/benchmarks.md).
MASK's jitter makes single runs noisy, so compare variants on the same batches
(``benchmarks/joint_quality.py`` stores per-image results for that).

On C&W / StAdv (:class:`MaskJointHooks`) steps 2-3 and 5 run inside the
framework's evaluation: lambda times ``l_int`` is its extra loss, Adam replaces
the sign steps and the bisection.

Cost per iteration, in forward+backward passes of the classifier: 1 (prediction)
+ ``inner_steps`` + a few per look-ahead step (double back-propagation) + 2 (region
contrast, a batch of 2B) + ``bisection_steps`` forwards (~1/3 each) + one forward;
plus a full MASK run per reset (``iterations / reset_every`` per iteration).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from idls import metrics
from idls.attacks.base import Perturbation, flush_denormal
from idls.attacks.cw import BestIterate, StepOutcome, margin
from idls.attacks.defaults import JointDefaults
from idls.attacks.joint_objective import LambdaSchedule, combine_first_success, map_mse, warm_start_pgd
from idls.attacks.pgd import Evaluation, Iterate, StepRule, project
from idls.interpreters import Interpreter
from idls.interpreters.mask import MaskConfig, MaskOptimizer, gaussian_blur, perturb, unrolled_mask_steps
from idls.progress import progress_bar
from idls.system import Classifier


def bisect_step_sizes(
    accept: Callable[[Tensor], Tensor],
    candidate: Callable[[Tensor], Tensor],
    max_step: float | Tensor,
    steps: int,
    batch: int,
    device: torch.device | str,
) -> Tensor:
    """Per-sample bisection for the largest acceptable step size.

    Assumes acceptance is monotone in the step (accepted up to some ``s*``).

    Args:
        accept: ``images B x ... -> B`` bool, whether a candidate is acceptable.
        candidate: ``step sizes B -> images B x ...`` (the point reached with each sample's step).
        max_step: upper end of the search (float or ``B`` tensor).
        steps: bisection steps (each one batched call of ``candidate`` and ``accept``).
        batch: number of samples B (the result's shape).
        device: device of the result.

    Returns:
        ``B`` step sizes: the lower end of each sample's final bracket (0 if even
        the smallest tried step failed; ``s*`` to within ``max_step / 2**steps``).
    """
    low = torch.zeros(batch, device=device)
    high = torch.as_tensor(max_step, dtype=low.dtype, device=device).expand(batch).clone()
    for _ in range(steps):
        middle = (low + high) / 2
        ok = accept(candidate(middle)).to(device=device, dtype=torch.bool)
        low = torch.where(ok, middle, low)
        high = torch.where(ok, high, middle)
    return low


def lookahead_distance(
    classifier: Classifier,
    x: Tensor,
    m: Tensor,
    targets: Tensor,
    target_maps: Tensor,
    interpreter: Interpreter,
    steps: int,
) -> Tensor:
    """Mean over ``steps`` look-ahead maps of their MSE to the target maps (``B``, differentiable in x)."""
    config = interpreter.config_for(tuple(x.shape[-2:]))
    x_blurred = gaussian_blur(x, config.blur_sigma)
    distances = []
    for _ in range(steps):
        m = unrolled_mask_steps(classifier, x, m, targets, 1, interpreter.lookahead_lr, config=config,
                                x_blurred=x_blurred)
        distances.append(map_mse(m, target_maps))
    return torch.stack(distances).mean(0)


def region_contrast(classifier: Classifier, x: Tensor, target_maps: Tensor, targets: Tensor,
                    config: MaskConfig) -> Tensor:
    """``p_t(phi(x; m_t)) - p_t(phi(x; 1 - m_t))`` per sample (``B``, differentiable in ``x``).

    ``phi`` is MASK's deletion (blend towards the blur where the map is 1, no jitter).
    Low when deleting the target map's region removes the target class *and*
    deleting everything else keeps it: then the smallest deletion that removes
    the class, which MASK searches for, is the target map's region. A first-order
    complement of the look-ahead, which only sees where the current mask estimate
    moves next (one batched forward of ``2B`` images).
    """
    x_blurred = gaussian_blur(x, config.blur_sigma)
    both = perturb(torch.cat([x, x]), torch.cat([x_blurred, x_blurred]), torch.cat([target_maps, 1 - target_maps]),
                   config)
    probabilities = classifier(both).softmax(1).gather(1, targets.repeat(2)[:, None])[:, 0]
    deleted, kept = probabilities.chunk(2)
    return deleted - kept


def interpretation_loss(classifier: Classifier, x: Tensor, m: Tensor, targets: Tensor, target_maps: Tensor,
                        interpreter: Interpreter, settings: JointDefaults) -> Tensor:
    """The MASK interpretation loss ``B``: look-ahead distance + ``region_weight`` x region contrast."""
    loss = lookahead_distance(classifier, x, m, targets, target_maps, interpreter, settings.lookahead_steps)
    if settings.region_weight:
        config = interpreter.config_for(tuple(x.shape[-2:]))
        loss = loss + settings.region_weight * region_contrast(classifier, x, target_maps, targets, config)
    return loss


def _weighted_direction(grad: Tensor, weights: Tensor | None, step_rule: StepRule | None = None) -> Tensor:
    """The unit step (sign, or the framework's step rule over the whole batch), times the edge weights."""
    if step_rule is None:
        direction = grad.sign()
    else:
        direction = step_rule(grad, torch.arange(grad.shape[0], device=grad.device))
    return direction if weights is None else direction * weights


class MaskJointHooks:
    """The MASK joint objective as ``evaluate`` / ``score`` hooks of the Adam frameworks (C&W, StAdv).

    Each evaluation of the active rows: ``inner_steps`` Adam steps of their mask
    estimates on the current images (no graph), then the look-ahead distance,
    times lambda, is the extra loss (the framework adds its own prediction
    loss). Every ``reset_every`` iterations the score runs the real MASK on the
    successful rows (their selection score, map L1 to m_t) and resets all active
    rows' estimates to fresh MASK maps. No bisection here: Adam's steps are small.
    """

    def __init__(self, classifier: Classifier, interpreter: Interpreter, x: Tensor, targets: Tensor,
                 target_maps: Tensor, settings: JointDefaults, total: int) -> None:
        self.classifier, self.interpreter = classifier, interpreter
        self.targets, self.target_maps, self.settings = targets, target_maps, settings
        self.schedule = LambdaSchedule(settings.schedule, settings.lam, total)
        self.inner = interpreter.optimize(x, targets)

    def _rows(self, index: Tensor) -> MaskOptimizer:
        return self.inner if index.numel() == self.inner.m.shape[0] else self.inner.select(index)

    def _write_back(self, sub: MaskOptimizer, index: Tensor) -> None:
        if sub is self.inner:
            return
        for name in ("m", "exp_avg", "exp_avg_sq", "steps"):
            setattr(self.inner, name, getattr(self.inner, name).index_copy(0, index, getattr(sub, name)))
        self.inner.generator.set_state(sub.generator.get_state())

    def evaluate(self, it: Iterate) -> Evaluation:
        targets, target_maps = it.select(self.targets), it.select(self.target_maps)
        logits = self.classifier(it.x)
        sub = self._rows(it.index)
        sub.step(it.x.detach(), targets, self.settings.inner_steps)
        loss = interpretation_loss(self.classifier, it.x, sub.m, targets, target_maps, self.interpreter,
                                   self.settings)
        self._write_back(sub, it.index)
        return Evaluation(loss=self.schedule(it.iteration) * loss, logits=logits,
                          extras={"interpretation_loss": loss.detach()})

    def score(self, it: Iterate, evaluation: Evaluation) -> Tensor:
        score = torch.full((it.x.shape[0],), math.inf, device=it.x.device)
        if it.iteration % self.settings.reset_every != 0:
            return score
        targets = it.select(self.targets)
        fresh = self.interpreter.optimize(it.x.detach(), targets)
        real = fresh.m
        if fresh.m.shape[0] == self.inner.m.shape[0]:
            self.inner = fresh
        else:
            self._write_back(fresh, it.index)
        ok = metrics.success(evaluation.logits.detach(), target=targets)
        return torch.where(ok, metrics.map_l1(real, it.select(self.target_maps)).float(), score)


def joint_mask_attack(
    attack,
    classifier: Classifier,
    interpreter: Interpreter,
    x: Tensor,
    targets: Tensor,
    target_maps: Tensor,
    settings: JointDefaults,
    warm_weights: Tensor | None,
    joint_weights: Tensor | None,
) -> Perturbation:
    """The bilevel ADV² attack on MASK for ``attack`` (an :class:`~idls.attacks.joint.ADV2`).

    Step frameworks (PGD, MI-FGSM): the loop of the module docstring, whose prediction
    steps use the framework's step rule. Adam frameworks (C&W, StAdv): :class:`MaskJointHooks`
    through ``attack``'s framework runner.
    """
    if attack.framework_class.joint_kind != "steps":
        return attack.run_adam_framework(
            classifier, x, targets, settings, warm_weights, joint_weights,
            lambda total, start: MaskJointHooks(classifier, interpreter, start, targets, target_maps, settings, total),
        )
    epsilon, alpha = attack.epsilon, attack.step_size
    joint_alpha = alpha if settings.joint_step_size is None else settings.joint_step_size
    step_rule = attack.framework_attack().step_rule()  # the framework's prediction steps (PGD: sign)
    warm = warm_start_pgd(classifier, x, targets, epsilon=epsilon, step_size=alpha, steps=settings.warm_start,
                          step_weights=warm_weights, step_rule=step_rule, progress=attack.progress)
    x = x.detach()
    x_adv = warm.x_adv.detach().clone()
    batch = x.shape[0]
    everyone = torch.arange(batch, device=x.device)
    tracker = BestIterate(x_adv)
    done = torch.zeros(batch, dtype=torch.bool, device=x.device)
    schedule = LambdaSchedule(settings.schedule, settings.lam, settings.steps)

    def record(t: int, x_now: Tensor, real_maps: Tensor | None) -> None:
        with torch.no_grad():
            ok = metrics.success(classifier(x_now), target=targets)
        score = torch.full((batch,), math.inf, device=x.device)
        if real_maps is not None:
            score = metrics.map_l1(real_maps, target_maps).float()
        tracker.update(everyone, StepOutcome(loss=score, x_adv=x_now, succeeded=ok & ~done, score=score), t)

    def accept(images: Tensor) -> Tensor:
        with torch.no_grad():
            return margin(classifier(images), targets, targeted=True) <= -settings.margin

    inner = interpreter.optimize(x_adv, targets)
    record(0, x_adv, inner.m)
    iterations = 0
    with flush_denormal(), progress_bar(total=settings.steps, desc=f"{attack.name} (mask)",
                                        disable=not attack.progress, leave=False) as bar:
        for t in range(1, settings.steps + 1):
            frozen = done.view(-1, 1, 1, 1)
            # 1. prediction step
            x_req = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                ce = torch.nn.functional.cross_entropy(classifier(x_req), targets, reduction="sum")
                (grad,) = torch.autograd.grad(ce, x_req)
            moved = project(x_adv - joint_alpha * _weighted_direction(grad, joint_weights, step_rule), x, epsilon,
                            "linf")
            x_adv = torch.where(frozen, x_adv, moved).detach()
            # 2. inner MASK steps on the current image
            inner.step(x_adv, targets, settings.inner_steps)
            # 3. look-ahead: the interpretation direction
            x_req = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = interpretation_loss(classifier, x_req, inner.m, targets, target_maps, interpreter, settings)
                (grad,) = torch.autograd.grad(schedule(t) * loss.sum(), x_req)
            direction = _weighted_direction(grad, joint_weights)
            # 4. per-sample bisection on the step size
            start = x_adv

            def candidate(step: Tensor, start: Tensor = start, direction: Tensor = direction) -> Tensor:
                return project(start - step.view(-1, 1, 1, 1) * direction, x, epsilon, "linf")

            step = bisect_step_sizes(accept, candidate, settings.max_step, settings.bisection_steps, batch, x.device)
            x_adv = torch.where(frozen, x_adv, candidate(step)).detach()
            # 5. reset = real map = selection
            real = None
            if t % settings.reset_every == 0 or t == settings.steps:
                inner = interpreter.optimize(x_adv, targets)  # the real map, its Adam state continued
                real = inner.m
            record(t, x_adv, real)
            iterations = t
            bar.update(1)
            if attack.stop_distance is not None and real is not None:
                done = done | (tracker.score <= attack.stop_distance)
                if bool(done.all()):
                    break
    outcome = tracker.perturbation(iterations)
    outcome.iterations_to_success = combine_first_success(warm.iterations_to_success, outcome.iterations_to_success,
                                                          settings.warm_start)
    outcome.iterations_run += warm.iterations_run
    return outcome


__all__ = ["bisect_step_sizes", "joint_mask_attack", "lookahead_distance"]
