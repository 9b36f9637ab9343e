"""Adaptive ADV²: evading feature squeezing (paper 001 §4 Q3, Algorithm 2) and attacking several interpreters.

``adaptive-adv2`` is ADV² (:class:`~idls.attacks.joint.ADV2`) whose joint objective
gains a feature-squeezing term for one squeezer ``psi`` (``squeezer``, a defence
spec such as ``'bit-depth:bits=3'`` or ``'median:size=3'``, or an
:class:`~idls.transforms.InputTransform`). What the term is depends on a capability
the squeezer declares, not on its name:

- a *quantising* squeezer (``quantises = True``, grid values ``k / levels``; bit
  depth) gets Algorithm 2's two stages: (i) targeted PGD on ``psi(x0)`` over the
  squeezer's grid, inside ``psi(B_eps(x0))`` (the squeezed images of the attack's
  own ball), ``squeeze_steps`` steps of one grid level
  (:func:`~idls.attacks.adaptive_terms.squeezed_space_pgd`), giving ``x+``; (ii)
  ADV² in ``B_eps(x0)`` with ``squeeze_weight * ||softmax f(x) - softmax f(x+)||_1``
  added (the paper's reference code threw stage (i)'s result away; here ``x+`` is used),
  starting (``squeeze_start``, step frameworks) from the point of the ball nearest ``x+``,
  whose squeezed image is ``x+``. StAdv has no pixel ball: its stage (i) searches the whole grid.
- any other squeezer (median smoothing, non-local means, ...) gets
  ``squeeze_weight * CE(softmax f(x), f(psi(x)))`` (the paper's ``l_sqz``), through
  the transform's ``forward`` (its own gradient, or BPDA for non-differentiable ones).

Cost against ADV² (same steps): quantising squeezers add ``squeeze_steps + 1``
forward + backward passes of the classifier per image (stage (i)); the term itself
reuses ADV²'s logits. Smoothing squeezers add one classifier forward + backward on
``psi(x)`` per joint iteration, less than ADV²'s own iteration (a forward plus a
double backward for the map), so the total stays under twice ADV²'s.

``ensemble-adv2`` is ADV² against its ``interpreter`` *and* the ``interpreters``
listed, each with its own target map (its benign map by default) and its own
family's lambda, plus optionally a fitted detector's differentiable score.

Both keep ADV²'s threat model (its framework's ball and [0, 1]); neither runs on
MASK, whose map is itself an optimisation (its bilevel loop takes no extra term).
With ``squeeze_weight = 0`` (or no further interpreters and no detector) each is ADV².
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from idls import metrics
from idls.attacks.adaptive_terms import (
    EnsembleTerm,
    Member,
    ProbabilityMatch,
    SqueezedAgreement,
    ball_point_of,
    squeeze_l1,
    squeezed_space_pgd,
)
from idls.attacks.base import ATTACKS, Perturbation
from idls.attacks.defaults import JointDefaults
from idls.attacks.joint import ADV2, ADV2Options
from idls.attacks.joint_objective import EVALUATION_CHUNK, ExtraTerm, LambdaSchedule
from idls.attacks.juap_objective import optimised_map_reason
from idls.attacks.options import option
from idls.errors import UserError
from idls.interpreters import Interpreter, interpreter_for
from idls.interpreters.registry import interpreter_class
from idls.system import Classifier
from idls.transforms import InputTransform, defense_from_spec

DEFAULT_SQUEEZER = "bit-depth:bits=3"
DEFAULT_SQUEEZE_STEPS = 10


def _interpreter_type(spec: Any) -> type[Interpreter]:
    """The class of an interpreter given as an object or a registry name."""
    return interpreter_class(spec) if isinstance(spec, str) else type(spec)


def _refuse_optimised(attack: str, spec: Any) -> None:
    reason = optimised_map_reason(attack, _interpreter_type(spec))
    if reason:
        raise UserError(reason)


def quantises(squeezer: InputTransform) -> bool:
    """Whether the squeezer declares a value grid (``quantises = True`` and ``levels``): Algorithm 2's two stages."""
    return bool(getattr(squeezer, "quantises", False))


# ---------------------------------------------------------------------------------
# adaptive-adv2: against feature squeezing
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class AdaptiveADV2Options(ADV2Options):
    """Options of :class:`AdaptiveADV2`: ADV²'s plus the squeezer it evades."""

    untyped: ClassVar[tuple[str, ...]] = (*ADV2Options.untyped, "squeezer")

    squeezer: Any = option(DEFAULT_SQUEEZER, "the feature-squeezing squeezer to evade: a defence spec "
                                             "('bit-depth:bits=3', 'median:size=3', ...) or an InputTransform")
    squeeze_weight: float = option(1.0, "weight lambda of the squeezing term (0: plain ADV²)")
    squeeze_steps: int = option(DEFAULT_SQUEEZE_STEPS, "quantising squeezers: PGD steps of stage (i) on the grid")
    squeeze_start: bool = option(True, "quantising squeezers, step frameworks: stage (ii) starts at the point of the ball that "
                                       "squeezes to x+ (false: at x0, as the paper)")
    squeeze_every: int = option(2, "smoothing squeezers: evaluate the squeezing term exactly every this many iterations "
                                   "and use its first-order model in between (1: every iteration, the paper's "
                                   "algorithm at one more classifier pass per iteration)")

    def check(self) -> None:
        super().check()
        _refuse_optimised("adaptive-adv2", self.interpreter)
        self.transform()  # a bad squeezer fails here

        if not self.squeeze_weight >= 0:
            raise UserError(f"squeeze_weight must be >= 0, got {self.squeeze_weight}")
        if self.squeeze_steps < 0:
            raise UserError(f"squeeze_steps must be >= 0, got {self.squeeze_steps}")
        if self.squeeze_every < 1:
            raise UserError(f"squeeze_every must be >= 1, got {self.squeeze_every}")

    def transform(self) -> InputTransform:
        """The squeezer ``psi`` as a transform (parsed from its spec, or the one given)."""
        squeezer = self.squeezer
        if isinstance(squeezer, str):
            squeezer = defense_from_spec(squeezer)
        elif not isinstance(squeezer, InputTransform):
            raise UserError(f"squeezer must be a defence spec such as 'bit-depth:bits=3' or an InputTransform, "
                            f"got {type(squeezer).__name__}")
        if quantises(squeezer) and not isinstance(getattr(squeezer, "levels", None), int):
            raise UserError(f"squeezer {squeezer.describe()!r} declares quantises but no integer levels; "
                            "give it a levels attribute (grid values k / levels)")
        return squeezer


#: what :meth:`AdaptiveADV2.variant` appends where the smoothing squeezers' term is amortised over k iterations
EVERY_SUFFIX = ", every {}"


#: what :meth:`EnsembleADV2.variant` starts with when the attack also evades a detector
ADAPTED_DETECTOR_PREFIX = "vs "


def adapted_detector(variant: str) -> str | None:
    """The detector an ``ensemble-adv2`` variant names (an experiment's detector label, or a Detector's
    ``describe()``), e.g. ``'ensemble'`` of ``'vs ensemble'``; ``None`` when it adapted to none."""
    return variant[len(ADAPTED_DETECTOR_PREFIX):] if variant.startswith(ADAPTED_DETECTOR_PREFIX) else None


def adapted_squeezer(variant: str) -> str:
    """The squeezer's ``describe()`` in an ``adaptive-adv2`` variant, e.g. ``'median(3x3)'`` of
    ``'median(3x3), every 2'``: what a feature-squeezing detector's description is matched against."""
    return variant.split(EVERY_SUFFIX.format(""), 1)[0]


@ATTACKS.register("adaptive-adv2")
class AdaptiveADV2(ADV2):
    """ADV² that also evades feature squeezing with one squeezer (module docstring; paper 001 Algorithm 2).

    Options: :class:`AdaptiveADV2Options`. ``run`` returns ADV²'s extras plus
    ``'squeeze_l1'`` (``B``: ``||softmax f(x*) - softmax f(psi(x*))||_1``, the
    squeezer's detection score) and, for quantising squeezers with a non-zero weight,
    ``'squeezed_start'`` (``B x C x H x W``, stage (i)'s ``x+``) and
    ``'squeezed_start_success'`` (``B`` bool, ``x+`` classified as the target).
    """

    name = "adaptive-adv2"
    Options = AdaptiveADV2Options
    squeezer: str | InputTransform
    squeeze_weight: float
    squeeze_steps: int
    squeeze_start: bool
    squeeze_every: int

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: the squeezer psi as a transform
        self.psi: InputTransform = self.options.transform()
        self._stage_one: Perturbation | None = None

    @classmethod
    def interpreter_unavailable_reason(cls, interpreter: type) -> str | None:
        return optimised_map_reason(cls.name, interpreter)

    def variant(self) -> str:
        """The squeezer, e.g. ``'median(3x3)'``; with ``', every 2'`` where the smoothing term is amortised."""
        every = EVERY_SUFFIX.format(self.squeeze_every) if self.squeeze_every > 1 and not quantises(self.psi) else ""
        return self.psi.describe() + every

    def extra_term(self, classifier: Classifier, interpreter: Interpreter, x: Tensor, labels: Tensor,
                   targets: Tensor, settings: JointDefaults) -> ExtraTerm | None:
        self._stage_one = None
        if self.squeeze_weight == 0:
            return None
        squeezer = self.psi.to(x.device)
        if not quantises(squeezer):
            return SqueezedAgreement(classifier, squeezer, self.squeeze_weight, every=self.squeeze_every,
                                     batch=x.shape[0])
        # StAdv bounds a flow, not the pixels: its stage (i) searches the whole grid (squeeze_steps levels at most)
        radius = 1.0 if self.epsilon is None else self.epsilon
        stage = squeezed_space_pgd(classifier, squeezer, x, targets, epsilon=radius, steps=self.squeeze_steps)
        self._stage_one = stage
        with torch.no_grad():
            reference = classifier(stage.x_adv).softmax(1)
        start = ball_point_of(stage.x_adv, x, radius) if self.squeeze_start else None
        return ProbabilityMatch(reference, self.squeeze_weight, start)

    def extra_results(self, extra: ExtraTerm, outcome: Perturbation, classifier: Classifier) -> None:
        if self._stage_one is not None:
            outcome.extras.update(squeezed_start=self._stage_one.x_adv,
                                  squeezed_start_success=self._stage_one.success)

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        outcome = super()._perturb(classifier, x, labels, targets)
        outcome.extras["squeeze_l1"] = squeeze_l1(classifier, self.psi.to(x.device), outcome.x_adv)
        return outcome


# ---------------------------------------------------------------------------------
# ensemble-adv2: several interpreters (and a detector) at once
# ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class EnsembleADV2Options(ADV2Options):
    """Options of :class:`EnsembleADV2`: ADV²'s plus the further interpreters and the detector."""

    untyped: ClassVar[tuple[str, ...]] = (*ADV2Options.untyped, "interpreters", "detector")

    interpreters: Any = option(("gradcam",), "further interpreters attacked at once (registry names or "
                                             "Interpreters), each towards its own benign map")
    detector: Any = option(None, "a fitted detector with a differentiable score, added to the loss (or none); in "
                                 "experiment files the label of one of its detectors:, or a saved detector file")
    detector_weight: float = option(1.0, "weight of the detector's score in the loss")

    def check(self) -> None:
        super().check()
        interpreters = self.interpreters
        if isinstance(interpreters, (str, Interpreter)):
            interpreters = (interpreters,)
        if not isinstance(interpreters, (tuple, list)) or not all(
                isinstance(i, (str, Interpreter)) for i in interpreters):
            raise UserError("interpreters must be a list of interpreter names or Interpreters, e.g. ['grad', 'rts']")
        for spec in (self.interpreter, *interpreters):
            _refuse_optimised("ensemble-adv2", spec)
        self._set("interpreters", tuple(interpreters))
        if isinstance(self.detector, str):
            return  # a saved detector file or a detector label of an experiment: the experiment loads it
        if self.detector is not None and not (getattr(self.detector, "differentiable_score", False)
                                              and callable(getattr(self.detector, "score", None))):
            raise UserError("detector must be a fitted idls Detector with a differentiable score "
                            f"(differentiable_score = True), got {type(self.detector).__name__}")
        if not self.detector_weight >= 0:
            raise UserError(f"detector_weight must be >= 0, got {self.detector_weight}")


@ATTACKS.register("ensemble-adv2")
class EnsembleADV2(ADV2):
    """ADV² against several interpreters at once, optionally also against a differentiable detector.

    The loss adds, for each further interpreter ``k``, ``lambda_k(t) * MSE(g_k(x), m_k)``
    with ``lambda_k`` and its schedule from ``k``'s own row of the defaults table (the
    map scales differ per family) and ``m_k`` its map of the benign image (``target_map``
    applies to ``interpreter`` only: the benign map of the true class); steps, warm start and step sizes are
    ``interpreter``'s. The best iterate minimises the *sum* of the real maps' L1
    distances. Options: :class:`EnsembleADV2Options`. ``run`` returns ADV²'s extras
    (for ``interpreter``) plus ``'map_distance/<name>'`` (``B``) for every attacked
    interpreter, ``'ensemble_map_distance'`` (``B``, their sum) and, with a detector,
    ``'detector_score'`` (``B``).
    """

    name = "ensemble-adv2"
    Options = EnsembleADV2Options
    interpreters: tuple[str | Interpreter, ...]
    detector: Any
    detector_weight: float

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._primary = ""
        self._members: list[Member] = []

    @classmethod
    def interpreter_unavailable_reason(cls, interpreter: type) -> str | None:
        return optimised_map_reason(cls.name, interpreter)

    def variant(self) -> str:
        """The detector it evades, e.g. ``'vs ensemble'`` (an experiment's detector label, or a Detector's
        ``describe()``): what detection claims pair the attack with; ``''`` without one."""
        if self.detector is None or self.detector_weight == 0:
            return ""
        if isinstance(self.detector, str):
            return ADAPTED_DETECTOR_PREFIX + self.detector
        describe = getattr(self.detector, "describe", None)  # any object with a differentiable score is accepted
        return ADAPTED_DETECTOR_PREFIX + (describe() if callable(describe) else type(self.detector).__name__)

    def extra_term(self, classifier: Classifier, interpreter: Interpreter, x: Tensor, labels: Tensor,
                   targets: Tensor, settings: JointDefaults) -> ExtraTerm | None:
        self._primary = interpreter.name
        self._members = []
        size = min(x.shape[-2:])
        for spec in self.interpreters:
            real = interpreter_for(spec, classifier)
            if real.name == interpreter.name or any(m.name == real.name for m in self._members):
                continue
            own = self.settings_for(real, size)
            maps = real.attribute_in_chunks(x, labels, EVALUATION_CHUNK)  # its benign map, as target_map='benign'
            self._members.append(Member(
                name=real.name, real=real, view=real.for_joint_attack(), target_maps=maps.detach(),
                schedule=LambdaSchedule(own.schedule, own.lam, settings.steps),
                encoder_weight=own.encoder_weight, select_every=own.select_every,
            ))
        if isinstance(self.detector, str):
            raise UserError(f"detector {self.detector!r}: give ensemble-adv2 a fitted Detector object (in experiments "
                            "and on the command line, a detector label of detectors: or a .safetensors file)")
        detector = self.detector if self.detector is not None and self.detector_weight > 0 else None
        if not self._members and detector is None:
            return None
        last = settings.steps if self.framework_class.joint_kind == "steps" else None
        return EnsembleTerm(targets, self._members, detector, self.detector_weight, last_iteration=last)

    def extra_results(self, extra: ExtraTerm, outcome: Perturbation, classifier: Classifier) -> None:
        if self.detector is not None:
            outcome.extras["detector_score"] = self.detector.score(outcome.x_adv)

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        outcome = super()._perturb(classifier, x, labels, targets)
        distances = {self._primary: outcome.extras["map_distance"]}
        pred = classifier.predict(outcome.x_adv)
        for member in self._members:
            maps = member.real.attribute_in_chunks(outcome.x_adv, pred, EVALUATION_CHUNK)
            distances[member.name] = metrics.map_l1(maps, member.target_maps)
        for name, distance in distances.items():
            outcome.extras[f"map_distance/{name}"] = distance
        outcome.extras["ensemble_map_distance"] = torch.stack(list(distances.values())).sum(0)
        return outcome


__all__ = ["ADAPTED_DETECTOR_PREFIX", "EVERY_SUFFIX", "AdaptiveADV2", "AdaptiveADV2Options", "EnsembleADV2", "EnsembleADV2Options", "adapted_detector",
           "adapted_squeezer", "quantises"]
