"""CAM (class activation mapping, Zhou et al. 2016), docs/design.md §3.

    map = minmax( sum_k w[c, k] * A_k )       A = classifier.features(x), B x K x h x w

w = the weights of the linear layer after global average pooling; no ReLU.
The map has the native resolution of the last feature map (8 x 8 on CIFAR
ResNets, 7 x 7 at 224 px). Because the head is GAP + linear, the un-normalised
map satisfies ``mean(map) + bias[c] == logit_c`` exactly (up to rounding).
Requires a GAP + linear head; other models raise :class:`UserError` (use Grad-CAM).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from idls.interpreters.base import Interpreter, JointOutput, minmax_normalize
from idls.interpreters.grad import class_indices
from idls.interpreters.registry import INTERPRETERS
from idls.system import Classifier


def weighted_feature_sum(features: Tensor, channel_weights: Tensor) -> Tensor:
    """``sum_k weights[b, k] * A[b, k]``: ``B x K x h x w`` and ``B x K`` -> ``B x h x w``."""
    return torch.einsum("bkhw,bk->bhw", features, channel_weights)


def class_activation_map(classifier: Classifier, x: Tensor, target: Tensor | int, normalize: bool = True) -> Tensor:
    """CAM ``B x h x w`` of the explained classes (differentiable w.r.t. ``x`` when grad is enabled).

    Args:
        classifier: a model with a GAP + linear head (``classifier.linear``).
        x: images ``B x C x H x W`` in [0, 1].
        target: explained classes (``B`` long or int).
        normalize: min-max to [0, 1] per sample; ``False`` returns the raw map whose
            spatial mean plus ``linear.bias[c]`` is the logit of class ``c``.
    """
    cls = class_indices(target, x, classifier.num_classes)
    return cam_from_features(classifier, classifier.features(x), cls, normalize=normalize)


def cam_from_features(classifier: Classifier, features: Tensor, cls: Tensor, normalize: bool = True) -> Tensor:
    """CAM ``B x h x w`` of classes ``cls`` (``B`` long) from the feature map ``A`` (``B x K x h x w``)."""
    linear = classifier.linear  # raises UserError for models without a GAP + linear head
    cam = weighted_feature_sum(features, linear.weight[cls])
    return minmax_normalize(cam) if normalize else cam


@INTERPRETERS.register("cam")
class CAMInterpreter(Interpreter):
    """CAM at the last feature map's resolution, min-max normalised, no ReLU."""

    name = "cam"
    taxonomy = "representation"
    display_order = 30
    family = "cam"

    @classmethod
    def unavailable_reason(cls, classifier: Classifier, options: dict) -> str | None:
        if not classifier.info.gap_linear_head:
            return "it has no global-average-pool + linear head"
        return None

    def __init__(self, classifier: Classifier) -> None:
        super().__init__(classifier)
        _ = classifier.linear  # fail at construction, not at first use, for models without GAP + linear

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            return class_activation_map(self.classifier, x, target)

    def attribute_classes(self, x: Tensor, classes: Sequence[Tensor], *, create_graph: bool = False) -> list[Tensor]:
        """One feature pass for every class choice (each ``B`` long) -> maps ``B x h x w`` each."""
        x = self.classifier.prepare(x)
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            features = self.classifier.features(x if create_graph else x.detach())
            maps = [cam_from_features(self.classifier, features, self.explained_class(x, cls)) for cls in classes]
        return maps if create_graph else [m.detach() for m in maps]

    def joint_forward(self, x: Tensor, classes: Tensor | None) -> JointOutput:
        """One forward gives the feature map (-> the map) and the logits."""
        features, logits = self.classifier.features_and_logits(x)
        classes = logits.argmax(1).detach() if classes is None else classes
        return JointOutput(logits, cam_from_features(self.classifier, features, classes))
