"""The classifier wrapper: pixels in [0, 1] in, logits out, with the body / head split interpreters need.

Contract (docs/design.md §1): every tensor that crosses this boundary is an image batch
``B x C x H x W`` in [0, 1]. Mean/std normalisation lives inside
:class:`Classifier`, so an epsilon of 8/255 always means 8/255 of pixel range.

A raw network is split into a *body* (normalised image -> last convolutional
feature map ``A``, ``B x K x h x w``) and a *head* (``A`` -> logits ``B x N``).
CAM and Grad-CAM work on ``A``; when the head is global-average-pool + linear,
:attr:`Classifier.linear` exposes the linear layer that CAM needs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from idls.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What a wrapped classifier knows about itself."""

    name: str
    num_classes: int
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = ()
    gap_linear_head: bool = True
    weights: str | None = None
    #: trained on the embedded synthetic data set (its RTS masker ships with idls, or is trained on that data on first use)
    embedded: bool = False
    extra: dict = field(default_factory=dict)

    def class_name(self, index: int) -> str:
        return self.class_names[index] if 0 <= index < len(self.class_names) else str(index)


class Classifier(nn.Module):
    """An image classifier on [0, 1] pixels with an explicit body/head split.

    Args:
        net: the raw network (holds all parameters; kept as ``self.net``).
        body: ``body(net, z) -> A``, z the *normalised* image, A ``B x K x h x w``.
        head: ``head(net, A) -> logits`` ``B x N``.
        info: :class:`ModelInfo`.
        linear: the ``nn.Linear`` after global average pooling, if the head is GAP + linear.
        pyramid: ``pyramid(net, z) -> [A_1, ..., A_L]``, the multi-scale feature maps of the
            normalised image (fine to coarse, the last one ``A``), if the model exposes them (RTS's encoder).
    """

    def __init__(
        self,
        net: nn.Module,
        body: Callable[[nn.Module, Tensor], Tensor],
        head: Callable[[nn.Module, Tensor], Tensor],
        info: ModelInfo,
        linear: Callable[[nn.Module], nn.Linear] | None = None,
        pyramid: Callable[[nn.Module, Tensor], list[Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self._body = body
        self._head = head
        self._linear = linear
        self._pyramid = pyramid
        self.info = info
        #: optional module applied to the pixels before normalisation (a defence; see idls.defenses.defend)
        self.input_transform: nn.Module | None = None
        self.register_buffer("mean", torch.tensor(info.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, -1, 1, 1), persistent=False)

    # -- forward passes -------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """``B x C x H x W`` pixels in [0, 1] -> the network's input space (after ``input_transform``, if any)."""
        if self.input_transform is not None:
            x = self.input_transform(x)
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """Last convolutional feature map ``A`` (``B x K x h x w``) of pixels ``x``."""
        return self._body(self.net, self.normalize(x))

    def logits_from_features(self, a: Tensor) -> Tensor:
        """Head: feature map ``B x K x h x w`` -> logits ``B x N``."""
        return self._head(self.net, a)

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One pass returning both ``A`` and the logits."""
        a = self.features(x)
        return a, self.logits_from_features(a)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``B x N`` for pixels ``x`` in [0, 1]."""
        return self.logits_from_features(self.features(x))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Predicted classes ``B`` (long), evaluated in chunks without gradients."""
        out = [self(chunk).argmax(1) for chunk in x.split(batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)

    @property
    def has_feature_pyramid(self) -> bool:
        """Whether :meth:`feature_pyramid` is available (the model registration declares it)."""
        return self._pyramid is not None

    def feature_pyramid_check(self) -> None:
        """Raise :class:`UserError` when the model exposes no feature pyramid."""
        if self._pyramid is None:
            raise UserError(
                f"model {self.info.name!r} exposes no feature pyramid, so RTS has no encoder for it; "
                "explain this model with cam, gradcam, grad or mask instead"
            )

    def feature_pyramid(self, x: Tensor) -> list[Tensor]:
        """Multi-scale feature maps of pixels ``x`` (fine to coarse; each ``B x K_l x h_l x w_l``)."""
        self.feature_pyramid_check()
        return self._pyramid(self.net, self.normalize(x))

    # -- head access ----------------------------------------------------------------
    @property
    def linear(self) -> nn.Linear:
        """The linear layer after global average pooling (CAM's class weights)."""
        if self._linear is None or not self.info.gap_linear_head:
            raise UserError(
                f"model {self.info.name!r} has no global-average-pool + linear head, so CAM does not apply; "
                "use --interpreter gradcam instead"
            )
        return self._linear(self.net)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_size(self) -> int:
        return self.info.input_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the weights (float32 unless the model was converted)."""
        return next(self.parameters()).dtype

    # -- input and output checks of the public entry points (attacks, interpreters) -------
    def prepare(self, x: Tensor) -> Tensor:
        """Pixels ``B x C x H x W`` as this classifier computes on them: in its dtype, in the standard layout.

        float16 / bfloat16 / float64 pixels are converted to the weights' dtype (from half precision
        exactly) and channels-last tensors to the contiguous layout, so an attack or a map of ``x``
        equals that of ``x.float().contiguous()`` (docs/design.md §1). Free when ``x`` already fits.

        Raises:
            UserError: the weights are float16 or bfloat16 (too coarse for perturbation budgets).
        """
        dtype = self.dtype
        if dtype not in (torch.float32, torch.float64):
            raise UserError(f"{self.info.name} has {str(dtype).removeprefix('torch.')} weights, but attacks and "
                            "interpreters need float32 or float64 ones (half precision rounds pixel steps of 1/255 "
                            "away); call .float() on the classifier (torch.autocast inside it is fine)")
        return x.to(dtype=dtype, memory_format=torch.contiguous_format)

    def check_logits(self, logits: Tensor) -> Tensor:
        """``logits`` ``B x N`` unchanged; a :class:`UserError` naming the images whose logits hold NaN or Inf."""
        self._refuse_broken(~torch.isfinite(logits.detach()).all(1))
        return logits

    @torch.no_grad()
    def check_logits_of(self, x: Tensor, batch_size: int = 256, what: str = "image") -> None:
        """:meth:`check_logits` for the images ``x`` ``N x C x H x W`` (any device), ``batch_size`` at a time;
        ``what`` names them in the error (e.g. ``'fit image'``)."""
        finite = [torch.isfinite(self(chunk.to(self.device))).all(1).cpu() for chunk in x.split(batch_size)]
        self._refuse_broken(~torch.cat(finite), what)

    def _refuse_broken(self, broken: Tensor, what: str = "image") -> None:
        if bool(broken.any()):
            rows = broken.nonzero().flatten().tolist()
            raise UserError(f"{self.info.name} returned NaN or Inf logits for {len(rows)} of {broken.shape[0]} "
                            f"{what}(s) (rows {rows[:5]}); its weights are damaged or diverged, or a layer overflows "
                            "on these images: check the checkpoint")


# ---------------------------------------------------------------------------------
# Smooth-ReLU surrogate (docs/design.md §4, GRAD): same forward, smooth derivative.
# ---------------------------------------------------------------------------------
def _smooth_relu_primitive(z: Tensor, tau: float) -> Tensor:
    """r(z) = z + sqrt(z^2 + tau) for z < 0 and sqrt(z^2 + tau) for z >= 0.

    Its derivative is the smooth ReLU gradient h(z) of ADV² (paper 001 §3.2).
    """
    root = torch.sqrt(z * z + tau)
    return torch.where(z < 0, z + root, root)


class _SmoothGradReLUFunction(torch.autograd.Function):
    """``relu(z)`` whose backward is ``g * r'(z)`` (``r`` = :func:`_smooth_relu_primitive`).

    ``r'(z)`` and ``r''(z) = tau / (z^2 + tau)^(3/2)`` are computed once in the forward pass
    (no graph); the backward is :class:`_SlopeProduct`, whose own backward uses them, so a
    double back-propagation costs a few element-wise products per ReLU instead of the
    recorded graph of ``r``. Exact to second order (a third derivative would miss the terms
    of the third derivative of ``r``; nothing here takes one).
    """

    @staticmethod
    def forward(ctx, z: Tensor, tau: float) -> Tensor:
        inverse_root = torch.rsqrt(z * z + tau)
        slope = torch.addcmul((z < 0).to(z.dtype), z, inverse_root)
        curvature = inverse_root.pow(3).mul_(tau)
        ctx.save_for_backward(z, slope, curvature)
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        z, slope, curvature = ctx.saved_tensors
        return _SlopeProduct.apply(grad, z, slope, curvature), None


class _SlopeProduct(torch.autograd.Function):
    """``g * slope`` with ``d/dg = slope`` and ``d/dz = g * curvature`` (``z`` only carries the graph)."""

    @staticmethod
    def forward(ctx, grad: Tensor, z: Tensor, slope: Tensor, curvature: Tensor) -> Tensor:
        ctx.save_for_backward(grad, slope, curvature)
        return grad * slope

    @staticmethod
    def backward(ctx, outer: Tensor) -> tuple[Tensor, Tensor, None, None]:
        grad, slope, curvature = ctx.saved_tensors
        return outer * slope, outer * grad * curvature, None, None


class SmoothGradReLU(nn.Module):
    """ReLU whose forward value is exact but whose derivatives (all orders) are smooth.

    ``y = relu(z)`` with first derivative ``r'(z)`` (see :func:`_smooth_relu_primitive`),
    whose own derivative does not vanish, which is what a double back-propagation through a
    gradient interpreter needs. Custom autograd functions (:class:`_SmoothGradReLUFunction`)
    replace the recorded graph of ``r``, which made double back-propagation about twice as
    expensive (see benchmarks/joint_cost.py).
    """

    def __init__(self, tau: float = 1e-4) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, z: Tensor) -> Tensor:
        return _SmoothGradReLUFunction.apply(z, self.tau) if z.requires_grad else torch.relu(z)

    def extra_repr(self) -> str:
        return f"tau={self.tau}"


class FrozenBatchNorm2d(nn.Module):
    """An eval-mode ``BatchNorm2d`` as the per-channel affine map it computes, ``z * scale + shift``.

    Same values up to float rounding (~1e-5 on the logits of a ResNet), but its first and second
    derivatives are two cheap element-wise products, where ``native_batch_norm``'s double backward
    is expensive on CPU.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        with torch.no_grad():
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("shift", shift.view(1, -1, 1, 1))

    def forward(self, z: Tensor) -> Tensor:
        return torch.addcmul(self.shift, z, self.scale)


def smooth_surrogate(classifier: Classifier, tau: float = 1e-4) -> Classifier:
    """A copy of ``classifier`` whose ReLUs have smooth derivatives (forward unchanged).

    The original model is untouched; parameters are copied, not shared, so the
    surrogate can be moved independently. Its BatchNorm layers are frozen to their
    eval-mode affine maps (:class:`FrozenBatchNorm2d`; equal values up to float
    rounding, much cheaper double back-propagation), so it always computes the
    eval-mode network, the one attacks run on.
    """
    surrogate = copy.deepcopy(classifier)

    def replace(module: nn.Module) -> None:
        for child_name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, SmoothGradReLU(tau))
            elif isinstance(child, nn.BatchNorm2d) and child.track_running_stats and child.running_var is not None:
                setattr(module, child_name, FrozenBatchNorm2d(child))
            else:
                replace(child)

    replace(surrogate.net)
    surrogate.info = ModelInfo(**{**surrogate.info.__dict__, "name": surrogate.info.name + "+smooth"})
    surrogate.eval()
    return surrogate


def upsample_maps(maps: Tensor, size: int | Sequence[int]) -> Tensor:
    """Bilinearly upsample maps ``B x h x w`` to ``B x H x W`` for display."""
    if isinstance(size, int):
        size = (size, size)
    return torch.nn.functional.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
