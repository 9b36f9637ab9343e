"""The attack contract: :class:`Attack`, :class:`AttackResult`, the ``ATTACKS`` registry.

An attack turns a batch of [0, 1] images into adversarial images. Subclasses
implement :meth:`Attack._perturb` (the optimisation); :meth:`Attack.run` does
the parts every attack shares: input checks, target selection by
:class:`~idls.attacks.targets.TargetMode`, timing, and one final evaluation of
the returned images with the real classifier, so that ``success``, ``pred`` and
``confidence`` always mean the same thing (docs/design.md §5) whatever the attack
optimised internally (a smooth surrogate, a joint loss...).

Shared loop helpers live here too: :func:`prediction_loss` and
:func:`flush_denormal`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from idls import metrics
from idls.attacks.options import AttackOptions
from idls.attacks.targets import TargetMode, least_likely_targets, random_targets
from idls.attacks.threats import Threat
from idls.errors import UserError, check_images
from idls.optim import Perturbation, flush_denormal
from idls.registry import Registry
from idls.system import Classifier


@dataclass
class AttackResult:
    """Adversarial images and per-sample bookkeeping of one attacked batch.

    Attributes:
        x_adv: ``B x C x H x W`` adversarial images in [0, 1].
        success: ``B`` bool (targeted: pred == target; untargeted: pred != label).
        pred: ``B`` predicted classes of ``x_adv``.
        target: ``B`` target classes; for untargeted attacks the true labels.
        confidence: ``B`` softmax probability of the target class (targeted) or
            of the predicted class (untargeted).
        iterations_to_success: ``B`` long, the number of steps after which the
            attack first succeeded (0: the start point already did), -1 never.
        iterations_run: steps the loop ran (the maximum over the batch).
        seconds: wall-clock time of :meth:`Attack.run` for the batch.
        cpu_seconds: CPU time of this process over the same span (all its threads): unlike ``seconds``
            it does not grow when other work shares the machine's cores.
        targeted: whether ``target`` holds attack targets or true labels.
        extras: attack-specific per-sample tensors (e.g. ``'score'``).
    """

    x_adv: Tensor
    success: Tensor
    pred: Tensor
    target: Tensor
    confidence: Tensor
    iterations_to_success: Tensor
    iterations_run: int
    seconds: float
    targeted: bool = True
    extras: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: float | None = None

    def __len__(self) -> int:
        return int(self.x_adv.shape[0])

    @property
    def success_rate(self) -> float:
        return metrics.attack_success_rate(self.success)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(len(self), 1)


class Attack:
    """Base class of all attacks: ``run(classifier, x, labels, targets=None) -> AttackResult``.

    An attack's options are declared once, by its :attr:`Options` dataclass
    (:mod:`idls.attacks.options`); the constructor takes them as keywords,
    validates them there, keeps the resolved object as :attr:`options` and
    mirrors each one as an attribute (``attack.steps``). Every attack takes
    ``mode``, ``seed`` and ``progress`` (:class:`~idls.attacks.options.AttackOptions`).
    """

    name: ClassVar[str] = "attack"
    #: the options dataclass: the one declaration of this attack's options
    Options: ClassVar[type[AttackOptions]] = AttackOptions
    #: the joint attacks can run on this attack's optimiser (``--framework NAME``): which row set of
    #: :mod:`idls.attacks.defaults` they then use (``None``: not a framework)
    joint_table: ClassVar[str | None] = None
    #: how a joint attack drives it: ``'steps'`` (projected gradient steps on the shared engine,
    #: :meth:`step_rule`) or ``'adam'`` (an optimiser with evaluate / score hooks, ``optimise_joint``)
    joint_kind: ClassVar[str | None] = None
    #: the threat model has an epsilon ball (StAdv bounds a flow instead)
    uses_epsilon: ClassVar[bool] = True
    #: the attack is fitted once on a data set (``fit(classifier, data)``) before ``run`` applies it
    needs_fit: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = type(self).Options.from_user(self.name, options)
        for key in self.options.names():
            setattr(self, key, getattr(self.options, key))
        self.mode: TargetMode
        self.seed: int
        self.progress: bool
        #: data-set positions ``B`` of the batch being attacked (``run(indices=...)``), or ``None``; per-image
        #: random choices (targets, patch target maps) use them so they do not depend on the batching
        self.batch_indices: Tensor | None = None

    # -- public ---------------------------------------------------------------------
    def run(
        self,
        classifier: Classifier,
        x: Tensor,
        labels: Tensor,
        targets: Tensor | None = None,
        *,
        indices: Tensor | None = None,
    ) -> AttackResult:
        """Attack a batch.

        Args:
            classifier: the model under attack, in eval mode (float32 or float64 weights).
            x: ``B x C x H x W`` images in [0, 1]; another float dtype or the channels-last layout is
                converted first (``classifier.prepare``), so ``x_adv`` is in the classifier's dtype.
            labels: ``B`` true classes.
            targets: ``B`` target classes (not for untargeted mode); default: chosen by
                the mode (given targets are used as they are, e.g. precomputed least-likely ones).
            indices: optional ``B`` dataset positions, so random targets do not depend on batching.

        Raises:
            UserError: bad images, labels or targets, or the classifier's logits hold NaN or Inf.
        """
        check_images(x)
        if classifier.training:
            raise UserError("the classifier is in training mode; call classifier.eval() before attacking")
        x = classifier.prepare(x)  # half precision, float64 or channels-last: as x.float().contiguous()
        labels = self._check_classes(labels, x, classifier.num_classes, "labels")
        classifier.check_logits_of(x)  # a model that outputs NaN fails here, not after an attack on its noise
        start, cpu_start = time.perf_counter(), time.process_time()
        targets = self.resolve_targets(classifier, x, labels, targets, indices)
        self.batch_indices = None if indices is None else torch.as_tensor(indices).long()
        outcome = self._perturb(classifier, x, labels, targets)
        self._check_threat(x, outcome.x_adv)
        with torch.no_grad():
            logits = classifier.check_logits(classifier(outcome.x_adv))
        pred = logits.argmax(1)
        if targets is not None:
            ok = metrics.success(pred, target=targets)
            confidence = metrics.target_confidence(logits, targets)
        else:
            ok = metrics.success(pred, label=labels)
            confidence = metrics.target_confidence(logits, pred)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        extras = dict(outcome.extras)
        if outcome.score is not None:
            extras.setdefault("score", outcome.score)
        return AttackResult(
            x_adv=outcome.x_adv.detach(),
            success=ok,
            pred=pred,
            target=targets if targets is not None else labels,
            confidence=confidence,
            iterations_to_success=outcome.iterations_to_success,
            iterations_run=int(outcome.iterations_run),
            seconds=seconds,
            targeted=targets is not None,
            extras=extras,
            cpu_seconds=cpu_seconds,
        )

    def resolve_targets(
        self,
        classifier: Classifier,
        x: Tensor,
        labels: Tensor,
        targets: Tensor | None,
        indices: Tensor | None = None,
    ) -> Tensor | None:
        """Targets ``B`` for targeted/least-likely modes, ``None`` for untargeted."""
        if targets is not None:
            if self.mode is TargetMode.UNTARGETED:
                raise UserError("targets were given but the attack mode is 'untargeted'; use mode='targeted'")
            targets = self._check_classes(targets, x, classifier.num_classes, "targets")
            same = targets == labels
            if bool(same.any()):
                raise UserError(
                    f"{int(same.sum())} target(s) equal the true label (samples {same.nonzero().flatten().tolist()[:5]}); "
                    "choose wrong classes as targets"
                )
            return targets
        if self.mode is TargetMode.UNTARGETED:
            return None
        if self.mode is TargetMode.LEAST_LIKELY:
            with torch.no_grad():
                return least_likely_targets(classifier(x))
        return random_targets(labels, classifier.num_classes, self.seed, indices)

    @classmethod
    def interpreter_unavailable_reason(cls, interpreter: type) -> str | None:
        """Why this attack cannot be crafted against interpreters of class ``interpreter``, or ``None``
        (attacks that take an interpreter; experiments skip the pairs with a reason)."""
        return None

    def variant(self) -> str:
        """A short label of the options that make this configuration another method of the same attack
        (a universal attack's norm, a generator's architecture and loss); recorded with every result
        so that analyses can tell the configurations apart. Default: none."""
        return ""

    def threat(self) -> Threat:
        """The set of images this attack may return (checked after every run); default: the pixel box."""
        return Threat()

    def _check_threat(self, x: Tensor, x_adv: Tensor) -> None:
        inside = self.threat().contains(x, x_adv.to(x))
        if not bool(inside.all()):
            outside = (~inside).nonzero().flatten().tolist()[:5]
            raise RuntimeError(f"{self.name} returned images outside its threat set ({self.threat().describe()}) "
                               f"for samples {outside}: a bug in the attack, please report it")

    # -- for subclasses ---------------------------------------------------------------
    def _perturb(self, classifier: Classifier, x: Tensor, labels: Tensor, targets: Tensor | None) -> Perturbation:
        """The optimisation. ``targets`` is ``None`` for untargeted attacks."""
        raise NotImplementedError

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh generator seeded with ``self.seed`` (a run is reproducible on its own)."""
        return torch.Generator(device=device).manual_seed(self.seed)

    @staticmethod
    def _check_classes(classes: Tensor, x: Tensor, num_classes: int, name: str) -> Tensor:
        if not isinstance(classes, Tensor) or classes.dim() != 1 or classes.shape[0] != x.shape[0]:
            shape = tuple(classes.shape) if isinstance(classes, Tensor) else type(classes).__name__
            raise UserError(f"{name} must be a 1-D tensor with one class per image ({x.shape[0]}), got {shape}")
        if classes.is_floating_point():
            raise UserError(f"{name} must be integer class indices, got {classes.dtype}")
        classes = classes.to(device=x.device, dtype=torch.long)
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise UserError(f"{name} must lie in [0, {num_classes - 1}]")
        return classes

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({opts})"


# ---------------------------------------------------------------------------------
# Shared loop helpers
# ---------------------------------------------------------------------------------


def prediction_loss(logits: Tensor, classes: Tensor, *, targeted: bool, label_smoothing: float = 0.0) -> Tensor:
    """Per-sample prediction loss ``B`` to *minimise*.

    Targeted: cross-entropy towards ``classes`` (the targets). Untargeted: minus
    the cross-entropy of ``classes`` (the true labels), i.e. push away from them.
    ``label_smoothing`` follows :func:`torch.nn.functional.cross_entropy`.
    """
    ce = F.cross_entropy(logits, classes, reduction="none", label_smoothing=label_smoothing)
    return ce if targeted else -ce


# ---------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------

ATTACKS: Registry[Callable[..., Attack]] = Registry("attack")


def attack_options(attack: type[Attack]) -> list[str]:
    """The option names an attack class accepts (the fields of its ``Options``)."""
    return attack.Options.names()


def create_attack(name: str, **options: Any) -> Attack:
    """Build attack ``name`` (options are the fields of its ``Options``, e.g. ``epsilon=8/255``)."""
    return ATTACKS.get(name)(**options)


def list_attacks() -> list[str]:
    return ATTACKS.names()


def list_frameworks() -> list[str]:
    """Attacks the joint attacks can run on (``--framework``): those whose class declares a ``joint_table``."""
    return [name for name in ATTACKS.names() if getattr(ATTACKS.get(name), "joint_table", None) is not None]


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Perturbation",
    "attack_options",
    "create_attack",
    "flush_denormal",
    "list_attacks",
    "list_frameworks",
    "prediction_loss",
]
