"""Grad-CAM (Selvaraju et al. 2017), docs/design.md §3.

    alpha_k = mean_{i,j} d logit_c / d A_k[i, j]          A = classifier.features(x)
    map     = minmax( ReLU( sum_k alpha_k * A_k ) )        B x h x w (native resolution)

Works for any registered model (no GAP head needed, e.g. VGG-16). With
``create_graph=True`` the channel weights are themselves differentiated
(double back-propagation), so the map is differentiable w.r.t. x.
pytorch-grad-cam computes the same map and then resizes it to the input size;
here it stays at the feature map's resolution (upsample with
:func:`idls.system.upsample_maps` for display).
"""

from __future__ import annotations

import torch
from torch import Tensor

from idls.interpreters.base import Interpreter, JointOutput
from idls.interpreters.cam import weighted_feature_sum
from idls.interpreters.grad import class_indices, class_score, normalize_magnitudes
from idls.interpreters.registry import INTERPRETERS
from idls.system import Classifier


def gradcam_map(
    classifier: Classifier, x: Tensor, target: Tensor | int, *, normalize: bool = True, create_graph: bool = False
) -> Tensor:
    """Grad-CAM ``B x h x w`` of the explained classes' logits.

    Args:
        classifier: any classifier (body/head split at the last conv feature map).
        x: images ``B x C x H x W`` in [0, 1].
        target: explained classes (``B`` long or int).
        normalize: min-max to [0, 1] per sample (``False``: the raw ReLU'd map).
        create_graph: keep the map differentiable w.r.t. ``x``.
    """
    cls = class_indices(target, x, classifier.num_classes)
    with torch.enable_grad():
        features = classifier.features(x)
        if not features.requires_grad:  # frozen parameters and a constant input
            features = features.detach().requires_grad_(True)
        logits = classifier.logits_from_features(features)
        return gradcam_from_features(features, logits, cls, normalize=normalize, create_graph=create_graph)


def gradcam_from_features(features: Tensor, logits: Tensor, cls: Tensor, *, normalize: bool = True,
                          create_graph: bool = False) -> Tensor:
    """Grad-CAM ``B x h x w`` from the feature map ``A`` (``B x K x h x w``) and the logits computed from it."""
    score = class_score(logits, cls, "logit")
    (grad,) = torch.autograd.grad(score, features, create_graph=create_graph)
    cam = torch.relu(weighted_feature_sum(features, grad.mean(dim=(2, 3))))
    return normalize_magnitudes(cam) if normalize else cam


@INTERPRETERS.register("gradcam")
class GradCAMInterpreter(Interpreter):
    """Grad-CAM at the last feature map's resolution, ReLU, min-max normalised."""

    name = "gradcam"
    taxonomy = "representation"
    display_order = 40
    family = "cam"

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        return gradcam_map(self.classifier, x, target, create_graph=create_graph)

    def joint_forward(self, x: Tensor, classes: Tensor | None) -> JointOutput:
        """One forward; the channel weights are differentiated again (double back-propagation)."""
        features, logits = self.classifier.features_and_logits(x)
        classes = logits.argmax(1).detach() if classes is None else classes
        return JointOutput(logits, gradcam_from_features(features, logits, classes, create_graph=True))
