"""``interpretation-pgd``: an attack on the explanation alone (paper 000 §VIII, Table VII's lower half).

Within an L_inf ball it maximises the 2-class interpretation discrepancy of Eq. 20
(:mod:`idls.attacks.discrepancy`) between the benign image's maps and the perturbed image's maps,
while a cross-entropy term keeps the true class, so the map changes and the label does not (the
setting in which a user would trust the changed explanation). Each sample keeps, among the iterates
still classified correctly, the one with the largest discrepancy of the real interpreter's maps.

The results are judged by the map metrics of the records (Kendall's tau between the benign and the
adversarial map, L1, IoU); ``success`` keeps its usual untargeted meaning (the label changed), which
this attack tries to avoid. Gradient interpreters are differentiated through their smooth-ReLU twin
(:meth:`~idls.interpreters.base.Interpreter.for_joint_attack`); MASK, whose map is an optimisation,
is refused. Example::

    attack = create_attack("interpretation-pgd", interpreter="cam", epsilon=8 / 255)
    result = attack.run(classifier, x, labels)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.attacks.base import ATTACKS, Attack, Perturbation
from idls.attacks.discrepancy import BenignMaps, two_class_discrepancy
from idls.attacks.juap_objective import optimised_map_reason
from idls.attacks.options import AttackOptions, check_non_negative, option
from idls.attacks.pgd import Evaluation, Iterate, projected_gradient_descent
from idls.attacks.targets import TargetMode
from idls.attacks.threats import LpBall
from idls.core.digests import image_fingerprints
from idls.errors import UserError
from idls.interpreters import Interpreter, interpreter_for
from idls.interpreters.registry import interpreter_class
from idls.system import Classifier


@dataclass(frozen=True, eq=False, kw_only=True)
class InterpretationPGDOptions(AttackOptions):
    """Options of :class:`InterpretationPGD`."""

    untyped: ClassVar[tuple[str, ...]] = ("interpreter", "interpreter_options")

    mode: TargetMode = option(TargetMode.UNTARGETED, "always 'untargeted': the attack changes the map, not the label")
    interpreter: Any = option(help="an Interpreter of the attacked classifier, or a registry name")
    interpreter_options: dict = option(factory=dict, help="options when interpreter is a name")
    epsilon: float = option(8 / 255, "L_inf radius on the [0, 1] pixel scale")
    step_size: float | None = option(None, "step per iteration (default epsilon / 4)")
    steps: int = option(20, "gradient steps")
    random_start: bool = option(True, "start from a uniform random point of the ball, drawn per image from the seed "
                                      "and the image's content (so it does not depend on the batch)")
    label_weight: float = option(1.0, "weight of the cross-entropy that keeps the true class")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode is not TargetMode.UNTARGETED:
            raise UserError("interpretation-pgd attacks the explanation and keeps the label, so it is untargeted; "
                            "drop mode= or set mode=untargeted")
        if not isinstance(self.interpreter, (Interpreter, str)):
            raise UserError(f"interpreter must be an Interpreter or a registry name, got {type(self.interpreter).__name__}")
        check_non_negative(epsilon=self.epsilon, steps=self.steps, label_weight=self.label_weight)
        self._set("step_size", float(self.epsilon / 4 if self.step_size is None else self.step_size))
        check_non_negative(step_size=self.step_size)
        self._set("interpreter_options", dict(self.interpreter_options or {}))
        reason = optimised_map_reason("interpretation-pgd", self.interpreter if isinstance(self.interpreter, Interpreter)
                                      else interpreter_class(self.interpreter))
        if reason is not None:
            raise UserError(reason)


@ATTACKS.register("interpretation-pgd")
class InterpretationPGD(Attack):
    """PGD maximising the Eq. 20 interpretation discrepancy while keeping the label (options:
    :class:`InterpretationPGDOptions`, ``idls options interpretation-pgd``)."""

    name = "interpretation-pgd"
    Options = InterpretationPGDOptions
    interpreter: Interpreter | str
    interpreter_options: dict[str, Any]
    epsilon: float
    step_size: float
    steps: int
    random_start: bool
    label_weight: float

    @classmethod
    def interpreter_unavailable_reason(cls, interpreter: type) -> str | None:
        return optimised_map_reason(cls.name, interpreter)

    def threat(self) -> LpBall:
        return LpBall("linf", self.epsilon)

    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        real = interpreter_for(self.interpreter, classifier, **self.interpreter_options)
        view = real.for_joint_attack()
        benign = BenignMaps.of(real, x, labels)

        def loss_fn(it: Iterate) -> Evaluation:
            active = benign.select(it.index)
            logits = classifier(it.x)
            keep = F.cross_entropy(logits, active.labels, reduction="none")
            discrepancy = two_class_discrepancy(view, active, it.x)
            return Evaluation(self.label_weight * keep - discrepancy, logits, {"discrepancy": discrepancy.detach()})

        def success_fn(it: Iterate, evaluation: Evaluation) -> Tensor:
            return evaluation.logits.argmax(1) == labels[it.index]  # candidates: iterates that keep the label

        def score_fn(it: Iterate, evaluation: Evaluation) -> Tensor:
            if real is view:  # the map in the loss is the real one
                return -evaluation.extras["discrepancy"]
            with torch.enable_grad():
                return -two_class_discrepancy(real, benign.select(it.index), it.x.detach()).detach()

        return projected_gradient_descent(
            x, loss_fn, success_fn=success_fn, score_fn=score_fn, epsilon=self.epsilon, step_size=self.step_size,
            steps=self.steps, norm="linf", x_init=self.start_points(x) if self.random_start else None,
            progress=self.progress, description=self.name,
        )

    def start_points(self, x: Tensor) -> Tensor:
        """Uniform points of the ball around ``x`` ``B x C x H x W``, each drawn from the seed and its image.

        The benign point itself would be a poor start: the L1 discrepancy has no gradient where it is zero.
        """
        noise = [torch.empty(x.shape[1:]).uniform_(-self.epsilon, self.epsilon,
                                                   generator=torch.Generator().manual_seed(self.seed ^ int(fp)))
                 for fp in image_fingerprints(x)]
        return (x + torch.stack(noise).to(x)).clamp(0, 1)


__all__ = ["InterpretationPGD", "InterpretationPGDOptions"]
