"""Training objectives: what one training step minimises on a batch (paper 000 §VIII, Eqs. 20-21).

An objective is a registered class with its options declared once (an :class:`ObjectiveOptions`
dataclass) and one hook, :meth:`TrainingObjective.loss`, called by the training loop
(:mod:`idls.defenses.training.loop`) with the model in training mode. Objectives that search for
a worst-case input first switch the model to eval mode for that search (BatchNorm statistics are
not updated by the attacker's iterates) and back. Registered:

* ``standard``: cross-entropy on the clean batch (normal training / fine-tuning);
* ``adversarial``: cross-entropy on PGD images (Madry et al. 2018): L_inf PGD maximising the
  cross-entropy, random start, ``steps`` steps of ``step_size`` inside ``epsilon``;
* ``interpretation-robust``: ``CE(x, y) + gamma * D(x, x')`` where ``x'`` maximises the 2-class
  interpretation discrepancy ``D`` of Eq. 20 (:mod:`idls.attacks.discrepancy`) by PGD in the same
  ball (the min-max problem of Eq. 21, after Boopathy et al. 2020); ``adversarial_ce`` puts the
  cross-entropy on ``x'`` instead.

Both attacking objectives ramp epsilon linearly from 0 to ``epsilon`` over the first ``ramp``
fraction of training (and the step size with it). Example::

    objective = create_objective("interpretation-robust", gamma=0.01, interpreter="cam")
    loss, stats = objective.loss(classifier, x, y, progress=0.3, generator=generator)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.attacks.discrepancy import BenignMaps, two_class_discrepancy
from idls.attacks.pgd import projected_gradient_descent
from idls.core.options import Options, check_non_negative, option
from idls.errors import UserError
from idls.registry import Registry
from idls.system import Classifier

OBJECTIVES: Registry[type[TrainingObjective]] = Registry("training objective")


@dataclass(frozen=True, eq=False, kw_only=True)
class ObjectiveOptions(Options):
    """Options every training objective takes (none so far)."""

    kind: ClassVar[str] = "training objective"


@dataclass(frozen=True, eq=False, kw_only=True)
class WorstCaseOptions(ObjectiveOptions):
    """The inner maximisation of the attacking objectives (defaults after Boopathy et al. 2020)."""

    epsilon: float = option(8 / 255, "L_inf radius of the worst-case search on the [0, 1] pixel scale")
    step_size: float = option(2 / 255, "PGD step of the worst-case search (scaled with epsilon during the ramp)")
    steps: int = option(10, "PGD steps of the worst-case search")
    ramp: float = option(0.3, "fraction of training over which epsilon grows linearly from 0 to epsilon")

    def check(self) -> None:
        check_non_negative(epsilon=self.epsilon, step_size=self.step_size, steps=self.steps)
        if not 0 <= self.ramp <= 1:
            raise UserError(f"ramp must lie in [0, 1] (a fraction of training), got {self.ramp}")

    def radius_at(self, progress: float) -> float:
        """Epsilon at ``progress`` (0 = start of training, 1 = end)."""
        return self.epsilon if self.ramp == 0 else self.epsilon * min(1.0, progress / self.ramp)


class TrainingObjective:
    """Base class: ``loss(classifier, x, y, progress, generator) -> (scalar loss, stats)``."""

    name: ClassVar[str] = "objective"
    Options: ClassVar[type[ObjectiveOptions]] = ObjectiveOptions

    def __init__(self, **options: Any) -> None:
        self.options = type(self).Options.from_user(self.name, options)

    def describe(self) -> str:
        """Name and the options that differ from their defaults, e.g. ``interpretation-robust(gamma=0.1)``."""
        changed = {k: v for k, v in self.options.as_dict().items() if v != type(self).Options.default(k)}
        inner = ",".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(changed.items()))
        return f"{self.name}({inner})" if inner else self.name

    def passes_per_image(self) -> int:
        """Forward + backward passes of the classifier per training image and step (a cost unit)."""
        return 1

    def loss(self, classifier: Classifier, x: Tensor, y: Tensor, *, progress: float,
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss of a batch ``x`` ``B x C x H x W`` in [0, 1] with labels ``y`` ``B``, and named
        statistics (means over the batch) for the progress bar and the history."""
        raise NotImplementedError


@OBJECTIVES.register("standard")
class Standard(TrainingObjective):
    """Cross-entropy on the clean batch."""

    name = "standard"

    def loss(self, classifier, x, y, *, progress, generator):
        logits = classifier(x)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "accuracy": _accuracy(logits, y)}


def worst_case(classifier: Classifier, x: Tensor, options: WorstCaseOptions, progress: float,
               generator: torch.Generator, loss_to_maximise) -> Tensor:
    """PGD from a random start maximising ``loss_to_maximise(it) -> B`` in the ramped ball (model in eval mode)."""
    radius = options.radius_at(progress)
    if radius == 0 or options.steps == 0:
        return x.detach()
    step = options.step_size * radius / options.epsilon
    was_training = classifier.training
    classifier.eval()
    try:
        found = projected_gradient_descent(
            x, lambda it: -loss_to_maximise(it), success_fn=lambda it, ev: torch.zeros_like(ev.loss, dtype=torch.bool),
            epsilon=radius, step_size=step, steps=options.steps, random_start=True, generator=generator)
    finally:
        classifier.train(was_training)
    return found.x_adv.detach()


@OBJECTIVES.register("adversarial")
class Adversarial(TrainingObjective):
    """Madry et al.: cross-entropy on the PGD image of each training image."""

    name = "adversarial"
    Options = WorstCaseOptions
    options: WorstCaseOptions

    def passes_per_image(self) -> int:
        return self.options.steps + 1

    def loss(self, classifier, x, y, *, progress, generator):
        x_adv = worst_case(classifier, x, self.options, progress, generator,
                           lambda it: F.cross_entropy(classifier(it.x), y[it.index], reduction="none"))
        logits = classifier(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": float(loss.detach()), "adv_accuracy": _accuracy(logits, y),
                      "epsilon": self.options.radius_at(progress) * 255}


@dataclass(frozen=True, eq=False, kw_only=True)
class InterpretationRobustOptions(WorstCaseOptions):
    """Options of :class:`InterpretationRobust`."""

    untyped: ClassVar[tuple[str, ...]] = ("interpreter_options",)

    gamma: float = option(0.01, "weight of the worst-case interpretation discrepancy (Eq. 21)")
    interpreter: str = option("cam", "the interpreter whose maps are made robust (cam, gradcam, grad, ...)")
    interpreter_options: dict = option(factory=dict, help="options of the interpreter")
    adversarial_ce: bool = option(False, "cross-entropy on the worst-case image instead of the clean one")

    def check(self) -> None:
        super().check()
        check_non_negative(gamma=self.gamma)
        from idls.interpreters.registry import interpreter_class

        cls = interpreter_class(self.interpreter)  # unknown names: one line with the list
        if cls.map_is_optimised:
            raise UserError(f"interpretation-robust training differentiates its interpreter's map, and "
                            f"{self.interpreter!r} is itself an optimisation; choose cam, gradcam or grad")
        self._set("interpreter_options", dict(self.interpreter_options or {}))


@OBJECTIVES.register("interpretation-robust")
class InterpretationRobust(TrainingObjective):
    """Eq. 21: ``CE + gamma * D_worst`` with ``D`` the 2-class discrepancy of Eq. 20."""

    name = "interpretation-robust"
    Options = InterpretationRobustOptions
    options: InterpretationRobustOptions

    def passes_per_image(self) -> int:
        # each step maps two classes (one pass for CAM, two otherwise); the update maps both images
        return self.options.steps + 3

    def loss(self, classifier, x, y, *, progress, generator):
        from idls.interpreters import create_interpreter

        interpreter = create_interpreter(self.options.interpreter, classifier, **self.options.interpreter_options)
        view = interpreter.for_joint_attack()
        was_training = classifier.training
        classifier.eval()
        try:
            with torch.no_grad():
                benign_fixed = BenignMaps.of(interpreter, x, y)
        finally:
            classifier.train(was_training)
        x_adv = worst_case(classifier, x, self.options, progress, generator,
                           lambda it: two_class_discrepancy(view, benign_fixed.select(it.index), it.x))
        benign = BenignMaps.of(interpreter, x, y, benign_fixed.second, create_graph=True)
        discrepancy = two_class_discrepancy(interpreter, benign, x_adv).mean()
        logits = classifier(x_adv if self.options.adversarial_ce else x)
        ce = F.cross_entropy(logits, y)
        loss = ce + self.options.gamma * discrepancy
        return loss, {"loss": float(loss.detach()), "ce": float(ce.detach()), "discrepancy": float(discrepancy.detach()),
                      "accuracy": _accuracy(logits, y), "epsilon": self.options.radius_at(progress) * 255}


def _accuracy(logits: Tensor, y: Tensor) -> float:
    return float((logits.detach().argmax(1) == y).float().mean())


def create_objective(name: str, **options: Any) -> TrainingObjective:
    """A registered training objective with its options (unknown names or options: one-line errors)."""
    return OBJECTIVES.get(name)(**options)


def list_objectives() -> list[str]:
    return OBJECTIVES.names()


__all__ = ["OBJECTIVES", "Adversarial", "InterpretationRobust", "InterpretationRobustOptions", "ObjectiveOptions",
           "Standard", "TrainingObjective", "WorstCaseOptions", "create_objective", "list_objectives", "worst_case"]
