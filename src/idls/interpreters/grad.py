"""Grad (back-propagation saliency, Simonyan et al. 2014), docs/design.md §3.

    map = minmax( avgpool_p( max_colour | d loss(f(x), c) / d x | ) )

with loss = cross-entropy of the explained class c (default) or its logit.
Unlike Captum's ``Saliency`` the map can stay inside the autograd graph
(``create_graph=True``) so that joint attacks can back-propagate through it.

Second derivatives of a ReLU network vanish (its logits are piecewise linear in
x), so a map that must be differentiated is computed on the smooth-ReLU
surrogate (:func:`idls.system.smooth_surrogate`): pass ``surrogate=True`` (or a
surrogate classifier) and the interpreter uses it for ``create_graph=True``
calls only, while plain calls keep the real model (docs/design.md §4: "selection and
evaluation use the real model").

Pooling default: ``pool = max(1, H // 56)``, i.e. 4 x 4 at 224 px (the ADV²
setting, 56 x 56 maps) and 1 (no pooling) below 112 px, so CIFAR maps are
32 x 32. Windows at a ragged border are averaged over the pixels they cover
(``ceil_mode``), so the map side is ``ceil(H / pool)``.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.errors import UserError
from idls.interpreters.base import Interpreter, JointOutput, minmax_normalize
from idls.interpreters.registry import INTERPRETERS
from idls.system import Classifier, smooth_surrogate

GradLoss = Literal["cross_entropy", "logit"]
GRAD_LOSSES: tuple[str, ...] = ("cross_entropy", "logit")
POOL_REFERENCE_SIZE = 56  # default pool = input side // 56 (4 at 224 px)


# ----------------------------------------------------------------------------------
# Helpers shared by the gradient-based interpreters (Grad, IG, CAM, Grad-CAM).
# ----------------------------------------------------------------------------------
def class_indices(target: Tensor | int, x: Tensor, num_classes: int) -> Tensor:
    """Explained classes as a ``B`` long tensor on ``x.device``; checks range and length."""
    batch = x.shape[0]
    cls = torch.as_tensor(target, device=x.device).long()
    if cls.dim() == 0:
        cls = cls.expand(batch)
    if cls.shape != (batch,):
        raise UserError(f"target must be an int or a length-{batch} vector of classes, got shape {tuple(cls.shape)}")
    if batch and (int(cls.min()) < 0 or int(cls.max()) >= num_classes):
        raise UserError(f"target classes must lie in [0, {num_classes - 1}], got {cls.tolist()}")
    return cls


def differentiable_input(x: Tensor) -> Tensor:
    """``x`` itself if it already requires grad (stays in the caller's graph), else a leaf copy that does."""
    return x if x.requires_grad else x.detach().requires_grad_(True)


def class_score(logits: Tensor, target: Tensor, loss: GradLoss) -> Tensor:
    """Per-sample scalar whose input gradient is explained, summed over the batch.

    ``B x N`` logits -> scalar: sum of cross-entropies of ``target`` or of its logits.
    Summing keeps each sample's gradient independent of the batch size.
    """
    if loss == "cross_entropy":
        return F.cross_entropy(logits, target, reduction="sum")
    if loss == "logit":
        return logits.gather(1, target[:, None]).sum()
    raise UserError(f"unknown grad loss {loss!r}; choose one of: {', '.join(GRAD_LOSSES)}")


def default_pool(input_side: int) -> int:
    """Average-pool window for an input side: ``max(1, side // 56)`` (4 at 224 px, 1 at 32 px)."""
    return max(1, input_side // POOL_REFERENCE_SIZE)


def channel_max_pool(attribution: Tensor, pool: int) -> Tensor:
    """``B x C x H x W`` non-negative attribution -> ``B x ceil(H/pool) x ceil(W/pool)``.

    Max over colour channels, then ``pool x pool`` average pooling (ragged border
    windows averaged over the pixels they cover).
    """
    per_pixel = attribution.amax(dim=1, keepdim=True)
    if pool > 1:
        per_pixel = F.avg_pool2d(per_pixel, pool, stride=pool, ceil_mode=True)
    return per_pixel[:, 0]


def normalize_magnitudes(maps: Tensor) -> Tensor:
    """Min-max normalise non-negative ``B x h x w`` maps whatever their scale.

    Gradients of a saturated cross-entropy can be ~1e-24, far below the epsilon of
    :func:`minmax_normalize`; dividing each map by its maximum first makes the
    result scale-invariant (all-zero maps stay zero). Differentiable.
    """
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return minmax_normalize(maps / peak[:, None, None])


def resolve_surrogate(classifier: Classifier, surrogate: Classifier | bool | None) -> Classifier | None:
    """``True`` builds :func:`smooth_surrogate` of ``classifier``; a classifier is used as is."""
    if surrogate is None or surrogate is False:
        return None
    if surrogate is True:
        return smooth_surrogate(classifier)
    if isinstance(surrogate, Classifier):
        return surrogate
    raise UserError(f"surrogate must be True, False or a Classifier, got {type(surrogate).__name__}")


# ----------------------------------------------------------------------------------
# Functional API
# ----------------------------------------------------------------------------------
def input_gradient(
    classifier: Classifier,
    x: Tensor,
    target: Tensor | int,
    *,
    loss: GradLoss = "cross_entropy",
    create_graph: bool = False,
) -> Tensor:
    """Raw gradient ``d loss(f(x), c) / d x`` (``B x C x H x W``, same dtype as ``x``).

    With ``create_graph`` the result is differentiable w.r.t. ``x`` (double back-propagation).
    """
    cls = class_indices(target, x, classifier.num_classes)
    x_in = differentiable_input(x)
    with torch.enable_grad():
        score = class_score(classifier(x_in), cls, loss)
        (grad,) = torch.autograd.grad(score, x_in, create_graph=create_graph)
    return grad


def gradient_map(
    classifier: Classifier,
    x: Tensor,
    target: Tensor | int,
    *,
    pool: int | None = None,
    loss: GradLoss = "cross_entropy",
    create_graph: bool = False,
) -> Tensor:
    """Grad maps ``B x ceil(H/pool) x ceil(W/pool)`` in [0, 1].

    Args:
        classifier: the model to differentiate (the real one, or its smooth surrogate).
        x: images ``B x C x H x W`` in [0, 1].
        target: explained classes (``B`` long or int).
        pool: average-pool window; ``None`` -> :func:`default_pool` of ``H``.
        loss: ``"cross_entropy"`` (docs/design.md §3 default) or ``"logit"``.
        create_graph: keep the map differentiable w.r.t. ``x``.
    """
    pool = default_pool(x.shape[-2]) if pool is None else pool
    if pool < 1:
        raise UserError(f"grad pool must be a positive integer, got {pool}")
    grad = input_gradient(classifier, x, target, loss=loss, create_graph=create_graph)
    return gradient_to_map(grad, pool)


def gradient_to_map(grad: Tensor, pool: int) -> Tensor:
    """Input gradients ``B x C x H x W`` -> Grad maps ``B x ceil(H/pool) x ceil(W/pool)`` in [0, 1]."""
    return normalize_magnitudes(channel_max_pool(grad.abs(), pool))


# ----------------------------------------------------------------------------------
# Registered interpreter
# ----------------------------------------------------------------------------------
class GradientInterpreter(Interpreter):
    """Base of interpreters built on input gradients (Grad, IG): holds the optional surrogate.

    ``surrogate``: ``True`` (build :func:`smooth_surrogate`, a parameter copy taken now)
    or a surrogate classifier; it replaces ``classifier`` for ``create_graph=True``
    calls only.
    """

    needs_smooth_surrogate = True
    family = "grad"

    def __init__(self, classifier: Classifier, surrogate: Classifier | bool | None = None) -> None:
        super().__init__(classifier)
        self.surrogate = resolve_surrogate(classifier, surrogate)

    def for_joint_attack(self) -> GradientInterpreter:
        """This interpreter if it has a surrogate, else a twin with a fresh smooth surrogate
        (the user's interpreter is not modified; the classifier is shared)."""
        if self.surrogate is not None:
            return self
        twin = copy.deepcopy(self, memo={id(self.classifier): self.classifier})
        twin.surrogate = smooth_surrogate(self.classifier)
        return twin

    def model_for(self, create_graph: bool) -> Classifier:
        """The surrogate for differentiable maps (if one is set), else the real classifier."""
        return self.surrogate if create_graph and self.surrogate is not None else self.classifier


@INTERPRETERS.register("grad")
class GradInterpreter(GradientInterpreter):
    """Grad saliency: ``|d CE / d x|``, channel max, ``pool x pool`` average, min-max.

    Args:
        classifier: the explained model (may itself be a smooth surrogate).
        pool: average-pool window (default ``max(1, H // 56)``: 4 at 224 px, 1 at 32 px).
        loss: ``"cross_entropy"`` (default) or ``"logit"``.
        surrogate: ``True`` or a surrogate classifier to use for ``create_graph=True``
            (differentiable maps); plain calls use ``classifier``.
    """

    name = "grad"
    taxonomy = "back-propagation"
    display_order = 10

    def __init__(
        self,
        classifier: Classifier,
        *,
        pool: int | None = None,
        loss: GradLoss = "cross_entropy",
        surrogate: Classifier | bool | None = None,
    ) -> None:
        super().__init__(classifier, surrogate)
        if pool is not None and (not isinstance(pool, int) or pool < 1):
            raise UserError(f"grad pool must be a positive integer, got {pool!r}")
        if loss not in GRAD_LOSSES:
            raise UserError(f"unknown grad loss {loss!r}; choose one of: {', '.join(GRAD_LOSSES)}")
        self.pool = pool
        self.loss: GradLoss = loss

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        return gradient_map(
            self.model_for(create_graph), x, target, pool=self.pool, loss=self.loss, create_graph=create_graph
        )

    def joint_forward(self, x: Tensor, classes: Tensor | None) -> JointOutput:
        """The surrogate's logits (equal to the real ones) and its map, from one forward pass."""
        model = self.model_for(True)
        logits = model(x)
        classes = logits.argmax(1).detach() if classes is None else classes
        (grad,) = torch.autograd.grad(class_score(logits, classes, self.loss), x, create_graph=True)
        pool = default_pool(x.shape[-2]) if self.pool is None else self.pool
        return JointOutput(logits, gradient_to_map(grad, pool))

    def extra_repr(self) -> str:
        return f"pool={self.pool}, loss={self.loss!r}, surrogate={self.surrogate is not None}"
