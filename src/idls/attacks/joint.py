"""ADV²: attack the classifier and its interpreter at once (paper 001 §3, docs/design.md §4).

    minimise  l_prd(f(x*), y_t) + lambda(t) * l_int(g(x*), m_t)   over the threat set around x

``l_prd`` is the framework's prediction loss (PGD / MI-FGSM: cross-entropy
towards the target y_t; C&W/StAdv: their margin loss), ``l_int`` the mean
squared error between the interpreter's map of the *target* class (the
adversarial image will be predicted as y_t, so that is the map a user will see)
and the target map m_t (default: the benign map of the true class, see
:mod:`idls.attacks.target_maps`).

What differs per interpreter is declared by the interpreter
(:class:`~idls.interpreters.base.Interpreter`): its defaults-table ``family``,
its one-pass ``joint_forward`` (logits + differentiable map; Grad/IG on the
smooth-ReLU surrogate, whose forward values equal the real model's; RTS also
returns its encoder logits, pushed towards y_t with ``encoder_weight``), and
``map_is_optimised`` (MASK), which selects the bilevel loop of
:mod:`idls.attacks.joint_mask`.

What differs per framework is declared by the framework attack
(:class:`~idls.attacks.base.Attack`): ``joint_kind`` ``'steps'`` runs the
shared projected-gradient engine with the framework's step rule (PGD: sign
steps; MI-FGSM: momentum); ``'adam'`` runs the framework's ``optimise_joint``
with the joint term as its extra loss, the map distance as its score and the
edge weights on its perturbation / flow (C&W, StAdv); ``joint_table`` picks
the defaults table.

Tricks (docs/design.md §4): a warm start of plain framework steps continued
through ``x_init``; a lambda schedule (:class:`LambdaSchedule`); label
smoothing of the target for GRAD (0.95 -> 0.99); per-sample best iterate =
among successful iterates, the smallest **L1 distance of the real
interpreter's map** to m_t. Where the map in the loss is not the real one
(Grad/IG: surrogate) the real map costs one extra forward + backward, so it is
evaluated every ``select_every`` joint iterations (and at the last one) on the
samples that currently succeed; the other iterates are not candidates.

Per-sample stopping (step frameworks, :mod:`idls.attacks.joint_stopping`): every
``check_every`` joint iterations a sample whose best iterate leads by ``stop_margin``
logits and whose best map distance improved by at most ``stop_tolerance`` over the
last ``stop_patience`` checks (or reached ``stop_distance``) leaves the batch with its
best iterate. ``budget`` (:mod:`idls.attacks.budgets`) picks the level of the
settings table: ``'fast'``, ``'paper'`` (the table) or ``'best'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from idls import metrics
from idls.attacks.base import ATTACKS, Attack, Perturbation, create_attack, list_frameworks
from idls.attacks.budgets import DEFAULT_BUDGET, budget_level
from idls.attacks.cw import classifier_evaluation
from idls.attacks.defaults import DEFAULT_CHECK_EVERY, JointDefaults, joint_defaults
from idls.attacks.joint_mask import joint_mask_attack
from idls.attacks.joint_objective import (
    EVALUATION_CHUNK,
    ExtraTerm,
    JointObjective,
    LambdaSchedule,
    StopRule,
    combine_first_success,
    joint_pgd,
    map_mse,
    warm_start_pgd,
)
from idls.attacks.options import AttackOptions, option
from idls.attacks.target_maps import TARGET_MAP_KINDS, resolve_target_maps
from idls.attacks.targets import TargetMode
from idls.attacks.threats import Threat
from idls.errors import UserError
from idls.interpreters import Interpreter, interpreter_for
from idls.system import Classifier

DEFAULT_EPSILON = 8 / 255
DEFAULT_STEP_SIZE = 1 / 255


# ---------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class ADV2Options(AttackOptions):
    """Options of ADV² (and, through subclasses, AdvEdge / AdvEdge+).

    The options marked "(table)" override :func:`~idls.attacks.defaults.joint_defaults`
    for the attacked interpreter's family, framework and input size; ``None`` keeps
    the table's value (see :class:`~idls.attacks.defaults.JointDefaults`).
    """

    untyped: ClassVar[tuple[str, ...]] = ("interpreter", "target_map", "framework_options", "interpreter_options",
                                          "other_class_pool")

    interpreter: Any = option(help="an Interpreter of the attacked classifier, or a registry name (built for the "
                                   "classifier at run time with interpreter_options)")
    framework: str = option("pgd", "the attack whose optimiser runs underneath: any registered attack that "
                                   "declares a joint_table (pgd, mifgsm, cw, stadv)")
    target_map: Any = option("benign", "'benign', 'patch', 'other-class', a map file (.safetensors/.pt) or a "
                                       "tensor h x w / B x h x w")
    epsilon: float | None = option(None, "L_inf radius (step frameworks; C&W's cap), default 8/255; not for StAdv")
    step_size: float | None = option(None, "sign-step size of the step frameworks (default 1/255)")
    steps: int | None = option(None, "(table) joint iterations after the warm start", setting="steps")
    warm_start: int | None = option(None, "(table) prediction-only iterations first", setting="warm_start")
    lam: float | None = option(None, "(table) interpretation coefficient c", setting="lam")
    lam_schedule: str | None = option(None, "(table) 'ramp', 'phases' or 'constant'", setting="schedule")
    label_smoothing: tuple[float, float] | None = option(
        None, "(table) (start, end) target probability of the smoothed cross-entropy", setting="label_smoothing")
    encoder_weight: float | None = option(None, "(table) RTS encoder cross-entropy weight", setting="encoder_weight")
    select_every: int | None = option(None, "(table) real-map evaluation period for surrogate maps",
                                      setting="select_every")
    joint_step_size: float | None = option(None, "(table) sign-step size of the joint phase",
                                           setting="joint_step_size")
    mask_inner_steps: int | None = option(None, "(table) MASK: inner Adam steps per iteration", setting="inner_steps")
    mask_lookahead_steps: int | None = option(None, "(table) MASK: differentiable look-ahead steps",
                                              setting="lookahead_steps")
    mask_reset_every: int | None = option(None, "(table) MASK: iterations between real-map resets",
                                          setting="reset_every")
    mask_max_step: float | None = option(None, "(table) MASK: largest interpretation step", setting="max_step")
    mask_bisection_steps: int | None = option(None, "(table) MASK: bisection steps on the step size",
                                              setting="bisection_steps")
    mask_margin: float | None = option(None, "(table) MASK: logit margin the interpretation step keeps",
                                       setting="margin")
    mask_region_weight: float | None = option(None, "(table) MASK: weight of the region contrast term (0: off)",
                                              setting="region_weight")
    budget: str = option(DEFAULT_BUDGET, "'fast' (fewest passes at reference quality), 'paper' (the defaults "
                                          "table) or 'best' (twice the iterations, no early stop); the (table) "
                                          "options below override the level")
    stop_distance: float | None = option(None, "stop a sample once it succeeds with map L1 <= this")
    check_every: int | None = option(None, "(table) joint iterations between per-sample stopping checks",
                                     setting="check_every")
    stop_patience: int | None = option(None, "(table) a sample stops once its best map L1 improved by at most "
                                             "stop_tolerance over this many checks (and it leads by stop_margin); "
                                             "0: no such stop", setting="stop_patience")
    stop_tolerance: float | None = option(None, "(table) relative improvement below which the map L1 has converged",
                                          setting="stop_tolerance")
    stop_margin: float | None = option(None, "(table) logit lead of the target class a sample needs to stop",
                                       setting="stop_margin")
    framework_options: dict = option(factory=dict, help="options of the framework attack (e.g. MI-FGSM's decay, "
                                                        "C&W's search_steps)")
    interpreter_options: dict = option(factory=dict, help="options when interpreter is a name")
    other_class_pool: Any = option(None, "(images, labels) donors for target_map='other-class'")

    def check(self) -> None:
        if self.mode is TargetMode.UNTARGETED:
            raise UserError("the joint attacks are targeted (the interpreter explains the target class); "
                            "use mode='targeted' or 'least_likely'")
        if not isinstance(self.interpreter, (Interpreter, str)):
            raise UserError(f"interpreter must be an Interpreter or a registry name, "
                            f"got {type(self.interpreter).__name__}")
        frameworks = list_frameworks()
        if self.framework not in frameworks:
            raise UserError(f"unknown attack framework {self.framework!r}; choose one of: {', '.join(frameworks)}")
        framework_class = ATTACKS.get(self.framework)
        if not framework_class.uses_epsilon and self.epsilon is not None:
            raise UserError(f"{self.framework} has no epsilon ball (it bounds its perturbation otherwise); "
                            "drop epsilon")
        target = self.target_map
        if isinstance(target, str) and target not in TARGET_MAP_KINDS and not Path(target).suffix:
            raise UserError(f"unknown target map {target!r}; choose one of: {', '.join(TARGET_MAP_KINDS)}, "
                            "or a map file")
        for name in ("epsilon", "step_size", "stop_distance"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"{name} must be >= 0, got {value}")
        budget_level(self.budget)
        self._set("epsilon", float(DEFAULT_EPSILON if self.epsilon is None else self.epsilon)
                  if framework_class.uses_epsilon else None)
        self._set("step_size", float(DEFAULT_STEP_SIZE if self.step_size is None else self.step_size))
        self._set("framework_options", dict(self.framework_options or {}))
        self._set("interpreter_options", dict(self.interpreter_options or {}))
        # bad overrides fail here (checked against any row of the table), named as the user typed them
        joint_defaults("cam", framework_class.joint_table, 32).override(self.table_names(), **self.settings())

    @classmethod
    def table_names(cls) -> dict[str, str]:
        """``{settings field: option name}`` for error messages."""
        return {setting: name for name, setting in cls.setting_names().items()}


@ATTACKS.register("adv2")
class ADV2(Attack):
    """ADV² (paper 001): a targeted attack on the classifier *and* its interpreter.

    Options: :class:`ADV2Options` (``idls options adv2``). ``run`` returns extras
    ``'map_distance'`` (``B``, L1 of the final real map of the predicted class to the
    target map), ``'map_mse'``, ``'adv_map'`` and ``'target_map'`` (``B x h x w``), and
    ``'score'`` (the selection score).
    """

    name = "adv2"
    Options = ADV2Options
    edge_stage: str | None = None  #: AdvEdge: 'all' (the paper) or 'warm_start' (the reference notebooks)
    interpreter: Interpreter | str
    framework: str
    target_map: str | Path | Tensor
    epsilon: float | None
    step_size: float
    budget: str
    stop_distance: float | None
    framework_options: dict[str, Any]
    interpreter_options: dict[str, Any]
    other_class_pool: tuple[Tensor, Tensor] | None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.framework_class = ATTACKS.get(self.framework)
        self.overrides: dict[str, Any] = self.options.settings()
        self.framework_attack()  # bad framework options fail at construction

    # -- configuration ------------------------------------------------------------------
    def interpreter_for(self, classifier: Classifier) -> Interpreter:
        """The interpreter of ``classifier`` (built from its name, or checked to explain this classifier)."""
        return interpreter_for(self.interpreter, classifier, **self.interpreter_options)

    def threat(self) -> Threat:
        """The framework's threat set with this attack's epsilon."""
        return self.framework_attack().threat()

    def settings_for(self, interpreter: Interpreter, input_size: int) -> JointDefaults:
        """:func:`joint_defaults` of this interpreter/framework/size at the ``budget`` level, with the user's
        overrides."""
        if interpreter.family is None:
            raise UserError(f"interpreter {interpreter.name!r} declares no joint-attack family, so the joint attacks "
                            "have no settings for it; set its class attribute `family` (grad, cam, rts or mask)")
        return joint_defaults(interpreter.family, self.framework_class.joint_table, input_size, self.budget).override(
            self.options.table_names(), **self.overrides)

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

        def real_maps(images: Tensor, classes: Tensor) -> Tensor:
            return interpreter.attribute_in_chunks(images, classes, EVALUATION_CHUNK)

        target_maps = self.target_maps_for(classifier, interpreter, x, labels, targets, real_maps)
        extra = self.extra_term(classifier, interpreter, x, labels, targets, settings)
        warm_weights, joint_weights = self.stage_weights(x)
        if interpreter.map_is_optimised:
            if extra is not None:  # pragma: no cover - the adaptive attacks refuse MASK before this
                raise UserError(f"{self.name} cannot add its extra term to MASK's bilevel loop; choose another "
                                "interpreter")
            outcome = joint_mask_attack(self, classifier, interpreter, x, targets, target_maps, settings,
                                        warm_weights, joint_weights)
        elif self.framework_class.joint_kind == "steps":
            outcome = self._steps(classifier, interpreter.for_joint_attack(), x, targets, target_maps, settings,
                                  warm_weights, joint_weights, extra=extra)
        else:
            view = interpreter.for_joint_attack()
            outcome = self.run_adam_framework(
                classifier, x, targets, settings, warm_weights, joint_weights,
                lambda total, start: self.objective(view, targets, target_maps, settings, total=total,
                                                    include_prediction=False, extra=extra),
            )
        outcome = self.with_map_extras(outcome, classifier, real_maps, target_maps)
        if extra is not None:
            self.extra_results(extra, outcome, classifier)
        return outcome

    def extra_term(self, classifier: Classifier, interpreter: Interpreter, x: Tensor, labels: Tensor,
                   targets: Tensor, settings: JointDefaults) -> ExtraTerm | None:
        """An extra term of the joint objective for this batch (adaptive attacks); ADV²: ``None``."""
        return None

    def extra_results(self, extra: ExtraTerm, outcome: Perturbation, classifier: Classifier) -> None:
        """Add what the extra term measures on the final images to ``outcome.extras`` (adaptive attacks)."""

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

    def _steps(self, classifier: Classifier, view: Interpreter, x: Tensor, targets: Tensor,
               target_maps: Tensor, settings: JointDefaults, warm_weights: Tensor | None,
               joint_weights: Tensor | None, *, extra: ExtraTerm | None = None) -> Perturbation:
        """Warm start + joint phase on the projected-gradient engine with the framework's step rule."""
        step_rule = self.framework_attack().step_rule()
        warm = warm_start_pgd(classifier, x, targets, epsilon=self.epsilon, step_size=self.step_size,
                              steps=settings.warm_start, step_weights=warm_weights, step_rule=step_rule,
                              progress=self.progress, x_init=None if extra is None else extra.start)
        objective = self.objective(view, targets, target_maps, settings, total=settings.steps,
                                   include_prediction=True, extra=extra)
        objective.last_iteration = settings.steps
        joint_step = self.step_size if settings.joint_step_size is None else settings.joint_step_size
        joint = joint_pgd(
            x, objective, x_init=warm.x_adv, epsilon=self.epsilon, step_size=joint_step, steps=settings.steps,
            step_weights=joint_weights, stop_rule=StopRule.from_settings(settings, self.stop_distance),
            step_rule=step_rule, progress=self.progress, description=f"{self.name} ({self.interpreter_name})",
        )
        joint.iterations_to_success = combine_first_success(warm.iterations_to_success, joint.iterations_to_success,
                                                            settings.warm_start)
        joint.iterations_run += warm.iterations_run
        joint.extras["warm_evaluations"] = warm.extras.pop("evaluations")
        joint.extras["joint_evaluations"] = joint.extras.pop("evaluations")
        return joint

    def objective(self, view: Interpreter, targets: Tensor, target_maps: Tensor, settings: JointDefaults,
                  *, total: int, include_prediction: bool, extra: ExtraTerm | None = None) -> JointObjective:
        """The joint objective of a batch with these settings over ``total`` iterations (plus ``extra``)."""
        return JointObjective(
            view, targets, target_maps, LambdaSchedule(settings.schedule, settings.lam, total),
            include_prediction=include_prediction, label_smoothing=settings.label_smoothing,
            encoder_weight=settings.encoder_weight, select_every=settings.select_every, extra=extra,
        )

    @property
    def interpreter_name(self) -> str:
        return self.interpreter if isinstance(self.interpreter, str) else self.interpreter.name

    # -- frameworks ----------------------------------------------------------------------
    def framework_attack(self, **extra: Any) -> Attack:
        """The framework attack (its optimiser runs the joint objective), with the joint attack's epsilon."""
        options = dict(self.framework_options)
        if self.epsilon is not None:
            options.setdefault("epsilon", self.epsilon)
        options.update(extra)
        options.setdefault("progress", self.progress)
        return create_attack(self.framework, **options)

    def run_adam_framework(self, classifier: Classifier, x: Tensor, targets: Tensor, settings: JointDefaults,
                           warm_weights: Tensor | None, joint_weights: Tensor | None,
                           make_hooks: Callable[[int, Tensor], Any]) -> Perturbation:
        """Warm start (plain framework run, if any) + joint run of an ``'adam'`` framework (C&W, StAdv).

        ``make_hooks(total_iterations, start_images)`` returns an object with
        ``evaluate(it) -> Evaluation`` (extra loss + logits) and ``score(it, ev)``.
        """
        start: dict[str, Tensor] = {}
        start_images, warm = x, None
        if settings.warm_start > 0:
            plain = self.framework_attack(steps=settings.warm_start)
            warm = plain.optimise_joint(x, classifier_evaluation(classifier), targets, score_fn=None,
                                        weights=warm_weights, start={})
            start, start_images = plain.continuation(warm, warm_weights), warm.x_adv
        attack = self.framework_attack(steps=settings.steps)
        hooks = make_hooks(attack.iterations_per_run, start_images)
        outcome = attack.optimise_joint(x, hooks.evaluate, targets, score_fn=hooks.score, weights=joint_weights,
                                        start=start)
        if warm is not None:
            outcome.iterations_to_success = combine_first_success(warm.iterations_to_success,
                                                                  outcome.iterations_to_success, warm.iterations_run)
            outcome.iterations_run += warm.iterations_run
        return outcome

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
    "ADV2",
    "ADV2Options",
    "DEFAULT_CHECK_EVERY",
    "JointObjective",
    "LambdaSchedule",
    "combine_first_success",
    "joint_pgd",
    "map_mse",
    "warm_start_pgd",
]
