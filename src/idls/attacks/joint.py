"""ADV²: attack the classifier and its interpreter at once (paper 001 §3, DESIGN §4).

    minimise  l_prd(f(x*), y_t) + lambda(t) * l_int(g(x*), m_t)   over the eps-ball around x

``l_prd`` is the framework's prediction loss (PGD: cross-entropy towards the
target y_t; C&W/StAdv: their margin loss), ``l_int`` the mean squared error
between the interpreter's map of the *target* class (the adversarial image will
be predicted as y_t, so that is the map a user will see) and the target map m_t
(default: the benign map of the true class, see :mod:`idls.attacks.target_maps`).

Per interpreter, an :class:`InterpreterAdapter` computes, in one pass where the
interpreter allows it, the logits and the differentiable map:

* CAM / Grad-CAM: features -> logits and the map (Grad-CAM double back-propagates);
* Grad / IG: the map of the *smooth-ReLU surrogate* (second derivatives of a
  ReLU network vanish), whose forward values equal the real model's;
* RTS: masks and encoder logits in one pass (:meth:`RTSInterpreter.attribute_and_logits`),
  plus ``encoder_weight`` x cross-entropy of the encoder logits towards y_t;
* MASK: the bilevel loop of :mod:`idls.attacks.joint_mask`.

Tricks (DESIGN §4): a warm start of plain PGD steps continued through ``x_init``;
a lambda schedule (:class:`LambdaSchedule`: CAM/RTS ramp c -> 2c, GRAD phases);
label smoothing of the target for GRAD (0.95 -> 0.99); per-sample best iterate =
among successful iterates, the smallest **L1 distance of the real interpreter's
map** to m_t. Where the map in the loss is not the real one (Grad/IG: surrogate)
the real map costs one extra forward + backward, so it is evaluated every
``select_every`` joint iterations (and at the last one) on the samples that
currently succeed; the other iterates are not candidates.

Frameworks: ``'pgd'`` (sign steps, :func:`~idls.attacks.pgd.projected_gradient_descent`),
``'cw'`` and ``'stadv'`` (Adam, through their ``optimise`` entry points: the
joint term is their extra loss, the map distance their score, edge weights
their perturbation / flow weights).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from idls import metrics
from idls.attacks.base import ATTACKS, Attack, Perturbation, create_attack, prediction_loss
from idls.attacks.defaults import FRAMEWORKS, GRAD_PHASES, JointDefaults, joint_defaults
from idls.attacks.pgd import Evaluation, Iterate, projected_gradient_descent
from idls.attacks.target_maps import TARGET_MAP_KINDS, resolve_target_maps
from idls.attacks.targets import TargetMode
from idls.errors import UserError
from idls.interpreters import Interpreter, create_interpreter, minmax_normalize
from idls.interpreters.cam import weighted_feature_sum
from idls.interpreters.grad import channel_max_pool, class_score, default_pool, normalize_magnitudes
from idls.system import Classifier, smooth_surrogate

DEFAULT_EPSILON = 8 / 255
DEFAULT_STEP_SIZE = 1 / 255
DEFAULT_CHECK_EVERY = 10
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


# ---------------------------------------------------------------------------------
# Interpreter adapters: logits + differentiable map in one pass
# ---------------------------------------------------------------------------------
@dataclass
class AdapterOutput:
    """Logits ``B x N``, differentiable maps ``B x h x w`` and, for RTS, the encoder logits."""

    logits: Tensor
    maps: Tensor
    encoder_logits: Tensor | None = None


class InterpreterAdapter:
    """Differentiable view of an interpreter for joint losses.

    Attributes:
        exact: the map in the loss is the real interpreter's map (no separate
            evaluation needed for the best-iterate choice).
    """

    exact: ClassVar[bool] = True

    def __init__(self, interpreter: Interpreter) -> None:
        self.interpreter = interpreter
        self.classifier: Classifier = interpreter.classifier

    def forward(self, x: Tensor, classes: Tensor) -> AdapterOutput:
        """Logits and maps of ``classes`` for images ``x`` (inside the autograd graph)."""
        raise NotImplementedError

    def real_maps(self, x: Tensor, classes: Tensor) -> Tensor:
        """The real interpreter's maps ``B x h x w`` (no graph), in chunks."""
        parts = [
            self.interpreter.attribute(xs, cs)
            for xs, cs in zip(x.detach().split(EVALUATION_CHUNK), classes.split(EVALUATION_CHUNK))
        ]
        return torch.cat(parts) if parts else x.new_zeros(0)


class CAMAdapter(InterpreterAdapter):
    """CAM: one forward gives the feature map A (-> the map) and the logits."""

    def forward(self, x: Tensor, classes: Tensor) -> AdapterOutput:
        features, logits = self.classifier.features_and_logits(x)
        cam = weighted_feature_sum(features, self.classifier.linear.weight[classes])
        return AdapterOutput(logits, minmax_normalize(cam))


class GradCAMAdapter(InterpreterAdapter):
    """Grad-CAM: channel weights = spatial mean of d logit_c / d A, differentiated again."""

    def forward(self, x: Tensor, classes: Tensor) -> AdapterOutput:
        features, logits = self.classifier.features_and_logits(x)
        score = class_score(logits, classes, "logit")
        (grad,) = torch.autograd.grad(score, features, create_graph=True)
        cam = torch.relu(weighted_feature_sum(features, grad.mean(dim=(2, 3))))
        return AdapterOutput(logits, normalize_magnitudes(cam))


def _surrogate_of(interpreter: Interpreter) -> Classifier:
    surrogate = getattr(interpreter, "surrogate", None)
    return surrogate if surrogate is not None else smooth_surrogate(interpreter.classifier)


class GradAdapter(InterpreterAdapter):
    """Grad: the map of the smooth-ReLU surrogate (same logits), double back-propagated."""

    exact = False

    def __init__(self, interpreter: Interpreter) -> None:
        super().__init__(interpreter)
        self.surrogate = _surrogate_of(interpreter)

    def forward(self, x: Tensor, classes: Tensor) -> AdapterOutput:
        logits = self.surrogate(x)
        score = class_score(logits, classes, getattr(self.interpreter, "loss", "cross_entropy"))
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
        pool = getattr(self.interpreter, "pool", None)
        pool = default_pool(x.shape[-2]) if pool is None else pool
        return AdapterOutput(logits, normalize_magnitudes(channel_max_pool(grad.abs(), pool)))


class GenericAdapter(InterpreterAdapter):
    """Any interpreter with a differentiable ``attribute`` (IG, user interpreters): logits from a
    separate forward. Interpreters that need curvature (``needs_smooth_surrogate``)
    run on a twin whose surrogate is set (the user's interpreter is not modified)."""

    def __init__(self, interpreter: Interpreter) -> None:
        super().__init__(interpreter)
        self.differentiable = interpreter
        if interpreter.needs_smooth_surrogate and getattr(interpreter, "surrogate", None) is None:
            twin = copy.deepcopy(interpreter, memo={id(interpreter.classifier): interpreter.classifier})
            twin.surrogate = smooth_surrogate(interpreter.classifier)
            self.differentiable = twin
        self.exact = not interpreter.needs_smooth_surrogate

    def forward(self, x: Tensor, classes: Tensor) -> AdapterOutput:
        return AdapterOutput(self.classifier(x), self.differentiable.attribute(x, classes, create_graph=True))


class RTSAdapter(InterpreterAdapter):
    """RTS: masks and encoder logits in one encoder pass (the encoder is the classifier)."""

    def forward(self, x: Tensor, classes: Tensor) -> AdapterOutput:
        out = self.interpreter.attribute_and_logits(x, classes, create_graph=True)
        return AdapterOutput(out.logits, out.mask, encoder_logits=out.logits)


ADAPTERS: dict[str, type[InterpreterAdapter]] = {
    "cam": CAMAdapter,
    "gradcam": GradCAMAdapter,
    "grad": GradAdapter,
    "rts": RTSAdapter,
}


def adapter_for(interpreter: Interpreter) -> InterpreterAdapter:
    """The adapter of an interpreter (by its registry name; others use :class:`GenericAdapter`)."""
    return ADAPTERS.get(interpreter.name, GenericAdapter)(interpreter)


# ---------------------------------------------------------------------------------
# The joint objective (shared by all frameworks)
# ---------------------------------------------------------------------------------
class JointObjective:
    """Loss, success and selection score of a joint attack on one batch.

    Args:
        adapter: the interpreter adapter.
        targets: ``B`` target classes (the interpreter explains these).
        target_maps: ``B x h x w`` target maps m_t.
        schedule: lambda over the joint iterations.
        include_prediction: add the PGD prediction loss (cross-entropy, with
            label smoothing if set); Adam frameworks supply their own.
        label_smoothing: ``(start, end)`` target probability over the joint steps, or None.
        encoder_weight: RTS encoder cross-entropy weight.
        select_every: real-map evaluation period (only matters for inexact adapters).
        last_iteration: iteration number of the final iterate (always evaluated);
            ``None``: none is forced (Adam frameworks, which may stop early).
    """

    def __init__(
        self,
        adapter: InterpreterAdapter,
        targets: Tensor,
        target_maps: Tensor,
        schedule: LambdaSchedule,
        *,
        include_prediction: bool = True,
        label_smoothing: tuple[float, float] | None = None,
        encoder_weight: float = 0.0,
        select_every: int = 1,
        last_iteration: int | None = None,
    ) -> None:
        self.adapter = adapter
        self.targets = targets
        self.target_maps = target_maps
        self.schedule = schedule
        self.include_prediction = include_prediction
        self.label_smoothing = label_smoothing
        self.encoder_weight = float(encoder_weight)
        self.select_every = max(1, int(select_every))
        self.last_iteration = last_iteration

    def target_probability(self, iteration: int) -> float:
        start, end = self.label_smoothing or (1.0, 1.0)
        return start + (end - start) * self.schedule.progress(iteration)

    def evaluate(self, it: Iterate) -> Evaluation:
        """Per-sample loss ``B_active`` at the iterate (one adapter pass), with logits and map extras."""
        classes = it.select(self.targets)
        out = self.adapter.forward(it.x, classes)
        distance = map_mse(out.maps, it.select(self.target_maps))
        loss = self.schedule(it.iteration) * distance
        if self.include_prediction:
            if self.label_smoothing is None:
                loss = loss + prediction_loss(out.logits, classes, targeted=True)
            else:
                loss = loss + smoothed_cross_entropy(out.logits, classes, self.target_probability(it.iteration))
        if self.encoder_weight and out.encoder_logits is not None:
            loss = loss + self.encoder_weight * F.cross_entropy(out.encoder_logits, classes, reduction="none")
        return Evaluation(loss=loss, logits=out.logits, extras={"map": out.maps, "map_mse": distance.detach()})

    def success(self, it: Iterate, evaluation: Evaluation) -> Tensor:
        return metrics.success(evaluation.logits.detach(), target=it.select(self.targets))

    def selects_at(self, iteration: int) -> bool:
        """Whether iterates of this iteration are candidates for the best iterate."""
        if self.adapter.exact or iteration % self.select_every == 0:
            return True
        return self.last_iteration is not None and iteration >= self.last_iteration

    def score(self, it: Iterate, evaluation: Evaluation) -> Tensor:
        """L1 distance ``B_active`` of the real map to m_t; ``inf`` where not evaluated."""
        score = torch.full((it.x.shape[0],), math.inf, device=it.x.device)
        if not self.selects_at(it.iteration):
            return score
        if self.adapter.exact:
            return metrics.map_l1(evaluation.extras["map"].detach(), it.select(self.target_maps)).float()
        ok = self.success(it, evaluation)
        if bool(ok.any()):
            rows = ok.nonzero().flatten()
            classes = it.select(self.targets)[rows]
            maps = self.adapter.real_maps(it.x.detach()[rows], classes)
            score[rows] = metrics.map_l1(maps, it.select(self.target_maps)[rows]).float()
        return score


# ---------------------------------------------------------------------------------
# PGD driver: warm start, joint phase, optional early stop on map distance
# ---------------------------------------------------------------------------------
def _shift(it: Iterate, rows: Tensor, offset: int) -> Iterate:
    """An iterate of a sub-batch run, in full-batch rows and global iteration numbers."""
    return Iterate(x=it.x, index=rows[it.index.to(rows.device)], iteration=offset + it.iteration)


def joint_pgd(
    x: Tensor,
    objective: JointObjective,
    *,
    x_init: Tensor | None,
    epsilon: float,
    step_size: float,
    steps: int,
    step_weights: Tensor | None = None,
    stop_distance: float | None = None,
    check_every: int = DEFAULT_CHECK_EVERY,
    progress: bool = False,
    description: str = "adv2",
) -> Perturbation:
    """Run the joint PGD phase; with ``stop_distance`` stop samples once done.

    Without ``stop_distance`` this is one :func:`projected_gradient_descent`
    call. With it, the steps run in chunks of ``check_every``: after each chunk
    a sample whose best successful iterate has map L1 <= ``stop_distance`` is
    done (no longer updated), and the loop ends when all are. Chunks continue
    from each sample's *last* iterate, so the trajectory is the same as without
    chunks (each chunk re-evaluates its start point once).
    """
    if stop_distance is None:
        return projected_gradient_descent(
            x, objective.evaluate, success_fn=objective.success, score_fn=objective.score, epsilon=epsilon,
            step_size=step_size, steps=steps, step_weights=step_weights, x_init=x_init, progress=progress,
            description=description,
        )
    if check_every < 1:
        raise UserError(f"check_every must be >= 1, got {check_every}")
    batch = x.shape[0]
    current = (x if x_init is None else x_init).detach().clone()
    best_x = current.clone()
    best_score = torch.full((batch,), math.inf, device=x.device)
    first_success = torch.full((batch,), -1, dtype=torch.long, device=x.device)
    done_steps = 0
    while True:
        active = ~(best_score <= stop_distance)
        if done_steps >= steps and done_steps > 0 or not bool(active.any()):
            break
        rows = active.nonzero().flatten()
        chunk = min(check_every, steps - done_steps)
        offset = done_steps

        def loss_fn(it: Iterate, rows: Tensor = rows, offset: int = offset, chunk: int = chunk) -> Evaluation:
            shifted = _shift(it, rows, offset)
            if it.iteration == chunk:
                current[shifted.index] = it.x.detach()
            return objective.evaluate(shifted)

        out = projected_gradient_descent(
            x[rows], loss_fn,
            success_fn=lambda it, ev, rows=rows, offset=offset: objective.success(_shift(it, rows, offset), ev),
            score_fn=lambda it, ev, rows=rows, offset=offset: objective.score(_shift(it, rows, offset), ev),
            epsilon=epsilon, step_size=step_size, steps=chunk,
            step_weights=None if step_weights is None else step_weights[rows],
            x_init=current[rows], progress=progress, description=description,
        )
        improved = out.score < best_score[rows]
        best_score[rows] = torch.where(improved, out.score, best_score[rows])
        best_x[rows] = torch.where(improved.view(-1, 1, 1, 1), out.x_adv, best_x[rows])
        fresh = (first_success[rows] < 0) & (out.iterations_to_success >= 0)
        first_success[rows] = torch.where(fresh, out.iterations_to_success + offset, first_success[rows])
        done_steps += chunk
        if chunk == 0:
            break
    succeeded = torch.isfinite(best_score)
    return Perturbation(
        x_adv=torch.where(succeeded.view(-1, 1, 1, 1), best_x, current),
        iterations_to_success=first_success,
        iterations_run=done_steps,
        success=succeeded,
        score=best_score,
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
    progress: bool = False,
) -> Perturbation:
    """Plain targeted PGD (cross-entropy) for ``steps`` steps: the start of the joint phase."""

    def loss_fn(it: Iterate) -> Evaluation:
        logits = classifier(it.x)
        return Evaluation(prediction_loss(logits, it.select(targets), targeted=True), logits)

    return projected_gradient_descent(
        x, loss_fn, success_fn=lambda it, ev: metrics.success(ev.logits, target=it.select(targets)),
        epsilon=epsilon, step_size=step_size, steps=steps, step_weights=step_weights, progress=progress,
        description="warm start",
    )


def combine_first_success(warm: Tensor, joint: Tensor, warm_steps: int) -> Tensor:
    """Iterations to first success over warm start + joint phase (``B`` long, -1 never)."""
    later = torch.where(joint >= 0, joint + warm_steps, joint)
    return torch.where(warm >= 0, warm, later)


# ---------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------
#: :class:`~idls.attacks.defaults.JointDefaults` fields whose ADV2 keyword differs (for error messages)
SETTING_OPTIONS = {
    "schedule": "lam_schedule",
    **{name: f"mask_{name}" for name in ("inner_steps", "lookahead_steps", "reset_every", "max_step",
                                        "bisection_steps", "margin", "region_weight")},
}


@ATTACKS.register("adv2")
class ADV2(Attack):
    """ADV² (paper 001): a targeted attack on the classifier *and* its interpreter.

    Args:
        interpreter: an :class:`~idls.interpreters.Interpreter` of the attacked
            classifier, or a registry name (built for the classifier at run time
            with ``interpreter_options``).
        framework: ``'pgd'`` (default), ``'cw'`` or ``'stadv'``.
        target_map: ``'benign'`` (default), ``'patch'``, ``'other-class'``, a map
            file (``.safetensors``/``.pt``) or a tensor ``h x w`` / ``B x h x w``.
        epsilon: L_inf radius (PGD; C&W's cap); default 8/255. Not for StAdv.
        step_size: PGD sign-step size (default 1/255).
        steps, warm_start, lam, lam_schedule, label_smoothing, encoder_weight,
        select_every, joint_step_size: override :func:`~idls.attacks.defaults.joint_defaults`
            (see :class:`~idls.attacks.defaults.JointDefaults`).
        mask_inner_steps, mask_lookahead_steps, mask_reset_every, mask_max_step,
        mask_bisection_steps, mask_margin, mask_region_weight: MASK bilevel settings (same table).
        stop_distance: stop a sample once it succeeds with map L1 <= this (PGD).
        check_every: joint iterations between those checks.
        framework_options: keyword arguments of the C&W / StAdv attack (``create_attack``).
        interpreter_options: options when ``interpreter`` is a name.
        other_class_pool: ``(images, labels)`` donors for ``target_map='other-class'``.
        mode: ``'targeted'`` (default) or ``'least_likely'``.
        seed: seeds targets, patch maps and donor choice.
        progress: show progress bars.

    ``run`` returns extras ``'map_distance'`` (``B``, L1 of the final real map of
    the predicted class to the target map), ``'map_mse'``, ``'adv_map'`` and
    ``'target_map'`` (``B x h x w``), and ``'score'`` (the selection score).
    """

    name = "adv2"
    edge_stage: str | None = None  #: AdvEdge: 'all' (the paper) or 'warm_start' (the reference notebooks)

    def __init__(
        self,
        *,
        interpreter: Interpreter | str,
        framework: str = "pgd",
        target_map: str | Path | Tensor = "benign",
        epsilon: float | None = None,
        step_size: float | None = None,
        steps: int | None = None,
        warm_start: int | None = None,
        lam: float | None = None,
        lam_schedule: str | None = None,
        label_smoothing: tuple[float, float] | None = None,
        encoder_weight: float | None = None,
        select_every: int | None = None,
        joint_step_size: float | None = None,
        mask_inner_steps: int | None = None,
        mask_lookahead_steps: int | None = None,
        mask_reset_every: int | None = None,
        mask_max_step: float | None = None,
        mask_bisection_steps: int | None = None,
        mask_margin: float | None = None,
        mask_region_weight: float | None = None,
        stop_distance: float | None = None,
        check_every: int = DEFAULT_CHECK_EVERY,
        framework_options: dict[str, Any] | None = None,
        interpreter_options: dict[str, Any] | None = None,
        other_class_pool: tuple[Tensor, Tensor] | None = None,
        mode: str | TargetMode = TargetMode.TARGETED,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__(mode=mode, seed=seed, progress=progress)
        if self.mode is TargetMode.UNTARGETED:
            raise UserError(f"{self.name} is a targeted attack (the interpreter explains the target class); "
                            "use mode='targeted' or 'least_likely'")
        if not isinstance(interpreter, (Interpreter, str)):
            raise UserError(f"interpreter must be an Interpreter or a registry name, got {type(interpreter).__name__}")
        if framework not in FRAMEWORKS:
            raise UserError(f"unknown attack framework {framework!r}; choose one of: {', '.join(FRAMEWORKS)}")
        if framework == "stadv" and epsilon is not None:
            raise UserError("StAdv warps pixels and has no epsilon ball; drop epsilon "
                            "(its budget is the flow loss weight tau)")
        if isinstance(target_map, str) and target_map not in TARGET_MAP_KINDS and not Path(target_map).suffix:
            raise UserError(f"unknown target map {target_map!r}; choose one of: {', '.join(TARGET_MAP_KINDS)}, "
                            "or a map file")
        for name, value in (("epsilon", epsilon), ("step_size", step_size), ("stop_distance", stop_distance)):
            if value is not None and value < 0:
                raise UserError(f"{name} must be >= 0, got {value}")
        if check_every < 1:
            raise UserError(f"check_every must be >= 1, got {check_every}")
        self.interpreter = interpreter
        self.interpreter_options = dict(interpreter_options or {})
        self.framework = framework
        self.framework_options = dict(framework_options or {})
        self.target_map = target_map
        self.epsilon = None if framework == "stadv" else float(DEFAULT_EPSILON if epsilon is None else epsilon)
        self.step_size = float(DEFAULT_STEP_SIZE if step_size is None else step_size)
        self.stop_distance = stop_distance
        self.check_every = int(check_every)
        self.other_class_pool = other_class_pool
        self.overrides: dict[str, Any] = dict(
            steps=steps, warm_start=warm_start, lam=lam, schedule=lam_schedule, label_smoothing=label_smoothing,
            encoder_weight=encoder_weight, select_every=select_every, joint_step_size=joint_step_size,
            inner_steps=mask_inner_steps, lookahead_steps=mask_lookahead_steps, reset_every=mask_reset_every, max_step=mask_max_step,
            bisection_steps=mask_bisection_steps, margin=mask_margin, region_weight=mask_region_weight,
        )
        # fail early on bad overrides (checked against any row of the table)
        joint_defaults("cam", framework, 32).override(SETTING_OPTIONS, **self.overrides)

    # -- configuration ------------------------------------------------------------------
    def interpreter_for(self, classifier: Classifier) -> Interpreter:
        """The interpreter of ``classifier`` (built from its name, or checked to explain this classifier)."""
        if isinstance(self.interpreter, str):
            return create_interpreter(self.interpreter, classifier, **self.interpreter_options)
        if self.interpreter.classifier is not classifier:
            raise UserError("the interpreter explains a different classifier than the one attacked; "
                            "build it with create_interpreter(name, classifier)")
        return self.interpreter

    def settings_for(self, interpreter: Interpreter, input_size: int) -> JointDefaults:
        """:func:`joint_defaults` of this interpreter/framework/size with the user's overrides."""
        return joint_defaults(interpreter.name, self.framework, input_size).override(SETTING_OPTIONS, **self.overrides)

    def edge_weights(self, x: Tensor) -> Tensor | None:
        """``B x 1 x H x W`` step/perturbation weights (AdvEdge); ``None``: unweighted (ADV²)."""
        return None

    def stage_weights(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Weights of the (warm start, joint phase): the edge weights where ``edge_stage`` applies them."""
        weights = self.edge_weights(x)
        if weights is None:
            return None, None
        return weights, (weights if self.edge_stage == "all" else None)

    # -- the attack ------------------------------------------------------------------------
    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        if targets is None:  # pragma: no cover - untargeted is refused at construction
            raise UserError(f"{self.name} needs target classes")
        interpreter = self.interpreter_for(classifier)
        settings = self.settings_for(interpreter, min(x.shape[-2:]))
        adapter = None if interpreter.name == "mask" else adapter_for(interpreter)
        real_maps = adapter.real_maps if adapter is not None else InterpreterAdapter(interpreter).real_maps
        target_maps = self.target_maps_for(classifier, interpreter, x, labels, targets, real_maps)
        warm_weights, joint_weights = self.stage_weights(x)
        if interpreter.name == "mask":
            from idls.attacks.joint_mask import joint_mask_attack

            outcome = joint_mask_attack(self, classifier, interpreter, x, targets, target_maps, settings,
                                        warm_weights, joint_weights)
        elif self.framework == "pgd":
            outcome = self._pgd(classifier, adapter, x, targets, target_maps, settings, warm_weights, joint_weights)
        else:
            outcome = self.run_adam_framework(
                classifier, x, targets, settings, warm_weights, joint_weights,
                lambda total, start: self.objective(adapter, targets, target_maps, settings, total=total,
                                                    include_prediction=False),
            )
        return self.with_map_extras(outcome, classifier, real_maps, target_maps)

    def target_maps_for(self, classifier: Classifier, interpreter: Interpreter, x: Tensor, labels: Tensor,
                        targets: Tensor, real_maps: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Target maps ``B x h x w`` for the batch (checked against the native map size)."""
        map_size = (interpreter.map_size(x.shape[-1]),) * 2 if x.shape[-1] == x.shape[-2] else None
        if map_size is None:
            map_size = tuple(real_maps(x[:1], targets[:1]).shape[-2:])
        return resolve_target_maps(
            self.target_map, x=x, labels=labels, targets=targets, map_size=map_size, benign_map_fn=real_maps,
            seed=self.seed, predict_fn=classifier.predict, other_class_pool=self.other_class_pool,
            indices=self.batch_indices,
        )

    def _pgd(self, classifier: Classifier, adapter: InterpreterAdapter, x: Tensor, targets: Tensor,
             target_maps: Tensor, settings: JointDefaults, warm_weights: Tensor | None,
             joint_weights: Tensor | None) -> Perturbation:
        warm = warm_start_pgd(classifier, x, targets, epsilon=self.epsilon, step_size=self.step_size,
                              steps=settings.warm_start, step_weights=warm_weights, progress=self.progress)
        objective = self.objective(adapter, targets, target_maps, settings, total=settings.steps,
                                   include_prediction=True)
        objective.last_iteration = settings.steps
        joint_step = self.step_size if settings.joint_step_size is None else settings.joint_step_size
        joint = joint_pgd(
            x, objective, x_init=warm.x_adv, epsilon=self.epsilon, step_size=joint_step, steps=settings.steps,
            step_weights=joint_weights, stop_distance=self.stop_distance, check_every=self.check_every,
            progress=self.progress, description=f"{self.name} ({self.interpreter_name})",
        )
        joint.iterations_to_success = combine_first_success(warm.iterations_to_success, joint.iterations_to_success,
                                                            settings.warm_start)
        joint.iterations_run += warm.iterations_run
        return joint

    def objective(self, adapter: InterpreterAdapter, targets: Tensor, target_maps: Tensor, settings: JointDefaults,
                  *, total: int, include_prediction: bool) -> JointObjective:
        """The joint objective of a batch with these settings over ``total`` iterations."""
        return JointObjective(
            adapter, targets, target_maps, LambdaSchedule(settings.schedule, settings.lam, total),
            include_prediction=include_prediction, label_smoothing=settings.label_smoothing,
            encoder_weight=settings.encoder_weight, select_every=settings.select_every,
        )

    @property
    def interpreter_name(self) -> str:
        return self.interpreter if isinstance(self.interpreter, str) else self.interpreter.name

    # -- C&W / StAdv ---------------------------------------------------------------------
    def framework_attack(self, **extra: Any) -> Attack:
        """The C&W / StAdv attack whose ``optimise`` runs the joint objective."""
        options = dict(self.framework_options)
        if self.framework == "cw":
            options.setdefault("epsilon", self.epsilon)
        options.update(extra)
        options.setdefault("progress", self.progress)
        try:
            return create_attack(self.framework, **options)
        except UserError as exc:
            if f"unknown attack {self.framework!r}" in str(exc):
                raise UserError(f"framework {self.framework!r} not available yet; use framework='pgd'") from None
            raise

    def run_adam_framework(self, classifier: Classifier, x: Tensor, targets: Tensor, settings: JointDefaults,
                           warm_weights: Tensor | None, joint_weights: Tensor | None,
                           make_hooks: Callable[[int, Tensor], Any]) -> Perturbation:
        """Warm start (plain framework run, if any) + joint run of C&W / StAdv.

        ``make_hooks(total_iterations, start_images)`` returns an object with
        ``evaluate(it) -> Evaluation`` (extra loss + logits) and ``score(it, ev)``.
        """
        from idls.attacks.cw import classifier_evaluation

        start: dict[str, Tensor] = {}
        start_images, warm = x, None
        if settings.warm_start > 0:
            plain = self.framework_attack(steps=settings.warm_start)
            warm = self._optimise(plain, x, classifier_evaluation(classifier), targets, None, warm_weights, {})
            start, start_images = self._continuation(warm, warm_weights), warm.x_adv
        attack = self.framework_attack(steps=settings.steps)
        hooks = make_hooks(settings.steps * int(getattr(attack, "search_steps", 1)), start_images)
        outcome = self._optimise(attack, x, hooks.evaluate, targets, hooks.score, joint_weights, start)
        if warm is not None:
            outcome.iterations_to_success = combine_first_success(warm.iterations_to_success,
                                                                  outcome.iterations_to_success, warm.iterations_run)
            outcome.iterations_run += warm.iterations_run
        return outcome

    def _optimise(self, attack: Attack, x: Tensor, evaluate: Callable[[Iterate], Evaluation], targets: Tensor,
                  score_fn: Callable | None, weights: Tensor | None, start: dict[str, Tensor]) -> Perturbation:
        if self.framework == "cw":
            return attack.optimise(x, evaluate, targets, targeted=True, score_fn=score_fn,
                                   perturbation_weights=weights, x_init=start.get("x_init"))
        return attack.optimise(x, evaluate, targets, targeted=True, score_fn=score_fn, flow_weights=weights,
                               flow_init=start.get("flow_init"))

    def _continuation(self, warm: Perturbation, weights: Tensor | None) -> dict[str, Tensor]:
        """Start point of the joint run from a warm-start run (C&W: the image; StAdv: the flow)."""
        if self.framework == "cw":
            return {"x_init": warm.x_adv}
        flow = warm.extras["flow"]  # the applied (weighted) flow
        if weights is not None:
            flow = torch.where(weights > 0, flow / weights.clamp_min(1e-12), torch.zeros_like(flow))
        return {"flow_init": flow}

    # -- results ---------------------------------------------------------------------------
    def with_map_extras(self, outcome: Perturbation, classifier: Classifier,
                        real_maps: Callable[[Tensor, Tensor], Tensor], target_maps: Tensor) -> Perturbation:
        """Add the final real maps (of the predicted class) and their distances to the extras."""
        pred = classifier.predict(outcome.x_adv)
        adv_maps = real_maps(outcome.x_adv, pred)
        outcome.extras.update(
            adv_map=adv_maps,
            target_map=target_maps,
            map_distance=metrics.map_l1(adv_maps, target_maps),
            map_mse=map_mse(adv_maps, target_maps),
        )
        return outcome


__all__ = [
    "ADAPTERS",
    "ADV2",
    "AdapterOutput",
    "CAMAdapter",
    "GenericAdapter",
    "GradAdapter",
    "GradCAMAdapter",
    "InterpreterAdapter",
    "JointObjective",
    "LambdaSchedule",
    "RTSAdapter",
    "adapter_for",
    "combine_first_success",
    "joint_pgd",
    "map_mse",
    "smoothed_cross_entropy",
    "warm_start_pgd",
]
