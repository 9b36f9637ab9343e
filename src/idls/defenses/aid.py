"""AID: adversarial interpretation distillation for RTS (paper 001 §5 Q3, Appendix A2; docs/design.md §4a).

RTS is trained by minimising its own objective ``l_int`` (:mod:`idls.interpreters.rts_training`).
AID fine-tunes a trained masker by alternating, on every batch, one Adam step on ``l_int`` with
one Adam step (its own optimiser) on the distillation loss::

    l_aid(theta) = - mean_b || g(x_b; theta) - g(A(x_b); theta) ||_1      over the samples A fooled

where ``A`` is ADV² (PGD framework, targeted at a seeded random class other than the
prediction) crafted against the *current* masker on that batch, ``g(x)`` the map of the
classifier's prediction on ``x`` and ``g(A(x))`` the map of the prediction on ``A(x)`` (the
IDLS workflow: each map explains what the user is shown), both differentiated in theta.
L1 is the mean absolute difference per map cell (:func:`idls.metrics.map_l1`). Samples on
which the inner attack fails are left out: their maps explain the same class as the
benign map, and pushing them apart would teach RTS to be unstable under small noise.

The inner ADV² is a cheap schedule (``attack_warm_start`` + ``attack_steps`` iterations
instead of the evaluation's 40 + 300 on CIFAR); the training loop, its seeds, progress bar
and per-epoch checkpoint are :func:`~idls.interpreters.rts_training.train_rts`'s, which
calls :class:`AIDTerm` through its hook seam. Example::

    from idls.defenses.aid import train_aid
    aid_masker = train_aid(classifier, rts_masker, images, labels, epochs=2)
    save_rts(aid_masker, "rts_aid.safetensors", extra=aid_metadata(options))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from idls import metrics
from idls.attacks import create_attack
from idls.attacks.base import AttackResult
from idls.core.options import Options, check_non_negative, check_positive, option
from idls.errors import UserError
from idls.interpreters.rts import RTSInterpreter, RTSMasker
from idls.interpreters.rts_training import train_rts
from idls.system import Classifier

#: what the sidecar of an AID-trained checkpoint records under ``extra["defense"]``
DEFENSE_NAME = "aid"


@dataclass(frozen=True, eq=False, kw_only=True)
class AIDOptions(Options):
    """Options of AID fine-tuning (``idls train-rts --aid --aid-option KEY=VALUE``)."""

    kind: ClassVar[str] = "defence"

    epochs: int = option(2, "AID epochs over the training images (each batch: one RTS step, one AID step)")
    batch_size: int = option(32, "images per batch")
    lr: float = option(1e-4, "Adam learning rate of the RTS steps (cosine decay to 0)")
    aid_lr: float = option(1e-3, "Adam learning rate of the AID steps (their own optimiser, cosine decay to 0)")
    attack_warm_start: int = option(10, "inner ADV²: prediction-only PGD steps first")
    attack_steps: int = option(20, "inner ADV²: joint steps (the evaluation's CIFAR default is 300)")
    attack_step_size: float = option(0.5 / 255, "inner ADV²: sign-step size of the joint phase")
    epsilon: float = option(8 / 255, "inner ADV²: L_inf radius")
    anchor_benign: bool = option(True, "treat the benign map as a constant in the AID loss (only the "
                                        "adversarial maps move)")
    benign_weight: float = option(0.3, "weight of the benign distillation term of the AID step: map L1 between "
                                       "the masker and the initial one on the benign images")
    augment: bool = option(True, "random flips and shifts of each batch")
    fake_label_prob: float = option(0.3, "share of RTS-step samples explaining a random wrong class")
    seed: int = option(0, "seeds batch order, augmentation, the inner attack's targets and its start")

    def check(self) -> None:
        check_positive(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, aid_lr=self.aid_lr,
                       attack_step_size=self.attack_step_size, epsilon=self.epsilon)
        check_non_negative(attack_warm_start=self.attack_warm_start, attack_steps=self.attack_steps,
                           benign_weight=self.benign_weight)
        if self.attack_warm_start + self.attack_steps == 0:
            raise UserError("the inner ADV² needs at least one step; set attack_warm_start or attack_steps > 0")
        if not 0 <= self.fake_label_prob < 1:
            raise UserError(f"fake_label_prob must lie in [0, 1), got {self.fake_label_prob}")

    def attack_options(self) -> dict[str, Any]:
        """The inner ADV²'s options (besides its interpreter and seed)."""
        return {"warm_start": self.attack_warm_start, "steps": self.attack_steps,
                "joint_step_size": self.attack_step_size, "epsilon": self.epsilon}


def aid_options(options: AIDOptions | None = None, **values: Any) -> AIDOptions:
    """``options`` as given, or built from keyword values (unknown names: one-line :class:`UserError`)."""
    if options is not None and values:
        raise UserError("give AID either an AIDOptions or option keywords, not both")
    return options if options is not None else AIDOptions.from_user(DEFENSE_NAME, values)


class AIDTerm:
    """The AID loss of one batch against the current masker (an
    :class:`~idls.interpreters.rts_training.RTSTrainingHook`).

    Args:
        classifier: the explained classifier (eval mode).
        options: AID's options (the inner attack's schedule, ``aid_lr``, ``anchor_benign``, ``seed``).
    """

    def __init__(self, classifier: Classifier, options: AIDOptions, teacher: RTSMasker | None = None) -> None:
        if options.benign_weight > 0 and teacher is None:
            raise UserError("benign_weight > 0 needs the initial masker as the teacher of the benign maps")
        self.classifier = classifier
        self.options = options
        self.teacher = teacher
        self.lr = options.aid_lr

    def describe(self) -> dict:
        return {"defense": DEFENSE_NAME, **self.options.as_dict()}

    def adversarial(self, masker: RTSMasker, x: Tensor, pred: Tensor, step: int) -> AttackResult:
        """ADV² against the current ``masker`` on ``x`` (``B x C x H x W``) predicted as ``pred`` (``B``)."""
        interpreter = RTSInterpreter(self.classifier, masker=masker)
        attack = create_attack("adv2", interpreter=interpreter, seed=self.step_seed(step),
                               **self.options.attack_options())
        return attack.run(self.classifier, x, pred)

    def step_seed(self, step: int) -> int:
        """The inner attack's seed at training step ``step`` (targets differ from step to step)."""
        return self.options.seed * 1_000_003 + step

    def __call__(self, masker: RTSMasker, x: Tensor, y: Tensor, step: int) -> dict[str, Tensor]:
        """Craft ADV² against the current masker, then :meth:`terms`. ``y`` (the labels) is not used:
        the maps explain the classifier's predictions."""
        with torch.no_grad():
            pred = self.classifier(x).argmax(1)
        return self.terms(masker, x, pred, self.adversarial(masker, x, pred, step))

    def terms(self, masker: RTSMasker, x: Tensor, pred: Tensor, result: AttackResult) -> dict[str, Tensor]:
        """The AID step's loss and what it measures, for the adversarial images ``result`` of ``x``
        (``B x C x H x W``, predicted as ``pred``), differentiable in ``masker``'s weights:
        ``'loss'`` (l_aid, plus ``benign_weight`` x ``'benign_drift'`` with a teacher), ``'l1'`` (mean map
        L1 over the fooled samples), ``'success'`` (the inner attack's success rate)."""
        fooled = result.success.to(x.dtype)
        benign = masker(x, pred).mask
        adversarial = masker(result.x_adv, result.pred).mask
        l1 = metrics.map_l1(benign.detach() if self.options.anchor_benign else benign, adversarial)
        l1_fooled = (l1 * fooled).sum() / fooled.sum().clamp(min=1)
        terms = {"loss": -l1_fooled, "l1": l1_fooled.detach(), "success": fooled.mean()}
        if self.teacher is not None and self.options.benign_weight > 0:
            with torch.no_grad():
                taught = self.teacher(x, pred).mask
            drift = metrics.map_l1(benign, taught).mean()
            terms["loss"] = terms["loss"] + self.options.benign_weight * drift
            terms["benign_drift"] = drift.detach()
        return terms


def train_aid(
    classifier: Classifier,
    initial: RTSMasker,
    images: Tensor,
    labels: Tensor,
    options: AIDOptions | None = None,
    *,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    **values: Any,
) -> RTSMasker:
    """Fine-tune a trained RTS masker with AID on ``images`` (``N x 3 x H x W`` in [0, 1]) and ``labels`` (``N``).

    Args:
        initial: the trained masker (left unchanged; the result is a new masker).
        options: :class:`AIDOptions`, or give its fields as keywords (``epochs=3``).
        checkpoint: per-epoch checkpoint file to resume from (see :func:`train_rts`).

    Returns:
        the AID masker (RTS_A, eval mode); its history continues ``initial``'s, with the AID
        step's terms as ``extra_loss``, ``extra_l1`` and ``extra_success``.
    """
    options = aid_options(options, **values)
    return train_rts(
        classifier, images, labels, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
        seed=options.seed, progress=progress, selector_epochs=0, fake_label_prob=options.fake_label_prob,
        augment=options.augment, initial=initial, hook=AIDTerm(classifier, options, teacher=initial),
        checkpoint=checkpoint,
    )


def aid_metadata(options: AIDOptions) -> dict:
    """What the sidecar of an AID-trained checkpoint records (``save_rts(..., extra=...)``)."""
    return {"defense": DEFENSE_NAME, "aid_options": options.as_dict()}


__all__ = ["AIDOptions", "AIDTerm", "DEFENSE_NAME", "aid_metadata", "aid_options", "train_aid"]
