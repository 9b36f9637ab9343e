"""RTS: real-time saliency (Dabkowski & Gal 2017), docs/design.md §3.

A *masking model* predicts the attribution map in one forward pass:

    pyramid  = encoder(x)                       the classifier's own multi-scale features (frozen)
    gated    = deep * sigmoid(<deep_ij, E[c]> - confidence[c])   class selector on the deepest level
    a, b     = decoder(gated, pyramid)          U-Net: PixelShuffle upsampling + encoder skips
    mask     = |a| / (|a| + |b|)                B x H/4 x W/4, in [0, 1], high = important

The encoder is the explained classifier itself (its CIFAR ResNet stages, its
embedded CNN stages, its torchvision ResNet layer1-4), so RTS needs no second
backbone and its *encoder logits* are the classifier's logits: ADV²'s RTS trick
(0.1 * cross-entropy of the encoder logits towards the target) reads them from
:meth:`RTSInterpreter.attribute_and_logits`. The encoder is differentiable w.r.t.
``x`` (joint attacks back-propagate through RTS) but is never trained.

Decoder layout (output stride 4 = input/4): the deepest level enters at its own
stride and is upsampled x2 per step with PixelShuffle; at each stride the
encoder levels of that stride are concatenated (skips); levels *finer* than the
output (CIFAR layer1/2, embedded stages 1/2) are folded down losslessly with
PixelUnshuffle and merged at the output stride. On CIFAR ResNets the deepest
level is already input/4 (8 x 8), so there the decoder is the merge alone.

Training (two phases, class selector then decoder), saving and loading live in
:mod:`idls.interpreters.rts_training`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from idls.errors import UserError
from idls.interpreters import rts_training
from idls.interpreters.base import Interpreter, JointOutput
from idls.interpreters.grad import class_indices
from idls.interpreters.registry import INTERPRETERS
from idls.interpreters.rts_model import (
    OUTPUT_STRIDE,
    RTSConfig,
    RTSHead,
    RTSMasker,
    RTSOutput,
    model_family,
)
from idls.system import Classifier


# ----------------------------------------------------------------------------------
# Interpreter
# ----------------------------------------------------------------------------------
@INTERPRETERS.register("rts")
class RTSInterpreter(Interpreter):
    """RTS maps ``B x H/4 x W/4`` in [0, 1] from a trained masking model.

    Args:
        classifier: the explained classifier (a supported family, see :func:`pyramid_function`).
        masker: a trained :class:`RTSMasker` for this classifier.
        checkpoint: path of a masker saved by ``idls train-rts`` / :func:`save_rts`.

    With neither, the embedded CNN uses its cached trained masker (trained on first
    use); other models raise a :class:`UserError` that says how to train one.
    """

    name = "rts"
    taxonomy = "model-guided"
    display_order = 50
    family = "rts"
    has_encoder = True

    @classmethod
    def unavailable_reason(cls, classifier: Classifier, options: dict) -> str | None:
        if not classifier.has_feature_pyramid:
            return "the model exposes no feature pyramid for the RTS encoder"
        if not classifier.info.embedded and not (options.get("checkpoint") or options.get("masker")):
            return ("no RTS checkpoint; train one with `idls train-rts` and "
                    f"--set models.{classifier.info.name}.interpreter_options.rts.checkpoint=PATH")
        return None

    def __init__(self, classifier: Classifier, masker: RTSMasker | None = None, checkpoint: str | None = None) -> None:
        super().__init__(classifier)
        if masker is not None and checkpoint is not None:
            raise UserError("give RTS either a masker or a checkpoint, not both")
        if masker is None and checkpoint is not None:
            masker = rts_training.load_rts(classifier, checkpoint)
        elif masker is None:
            name = model_family(classifier.info.name)
            if not classifier.info.embedded:
                classifier.feature_pyramid_check()  # unsupported models get their own message first
                raise UserError(
                    f"RTS for model {name!r} needs a trained masking model; run `idls train-rts --model {name} "
                    "--data D` and pass its checkpoint (checkpoint=PATH)"
                )
            masker = rts_training.embedded_rts_masker(classifier)
        elif model_family(masker.classifier.info.name) != model_family(classifier.info.name):
            raise UserError(
                f"this RTS masker was built for {masker.classifier.info.name!r}, not {classifier.info.name!r}; "
                "train one for this model with `idls train-rts`"
            )
        self.masker = masker.eval()

    def attribute_and_logits(
        self, x: Tensor, target: Tensor | int | None = None, *, create_graph: bool = False
    ) -> RTSOutput:
        """Maps ``B x H/4 x W/4`` and the encoder logits ``B x N`` in one pass.

        With ``create_graph=True`` both stay differentiable w.r.t. ``x`` (ADV²'s RTS
        attack adds ``0.1 * CE(logits, y_t)`` to its loss).
        """
        x = self.classifier.prepare(x)
        cls = None if target is None else class_indices(target, x, self.classifier.num_classes)
        if create_graph:
            return self.masker(x, cls)
        with torch.no_grad():
            return self.masker(x.detach(), cls)

    def joint_forward(self, x: Tensor, classes: Tensor | None) -> JointOutput:
        """Masks and encoder logits in one encoder pass (the encoder is the classifier)."""
        out = self.attribute_and_logits(x, classes, create_graph=True)
        return JointOutput(out.logits, out.mask, encoder_logits=out.logits)

    def encoder_logits(self, x: Tensor) -> Tensor:
        """The RTS encoder's logits ``B x N`` (identical to the classifier's), differentiable."""
        return self.classifier.logits_from_features(self.masker.pyramid(x)[-1])

    def _explain(self, x: Tensor, target: Tensor | int | None, *, create_graph: bool) -> Tensor:
        """Maps ``B x H/4 x W/4`` in [0, 1]; the predicted class comes from the same encoder pass."""
        out = self.attribute_and_logits(x, target, create_graph=create_graph)
        if target is None and not create_graph:  # it explains the prediction of these logits
            self.classifier.check_logits(out.logits)
        return out.mask

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        return self.attribute_and_logits(x, target, create_graph=create_graph).mask


__all__ = ["OUTPUT_STRIDE", "RTSConfig", "RTSHead", "RTSInterpreter", "RTSMasker", "RTSOutput"]
