"""The objective of the generative joint attacks of paper 004 (JUAP, JAP; GAP with ``lam = 0``).

Per image ``i`` of a batch, with ``x_hat = clamp(x + n_hat, 0, 1)``::

    L_i = max(L_cls_i, floor) + lam * (shift_i + encoder_weight * encoder_shift_i)        (Eq. 16)

* ``L_cls`` (Eqs. 7-9), on log-cross-entropy: ``'ce'`` ``-log CE(f(x_hat), f(x))`` (push away
  from the clean prediction), ``'cmin'`` ``log CE(f(x_hat), c_min)`` with ``c_min`` the clean
  least-likely class (the paper's default), ``'target'`` ``log CE(f(x_hat), t)``. The floor
  (``delta = -0.8`` in the paper) stops the push on images already fooled with margin, so
  the generator then serves the interpreter term.
* ``shift`` (Eq. 13): ``||I(x_hat) - I(x)||_2 / sqrt(h * w)``, the root-mean-square
  difference between the differentiable map of ``x_hat`` (explaining its own prediction,
  as a user would see it) and the real benign map (explaining the clean prediction);
  dividing by the map's size makes ``lam`` independent of the map resolution.
* ``encoder_shift`` (RTS): the same on the interpreter's encoder logits.

The paper's ``lam`` in [1e-4, 3e-3] multiplies an un-normalised L2 norm of 224 x 224
maps; ours multiplies a per-pixel RMS, hence larger values (:func:`default_lam`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.attacks.targets import least_likely_targets
from idls.errors import UserError
from idls.interpreters import Interpreter
from idls.system import Classifier

#: classifier losses (Eqs. 7, 8, 9 of paper 004)
CLASSIFIER_LOSSES = ("ce", "cmin", "target")
#: the paper's floor of the classifier loss (``delta`` of Eq. 16)
DEFAULT_FLOOR = -0.8
#: default interpretation weights per interpreter family, in this module's units (RMS map shift)
DEFAULT_LAM = {"cam": 1.0, "grad": 1.0, "rts": 1.0}
_TINY = 1e-12


def optimised_map_reason(attack: str, interpreter: type[Interpreter] | Interpreter) -> str | None:
    """Why a generator attack cannot differentiate an interpreter: its map is itself an optimisation (MASK)."""
    if interpreter.map_is_optimised:
        return (f"{attack} cannot differentiate interpreter {interpreter.name!r}: its map is itself an "
                "optimisation; choose cam, gradcam, rts or grad")
    return None


def default_lam(interpreter: Interpreter) -> float:
    """The default ``lam`` for an interpreter, by its family."""
    if interpreter.family not in DEFAULT_LAM:
        raise UserError(f"interpreter {interpreter.name!r} (family {interpreter.family!r}) has no default lam for "
                        f"the generative joint attacks; pass lam=...")
    return DEFAULT_LAM[interpreter.family]


@dataclass
class Reference:
    """Benign quantities of the images, per image (all ``B``-leading, on one device).

    Attributes:
        pred: ``B`` clean predictions.
        least_likely: ``B`` clean least-likely classes.
        maps: ``B x h x w`` real benign maps of the clean predictions, or ``None`` (no interpreter).
        encoder_logits: ``B x N`` the interpreter's encoder logits on the clean images, or ``None``.
    """

    pred: Tensor
    least_likely: Tensor
    maps: Tensor | None = None
    encoder_logits: Tensor | None = None

    def take(self, index: Tensor) -> Reference:
        """The rows ``index``."""
        pick = lambda t: None if t is None else t[index.to(t.device)]  # noqa: E731
        return Reference(pick(self.pred), pick(self.least_likely), pick(self.maps), pick(self.encoder_logits))

    def to(self, device: torch.device | str) -> Reference:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Reference(move(self.pred), move(self.least_likely), move(self.maps), move(self.encoder_logits))


@torch.no_grad()
def benign_reference(classifier: Classifier, interpreter: Interpreter | None, images: Tensor,
                     chunk: int = 256) -> Reference:
    """Clean predictions, least-likely classes and (with an interpreter) benign maps of ``images`` ``N x C x H x W``.

    Computed once per fit (the model is fixed), ``chunk`` images at a time on the classifier's device;
    returned on the CPU.
    """
    device = classifier.device
    parts: dict[str, list[Tensor]] = {"pred": [], "least": [], "maps": [], "encoder": []}
    for x in images.split(chunk):
        x = x.to(device)
        logits = classifier(x)
        pred = logits.argmax(1)
        parts["pred"].append(pred.cpu())
        parts["least"].append(least_likely_targets(logits).cpu())
        if interpreter is not None:
            with torch.enable_grad():
                parts["maps"].append(interpreter.attribute(x, pred).detach().cpu())
                if interpreter.has_encoder:
                    encoder = interpreter.joint_forward(x.clone().requires_grad_(True), pred).encoder_logits
                    parts["encoder"].append(encoder.detach().cpu())
    cat = lambda key: torch.cat(parts[key]) if parts[key] else None  # noqa: E731
    return Reference(cat("pred"), cat("least"), cat("maps"), cat("encoder"))


def classifier_loss(logits: Tensor, kind: str, reference: Reference, target_class: Tensor | None = None) -> Tensor:
    """``L_cls`` ``B`` of Eqs. 7-9 (``target_class``: ``B`` targets for ``'target'``)."""
    if kind == "ce":
        return -F.cross_entropy(logits, reference.pred, reduction="none").clamp_min(_TINY).log()
    if kind == "cmin":
        return F.cross_entropy(logits, reference.least_likely, reduction="none").clamp_min(_TINY).log()
    if kind == "target":
        if target_class is None:
            raise UserError("the 'target' loss needs a target class; pass target_class=C (or use mode='targeted')")
        return F.cross_entropy(logits, target_class, reduction="none").clamp_min(_TINY).log()
    raise UserError(f"unknown classifier loss {kind!r}; choose one of: {', '.join(CLASSIFIER_LOSSES)}")


def rms_shift(current: Tensor, benign: Tensor) -> Tensor:
    """``||current - benign||_2 / sqrt(size)`` per row ``B`` (``B x ...`` each)."""
    return ((current - benign).flatten(1).pow(2).mean(1) + _TINY).sqrt()


@dataclass
class Terms:
    """The pieces of the objective for one batch, each ``B``.

    Attributes:
        total: the loss to minimise per image (Eq. 16).
        classifier: ``L_cls`` before the floor.
        shift: the map shift (zeros without an interpreter).
        logits: ``B x N`` logits at ``x_hat``.
    """

    total: Tensor
    classifier: Tensor
    shift: Tensor
    logits: Tensor


@dataclass
class JointGeneratorObjective:
    """Eq. 16 for a batch: ``max(L_cls, floor) + lam * (shift + encoder_weight * encoder_shift)``.

    Attributes:
        classifier: the attacked model (used alone when ``interpreter`` is ``None``).
        interpreter: the interpreter as :meth:`~idls.interpreters.base.Interpreter.for_joint_attack`
            returns it, or ``None`` (GAP: the classifier loss only).
        loss: ``'ce'``, ``'cmin'`` or ``'target'``.
        lam: weight of the interpretation term.
        floor: the classifier-loss floor (``delta`` of Eq. 16).
        encoder_weight: weight of the encoder shift relative to the map shift (RTS).
    """

    classifier: Classifier
    interpreter: Interpreter | None
    loss: str
    lam: float
    floor: float = DEFAULT_FLOOR
    encoder_weight: float = 1.0

    def __call__(self, x_hat: Tensor, reference: Reference, target_class: Tensor | None = None) -> Terms:
        """Terms at ``x_hat`` ``B x C x H x W`` (differentiable) for images with benign ``reference``."""
        if self.interpreter is None or self.lam == 0:
            logits = self.classifier(x_hat)
            shift = torch.zeros(x_hat.shape[0], device=x_hat.device)
            interpretation = shift
        else:
            out = self.interpreter.joint_forward(x_hat, None)
            logits = out.logits
            shift = rms_shift(out.maps, reference.maps)
            interpretation = shift
            if out.encoder_logits is not None and reference.encoder_logits is not None and self.encoder_weight:
                interpretation = shift + self.encoder_weight * rms_shift(out.encoder_logits, reference.encoder_logits)
        cls = classifier_loss(logits, self.loss, reference, target_class)
        total = cls.clamp_min(self.floor) + self.lam * interpretation
        return Terms(total=total, classifier=cls.detach(), shift=shift.detach(), logits=logits.detach())


__all__ = [
    "CLASSIFIER_LOSSES",
    "DEFAULT_FLOOR",
    "DEFAULT_LAM",
    "JointGeneratorObjective",
    "Reference",
    "Terms",
    "benign_reference",
    "classifier_loss",
    "default_lam",
    "optimised_map_reason",
    "rms_shift",
]
