"""Integrated Gradients (Sundararajan et al. 2017), docs/design.md §3.

    attribution = (x - b) * sum_k w_k * d f_c(b + a_k (x - b)) / d x      (B x C x H x W)
    map         = minmax( | sum_colour attribution | )                      (B x H x W)

f_c is the logit of the explained class, b the baseline (black by default,
``"blur"``: a Gaussian blur of x, or any tensor broadcastable to x).

Quadrature (names as in Captum): ``riemann_right`` (default; the paper's
``k / m, k = 1..m`` sum, identical to Captum's), ``riemann_left``,
``riemann_middle`` and ``riemann_trapezoid``. Our trapezoid is the textbook rule
(nodes ``linspace(0, 1, m)``, weights ``1/(m-1)`` with halved ends, summing to
one); Captum's uses weights ``1/m`` with halved ends, so its trapezoid result
is ours times ``(m-1)/m``.

The map: the signed channel sum can be positive or negative; an importance map
in [0, 1] takes its absolute value (evidence for and against both count as
"important", as for Grad) and min-max normalises per sample. ``pool`` averages
it like Grad (default 1: input resolution).

The path points of all samples are folded into the batch dimension and
evaluated in chunks of at most ``internal_batch_size`` images; with
``create_graph=True`` the attribution is differentiable w.r.t. x (on a ReLU
network only through the ``x - b`` factor and the path points' first-order
terms; use ``surrogate=True`` for curvature, as for Grad).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from idls.errors import UserError
from idls.interpreters.grad import (
    GradientInterpreter,
    channel_max_pool,
    class_indices,
    class_score,
    differentiable_input,
    normalize_magnitudes,
)
from idls.interpreters.registry import INTERPRETERS
from idls.system import Classifier

IGMethod = Literal["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"]
IG_METHODS: tuple[str, ...] = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid")
BLUR_SIGMA_FRACTION = 0.1  # "blur" baseline: Gaussian sigma = 10% of the image side


def quadrature(steps: int, method: IGMethod, *, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes ``a_k`` in [0, 1] and weights ``w_k`` (summing to 1) of the path integral, each ``steps``."""
    if method not in IG_METHODS:
        raise UserError(f"unknown IG method {method!r}; choose one of: {', '.join(IG_METHODS)}")
    if steps < 2:
        raise UserError(f"IG needs at least 2 steps, got {steps}")
    k = torch.arange(steps, dtype=torch.float64, device=device)
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64, device=device)
    if method == "riemann_right":
        nodes = (k + 1) / steps
    elif method == "riemann_left":
        nodes = k / steps
    elif method == "riemann_middle":
        nodes = (k + 0.5) / steps
    else:
        nodes = k / (steps - 1)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=torch.float64, device=device)
        weights[[0, -1]] /= 2
    return nodes.to(dtype), weights.to(dtype)


def blur_baseline(x: Tensor, sigma: float | None = None) -> Tensor:
    """Gaussian blur of ``x`` (``B x C x H x W``), sigma default 10% of the image side."""
    sigma = BLUR_SIGMA_FRACTION * min(x.shape[-2:]) if sigma is None else sigma
    radius = max(1, min(math.ceil(3 * sigma), min(x.shape[-2:]) - 1))
    return gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])


def make_baseline(x: Tensor, baseline: str | float | Tensor) -> Tensor:
    """Baseline image for ``x``: ``"black"``, ``"blur"``, a constant, or a broadcastable tensor."""
    if isinstance(baseline, Tensor):
        try:
            return torch.broadcast_to(baseline.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError:
            raise UserError(
                f"IG baseline of shape {tuple(baseline.shape)} does not broadcast to images {tuple(x.shape)}"
            ) from None
    if baseline == "black":
        return torch.zeros_like(x)
    if baseline == "blur":
        return blur_baseline(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    raise UserError(f"unknown IG baseline {baseline!r}; use 'black', 'blur', a number in [0, 1] or a tensor")


def integrated_gradients(
    classifier: Classifier,
    x: Tensor,
    target: Tensor | int,
    *,
    baseline: str | float | Tensor = "black",
    steps: int = 32,
    method: IGMethod = "riemann_right",
    internal_batch_size: int = 512,
    create_graph: bool = False,
) -> Tensor:
    """Raw IG attributions ``B x C x H x W`` of the explained classes' logits.

    Completeness: ``attribution.sum((1, 2, 3)) ~= f_c(x) - f_c(baseline)`` as ``steps`` grows.

    Args:
        classifier: differentiated model (real or smooth surrogate).
        x: images ``B x C x H x W`` in [0, 1].
        target: explained classes (``B`` long or int).
        baseline: ``"black"`` (default), ``"blur"``, a constant or a tensor broadcastable to ``x``.
        steps: number of path points ``m``.
        method: quadrature rule (see module docstring).
        internal_batch_size: path images per forward/backward pass, at most
            ``max(B, internal_batch_size)`` (whole steps of the batch are kept together).
        create_graph: keep the attribution differentiable w.r.t. ``x``.
    """
    cls = class_indices(target, x, classifier.num_classes)
    nodes, weights = quadrature(steps, method, dtype=x.dtype, device=x.device)
    x_in = differentiable_input(x) if create_graph else x.detach()
    with torch.enable_grad():
        base = make_baseline(x_in, baseline)
        if not create_graph:
            base = base.detach()
        delta = x_in - base
        batch, shape = x.shape[0], x.shape[1:]
        steps_per_chunk = max(1, internal_batch_size // max(1, batch))
        path_grad_sum = torch.zeros_like(x_in)
        for first in range(0, steps, steps_per_chunk):
            a = nodes[first : first + steps_per_chunk]
            w = weights[first : first + steps_per_chunk]
            # steps x B x C x H x W points folded into (steps * B) x C x H x W
            points = (base[None] + a.view(-1, 1, 1, 1, 1) * delta[None]).reshape(-1, *shape)
            if not create_graph:
                points.requires_grad_(True)
            score = class_score(classifier(points), cls.repeat(len(a)), "logit")
            (grad,) = torch.autograd.grad(score, points, create_graph=create_graph)
            path_grad_sum = path_grad_sum + (w.view(-1, 1, 1, 1, 1) * grad.view(len(a), batch, *shape)).sum(0)
    return delta * path_grad_sum


def integrated_gradients_map(
    classifier: Classifier,
    x: Tensor,
    target: Tensor | int,
    *,
    pool: int = 1,
    create_graph: bool = False,
    **options,
) -> Tensor:
    """IG maps ``B x ceil(H/pool) x ceil(W/pool)`` in [0, 1]: ``minmax(pool(|sum_colour IG|))``.

    ``options`` go to :func:`integrated_gradients` (baseline, steps, method, internal_batch_size).
    """
    if pool < 1:
        raise UserError(f"IG pool must be a positive integer, got {pool}")
    attribution = integrated_gradients(classifier, x, target, create_graph=create_graph, **options)
    return normalize_magnitudes(channel_max_pool(attribution.sum(1, keepdim=True).abs(), pool))


@INTERPRETERS.register("ig")
class IntegratedGradientsInterpreter(GradientInterpreter):
    """Integrated Gradients of the explained logit; map = min-max of ``|channel sum|``.

    Args:
        classifier: the explained model.
        baseline: ``"black"`` (default), ``"blur"``, a constant or a tensor.
        steps: path points (default 32).
        method: ``riemann_right`` (default), ``riemann_left``, ``riemann_middle``, ``riemann_trapezoid``.
        internal_batch_size: cap on path images per pass (memory bound).
        pool: average-pool window of the map (default 1: input resolution).
        surrogate: ``True`` or a surrogate classifier used for ``create_graph=True`` calls.
    """

    name = "ig"
    taxonomy = "back-propagation"
    display_order = 20

    def __init__(
        self,
        classifier: Classifier,
        *,
        baseline: str | float | Tensor = "black",
        steps: int = 32,
        method: IGMethod = "riemann_right",
        internal_batch_size: int = 512,
        pool: int = 1,
        surrogate: Classifier | bool | None = None,
    ) -> None:
        super().__init__(classifier, surrogate)
        quadrature(steps, method, dtype=torch.float64, device=torch.device("cpu"))  # validates early
        if not isinstance(pool, int) or pool < 1:
            raise UserError(f"IG pool must be a positive integer, got {pool!r}")
        if internal_batch_size < 1:
            raise UserError(f"IG internal_batch_size must be positive, got {internal_batch_size}")
        if not isinstance(baseline, Tensor):
            make_baseline(torch.zeros(1, 3, 8, 8), baseline)  # validates early
        self.baseline = baseline
        self.steps = steps
        self.method: IGMethod = method
        self.internal_batch_size = internal_batch_size
        self.pool = pool

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        return integrated_gradients_map(
            self.model_for(create_graph),
            x,
            target,
            pool=self.pool,
            create_graph=create_graph,
            baseline=self.baseline,
            steps=self.steps,
            method=self.method,
            internal_batch_size=self.internal_batch_size,
        )

    def extra_repr(self) -> str:
        baseline = "tensor" if isinstance(self.baseline, Tensor) else repr(self.baseline)
        return f"steps={self.steps}, method={self.method!r}, baseline={baseline}, pool={self.pool}"
