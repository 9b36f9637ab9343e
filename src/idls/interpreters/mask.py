"""MASK: meaningful perturbation (Fong & Vedaldi 2017), batched and differentiable.

MASK explains class ``c`` of image ``x`` by the smallest, smoothest region whose
deletion (blending with a strongly blurred copy of ``x``) destroys ``p_c``.

Conventions (docs/design.md §1, §3):

* The optimisation variable ``m`` **is the returned map**: ``B x h x w`` in
  [0, 1], 1 where the pixel is *deleted* (replaced by the blur), i.e. high where
  the pixel matters. Fong & Vedaldi's preservation mask is ``1 - m``; their
  ``sum |1 - m_FV|`` is our ``sum |m|``. No flip is ever needed.
* Perturbation: ``phi(x; m) = x_s + M * (blur(x)_s - x_s)``, ``M`` = ``m``
  upsampled bilinearly to the input size and lightly Gaussian-blurred, ``x_s``
  the image translated by a random jitter ``s`` (``|s| <= jitter`` pixels; Fong &
  Vedaldi's expectation over translations of the image relative to the mask).
* Objective per sample::

      p_c(phi(x; m)) + l1 * (784 / (h w)) * sum|m| + tv * sqrt(784 / (h w)) * TV_beta(m)

  with ``TV_beta(m) = sum_ij ((dy m)^2 + (dx m)^2 + 1e-8)^(beta / 2)`` (forward
  differences). ``l1`` and ``tv`` are defined at the reference 28 x 28 mask
  (784 cells, docs/design.md §3 v2 settings l1 = 1e-4, tv = 1e-2, beta = 3); at other mask
  sizes the area term is rescaled so that deleting the same *fraction* of the
  image costs the same, and the TV term so that a sharp boundary of the same
  relative length costs the same.
* Optimiser: projected Adam (lr 0.1, 300 iterations) on ``m`` directly, clamped
  to [0, 1] after every step, starting from ``m = 1`` (everything deleted) and
  shrinking (``init_value`` changes the start). Why not from 0 or 0.5: a
  confident classifier (pretrained CIFAR ResNet-20, p_c ~ 0.995) has a saturated
  softmax there, the gradient of ``p_c`` falls below the area term's and the
  mask collapsed to 0 for about half of the lossless CIFAR images; from ``m = 1``
  p_c is unsaturated and the optimisation keeps deleted the region whose
  restoration would bring the class back.
* Batching: all masks of a batch are one ``B x h x w`` tensor; per-sample
  losses are summed, so every sample follows the trajectory it would follow
  alone. The jitter draws one translation per iteration from
  ``torch.Generator().manual_seed(seed)`` and shares it across the batch, which
  keeps the batched result equal to the per-image result for the same seed in
  exact arithmetic (float64: to rounding). In float32 the classifier's batched
  kernels round differently for different batch layouts, and Adam's normalised
  first steps amplify those differences where the gradient is near zero, so the
  maps of one image can differ noticeably between batch layouts
  (``tests/test_interpreter_contracts.py`` checks batch independence in float64).
* Scale of the maps: with the l1 of docs/design.md §3 the whole image costs only 0.078, so on
  CIFAR the maps cover most of the image (a larger l1 gives smaller maps and a sharper
  ranking); their top 20% alone rarely removes the class.

Defaults scaled with the input side ``S`` (square or not: ``S = min(H, W)``,
mask sides use each dimension):

* mask side ``max(8, side // 8)`` capped at the input side: 28 at 224 px,
  8 at 32 px (``side // 8`` would give a useless 4 x 4 at CIFAR size);
* image blur sigma ``10 * S / 224`` (Fong & Vedaldi's sigma 10 at 224; 1.43 px on
  CIFAR, which already removes most of a pretrained ResNet-20's accuracy on
  lossless CIFAR images);
* mask blur sigma ``(H / h) / 2``: half the upsampling factor (4 px at 224);
* jitter ``max(1, round(4 * S / 224))`` pixels (4 at 224, 1 at 32).

For ADV²'s bilevel attack (docs/design.md §4) this module exposes
:func:`mask_objective` (differentiable w.r.t. ``x`` and ``m``),
:class:`MaskOptimizer` / :func:`optimize_masks` (the plain run, no graph, with
per-sample Adam state that can be continued, reset or subset) and
:func:`unrolled_mask_steps` (differentiable look-ahead, see its docstring).
``MaskInterpreter.attribute(x, create_graph=True)`` returns the look-ahead of
the optimised mask, so its map is differentiable w.r.t. ``x`` but is one (or
``lookahead_steps``) gradient step further than the plain map.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from idls.errors import UserError, check_images
from idls.interpreters.base import Interpreter
from idls.interpreters.registry import INTERPRETERS
from idls.optim import flush_denormal
from idls.system import Classifier

REFERENCE_INPUT = 224
REFERENCE_MASK = 28
REFERENCE_MASK_CELLS = REFERENCE_MASK * REFERENCE_MASK
REFERENCE_BLUR_SIGMA = 10.0
REFERENCE_JITTER = 4
MIN_MASK_SIDE = 8
TV_EPS = 1e-8

Size2 = tuple[int, int]


# ---------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------
def _pair(value: int | Sequence[int], what: str) -> Size2:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise UserError(f"{what} must be an int or a (height, width) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def default_mask_side(input_side: int) -> int:
    """Native mask side for an input side: ``max(8, side // 8)``, at most the input side."""
    return min(input_side, max(MIN_MASK_SIDE, input_side // 8))


@dataclass(frozen=True)
class MaskConfig:
    """MASK objective settings for one input size (build with :meth:`for_input`)."""

    input_size: Size2
    mask_size: Size2
    l1: float = 1e-4
    tv: float = 1e-2
    tv_beta: float = 3.0
    blur_sigma: float = REFERENCE_BLUR_SIGMA
    mask_blur_sigma: float = 4.0
    jitter: int = REFERENCE_JITTER

    @classmethod
    def for_input(
        cls,
        input_size: int | Sequence[int],
        *,
        mask_size: int | Sequence[int] | None = None,
        l1: float = 1e-4,
        tv: float = 1e-2,
        tv_beta: float = 3.0,
        blur_sigma: float | None = None,
        mask_blur_sigma: float | None = None,
        jitter: int | None = None,
    ) -> MaskConfig:
        """Settings for ``input_size`` (int or ``(H, W)``); ``None`` options take the scaled defaults."""
        height, width = _pair(input_size, "input size")
        if height < 1 or width < 1:
            raise UserError(f"input size must be positive, got {height} x {width}")
        if mask_size is None:
            mask = (default_mask_side(height), default_mask_side(width))
        else:
            mask = _pair(mask_size, "mask_size")
        if not (1 <= mask[0] <= height and 1 <= mask[1] <= width):
            raise UserError(
                f"mask_size {mask} must lie between 1 and the input size {height} x {width}; "
                f"pass e.g. mask_size={default_mask_side(height)} or leave it unset"
            )
        scale = min(height, width) / REFERENCE_INPUT
        config = cls(
            input_size=(height, width),
            mask_size=mask,
            l1=float(l1),
            tv=float(tv),
            tv_beta=float(tv_beta),
            blur_sigma=REFERENCE_BLUR_SIGMA * scale if blur_sigma is None else float(blur_sigma),
            mask_blur_sigma=0.5 * height / mask[0] if mask_blur_sigma is None else float(mask_blur_sigma),
            jitter=max(1, round(REFERENCE_JITTER * scale)) if jitter is None else int(jitter),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`UserError` on a setting that cannot work."""
        if self.l1 < 0 or self.tv < 0:
            raise UserError(f"MASK l1 and tv weights must be >= 0, got l1={self.l1}, tv={self.tv}")
        if self.tv_beta < 1:
            raise UserError(f"MASK tv_beta must be >= 1, got {self.tv_beta}")
        if self.blur_sigma <= 0:
            raise UserError(f"MASK blur_sigma must be > 0 (the deletion blur), got {self.blur_sigma}")
        if self.mask_blur_sigma < 0:
            raise UserError(f"MASK mask_blur_sigma must be >= 0, got {self.mask_blur_sigma}")
        if self.jitter < 0 or self.jitter >= min(self.input_size):
            raise UserError(f"MASK jitter must be between 0 and the input side - 1, got {self.jitter}")

    @property
    def l1_weight(self) -> float:
        """Weight of ``sum |m|``: ``l1`` rescaled to the reference 28 x 28 mask."""
        return self.l1 * REFERENCE_MASK_CELLS / (self.mask_size[0] * self.mask_size[1])

    @property
    def tv_weight(self) -> float:
        """Weight of ``TV_beta(m)``: ``tv`` rescaled by the mask's side relative to 28."""
        return self.tv * math.sqrt(REFERENCE_MASK_CELLS / (self.mask_size[0] * self.mask_size[1]))


# ---------------------------------------------------------------------------------
# Building blocks (all batched, differentiable, device/dtype follow the input)
# ---------------------------------------------------------------------------------
def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``B x C x H x W`` (reflect padding, radius ``ceil(3 sigma)``).

    The radius is capped at ``min(H, W) - 1`` (what reflect padding allows);
    ``sigma <= 0`` returns the input unchanged.
    """
    channels, height, width = images.shape[-3:]
    radius = min(math.ceil(3 * sigma), height - 1, width - 1) if sigma > 0 else 0
    if radius < 1:
        return images
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def translate(images: Tensor, dy: int, dx: int) -> Tensor:
    """Shift ``B x C x H x W`` by ``(dy, dx)`` pixels (content moves down/right), replicating borders."""
    if dy == 0 and dx == 0:
        return images
    height, width = images.shape[-2:]
    pad_y, pad_x = abs(dy), abs(dx)
    padded = F.pad(images, (pad_x, pad_x, pad_y, pad_y), mode="replicate")
    return padded[..., pad_y - dy : pad_y - dy + height, pad_x - dx : pad_x - dx + width]


def perturb(x: Tensor, x_blurred: Tensor, m: Tensor, config: MaskConfig, shift: tuple[int, int] = (0, 0)) -> Tensor:
    """``phi(x; m)``: blend ``x`` (``B x C x H x W``) towards its blur where the map ``m`` (``B x h x w``) is 1.

    ``shift`` translates the image (and its blur) relative to the mask.
    """
    weight = F.interpolate(m[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
    weight = gaussian_blur(weight, config.mask_blur_sigma)
    image = translate(x, *shift)
    return image + weight * (translate(x_blurred, *shift) - image)


def mask_penalty(m: Tensor, config: MaskConfig) -> Tensor:
    """Area + smoothness terms per sample (``B``) for maps ``m`` ``B x h x w``."""
    area = m.abs().flatten(1).sum(1)
    dy = m[:, 1:, :-1] - m[:, :-1, :-1]
    dx = m[:, :-1, 1:] - m[:, :-1, :-1]
    tv = (dy * dy + dx * dx + TV_EPS).pow(config.tv_beta / 2).flatten(1).sum(1)
    return config.l1_weight * area + config.tv_weight * tv


def _as_targets(target: Tensor | int, batch: int, device: torch.device) -> Tensor:
    if isinstance(target, int):
        return torch.full((batch,), target, dtype=torch.long, device=device)
    target = target.to(device=device, dtype=torch.long).reshape(-1)
    if target.numel() != batch:
        raise UserError(f"got {target.numel()} target classes for {batch} images; pass one class per image")
    return target


def _check_masks(x: Tensor, m: Tensor, config: MaskConfig) -> None:
    if tuple(x.shape[-2:]) != config.input_size:
        raise UserError(
            f"images are {tuple(x.shape[-2:])} but the MASK settings are for {config.input_size}; "
            "build them with MaskConfig.for_input(image size)"
        )
    if m.dim() != 3 or m.shape[0] != x.shape[0] or tuple(m.shape[-2:]) != config.mask_size:
        expected = f"{x.shape[0]} x {config.mask_size[0]} x {config.mask_size[1]}"
        raise UserError(f"masks must have shape {expected} (B x h x w), got {tuple(m.shape)}")


def mask_objective(
    classifier: Classifier,
    x: Tensor,
    m: Tensor,
    target: Tensor | int,
    config: MaskConfig | None = None,
    *,
    x_blurred: Tensor | None = None,
    shift: tuple[int, int] = (0, 0),
) -> Tensor:
    """MASK's objective per sample (``B``), differentiable w.r.t. ``x`` and ``m``.

    Args:
        classifier: the explained classifier.
        x: images ``B x C x H x W`` in [0, 1].
        m: maps ``B x h x w`` (1 = deleted), usually in [0, 1].
        target: the explained classes (``B`` long or one int).
        config: settings; default ``MaskConfig.for_input(x.shape[-2:])``.
        x_blurred: ``gaussian_blur(x, config.blur_sigma)`` if already computed.
        shift: jitter translation of the image relative to the mask (none by default).

    Returns:
        ``p_c(phi(x; m)) + l1 term + tv term``, shape ``B``.
    """
    config = config or MaskConfig.for_input(tuple(x.shape[-2:]))
    _check_masks(x, m, config)
    target = _as_targets(target, x.shape[0], x.device)
    if x_blurred is None:
        x_blurred = gaussian_blur(x, config.blur_sigma)
    probabilities = classifier(perturb(x, x_blurred, m, config, shift)).softmax(1)
    return probabilities.gather(1, target[:, None])[:, 0] + mask_penalty(m, config)


# ---------------------------------------------------------------------------------
# The plain optimisation (no graph)
# ---------------------------------------------------------------------------------
class MaskOptimizer:
    """Projected Adam on a batch of MASK maps, with per-sample state.

    The state (maps, Adam moments, step counts) is per sample, so ADV² can keep
    optimising across its iterations (:meth:`step`), restart some samples
    (:meth:`reset`) or drop finished ones (:meth:`select`). The update is
    ``torch.optim.Adam``'s, followed by a clamp to [0, 1].

    Attributes:
        m: current maps ``B x h x w`` in [0, 1] (detached).
    """

    def __init__(
        self,
        classifier: Classifier,
        m_init: Tensor,
        config: MaskConfig,
        *,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 0,
    ) -> None:
        if lr <= 0:
            raise UserError(f"MASK learning rate must be > 0, got {lr}")
        if m_init.dim() != 3 or tuple(m_init.shape[-2:]) != config.mask_size:
            expected = f"B x {config.mask_size[0]} x {config.mask_size[1]}"
            raise UserError(f"initial masks must have shape {expected}, got {tuple(m_init.shape)}")
        self.classifier = classifier
        self.config = config
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.m = m_init.detach().clamp(0, 1)
        self.exp_avg = torch.zeros_like(self.m)
        self.exp_avg_sq = torch.zeros_like(self.m)
        self.steps = torch.zeros(self.m.shape[0], 1, 1, device=self.m.device, dtype=self.m.dtype)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def start(
        cls,
        classifier: Classifier,
        x: Tensor,
        config: MaskConfig | None = None,
        m_init: Tensor | None = None,
        *,
        init_value: float = 1.0,
        **options,
    ) -> MaskOptimizer:
        """An optimiser for images ``x``; ``m_init`` defaults to ``init_value`` everywhere (1 = all deleted)."""
        config = config or MaskConfig.for_input(tuple(x.shape[-2:]))
        if m_init is None:
            if not 0 <= init_value <= 1:
                raise UserError(f"MASK init_value must lie in [0, 1], got {init_value}")
            m_init = x.new_full((x.shape[0], *config.mask_size), float(init_value))
        return cls(classifier, m_init.to(device=x.device, dtype=x.dtype), config, **options)

    @classmethod
    def run(
        cls,
        classifier: Classifier,
        x: Tensor,
        target: Tensor | int,
        iterations: int,
        config: MaskConfig | None = None,
        m_init: Tensor | None = None,
        *,
        init_value: float = 1.0,
        progress: bool = False,
        **options,
    ) -> MaskOptimizer:
        """:meth:`start` on images ``x`` (checked) and :meth:`step` ``iterations`` times: the plain MASK run,
        returned with its state (maps ``.m``, ``B x h x w``)."""
        check_images(x.detach())
        optimizer = cls.start(classifier, x, config, m_init, init_value=init_value, **options)
        optimizer.step(x, target, iterations, progress=progress)
        return optimizer

    def draw_shift(self) -> tuple[int, int]:
        """The next jitter translation (shared by the batch)."""
        j = self.config.jitter
        if j == 0:
            return (0, 0)
        dy, dx = torch.randint(-j, j + 1, (2,), generator=self.generator).tolist()
        return (dy, dx)

    def step(self, x: Tensor, target: Tensor | int, iterations: int = 1, *, progress: bool = False) -> Tensor:
        """Run ``iterations`` Adam steps on images ``x`` (treated as constants).

        Returns:
            the objective of every iteration (before its update), ``iterations x B``.
        """
        if iterations < 0:
            raise UserError(f"MASK iterations must be >= 0, got {iterations}")
        x = x.detach()
        _check_masks(x, self.m, self.config)
        target = _as_targets(target, x.shape[0], x.device)
        x_blurred = gaussian_blur(x, self.config.blur_sigma)
        history = []
        loop = range(iterations)
        if progress:
            from idls.progress import progress_bar

            loop = progress_bar(loop, desc="MASK", leave=False)
        with torch.enable_grad(), flush_denormal():
            for _ in loop:
                m = self.m.requires_grad_(True)
                shift = self.draw_shift()
                loss = mask_objective(self.classifier, x, m, target, self.config, x_blurred=x_blurred, shift=shift)
                (grad,) = torch.autograd.grad(loss.sum(), m)
                self._adam_update(grad)
                history.append(loss.detach())
        return torch.stack(history) if history else x.new_zeros(0, x.shape[0])

    @torch.no_grad()
    def _adam_update(self, grad: Tensor) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = 1 - beta1**self.steps
        bias2_sqrt = (1 - beta2**self.steps).sqrt()
        denominator = self.exp_avg_sq.sqrt() / bias2_sqrt + self.eps
        self.m = (self.m.detach() - self.lr * (self.exp_avg / bias1) / denominator).clamp_(0, 1)

    def reset(self, index: Tensor | None = None, m: Tensor | None = None, *, init_value: float = 1.0) -> None:
        """Restart samples ``index`` (all by default) from maps ``m`` (default ``init_value``) with fresh Adam state."""
        index = torch.arange(self.m.shape[0], device=self.m.device) if index is None else index.to(self.m.device)
        if m is None:
            fresh = self.m.new_full((len(index), *self.m.shape[1:]), float(init_value))
        else:
            fresh = m.detach().to(self.m).clamp(0, 1)
        self.m = self.m.detach().index_copy(0, index, fresh)
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            state = getattr(self, name)
            setattr(self, name, state.index_fill(0, index, 0))

    def select(self, index: Tensor) -> MaskOptimizer:
        """A new optimiser holding only samples ``index`` (same settings; the jitter stream is copied)."""
        index = index.to(self.m.device)
        other = MaskOptimizer.__new__(MaskOptimizer)
        other.__dict__.update(self.__dict__)
        for name in ("m", "exp_avg", "exp_avg_sq", "steps"):
            setattr(other, name, getattr(self, name).detach().index_select(0, index))
        other.generator = torch.Generator().set_state(self.generator.get_state())
        return other


def optimize_masks(
    classifier: Classifier,
    x: Tensor,
    target: Tensor | int,
    m_init: Tensor | None = None,
    iterations: int = 300,
    *,
    lr: float = 0.1,
    config: MaskConfig | None = None,
    seed: int = 0,
    init_value: float = 1.0,
    progress: bool = False,
) -> Tensor:
    """The plain MASK run (no graph): maps ``B x h x w`` in [0, 1], 1 = deleted = important.

    Args:
        classifier: the explained classifier.
        x: images ``B x C x H x W`` in [0, 1] (detached internally).
        target: the explained classes (``B`` long or one int).
        m_init: starting maps ``B x h x w`` (default: ``init_value`` everywhere).
        iterations: Adam steps (300 in the v2 settings of docs/design.md §3).
        lr: Adam learning rate.
        config: settings; default ``MaskConfig.for_input(x.shape[-2:])``.
        seed: seed of the jitter stream.
        init_value: start value when ``m_init`` is None (1 = all deleted, see the module notes).
        progress: show a progress bar.
    """
    return MaskOptimizer.run(classifier, x, target, iterations, config, m_init, init_value=init_value,
                             progress=progress, lr=lr, seed=seed).m


# ---------------------------------------------------------------------------------
# Differentiable look-ahead (ADV²'s surrogate of m*(x))
# ---------------------------------------------------------------------------------
def unrolled_mask_steps(
    classifier: Classifier,
    x: Tensor,
    m: Tensor,
    target: Tensor | int,
    steps: int = 1,
    lr: float = 0.1,
    *,
    config: MaskConfig | None = None,
    normalize: bool = True,
    x_blurred: Tensor | None = None,
) -> Tensor:
    """``steps`` differentiable projected gradient steps on the maps ``m`` (``B x h x w``).

    Each step is ``m <- clamp(m - lr * g / s, 0, 1)`` with ``g`` the gradient of
    :func:`mask_objective` (no jitter) w.r.t. ``m``, taken with
    ``create_graph=True`` so the result is differentiable w.r.t. ``x`` (and
    ``m``): paper 001's ``m - xi * grad_m l_map(m; x)`` repeated. With
    ``normalize`` (default) ``s`` is the per-sample RMS of ``g``, *detached*: the
    step then moves the map by about ``lr`` like an Adam step would, whatever the
    saturation of ``p_c``, while ``d m'/dx`` remains the exact derivative of a
    gradient step with that fixed step size. ``normalize=False`` gives plain
    gradient descent (``s = 1``). Entries clamped at 0 or 1 carry no gradient.

    Returns:
        the look-ahead maps ``B x h x w`` in [0, 1], inside the autograd graph.
    """
    if steps < 0 or lr <= 0:
        raise UserError(f"look-ahead needs steps >= 0 and lr > 0, got steps={steps}, lr={lr}")
    config = config or MaskConfig.for_input(tuple(x.shape[-2:]))
    if x_blurred is None:
        x_blurred = gaussian_blur(x, config.blur_sigma)
    if not m.requires_grad:
        m = m.detach().requires_grad_(True)
    with torch.enable_grad(), flush_denormal():
        for _ in range(steps):
            loss = mask_objective(classifier, x, m, target, config, x_blurred=x_blurred)
            (grad,) = torch.autograd.grad(loss.sum(), m, create_graph=True)
            if normalize:
                scale = grad.detach().flatten(1).pow(2).mean(1).sqrt().clamp_min(torch.finfo(grad.dtype).tiny)
                grad = grad / scale[:, None, None]
            m = (m - lr * grad).clamp(0, 1)
    return m


# ---------------------------------------------------------------------------------
# The interpreter
# ---------------------------------------------------------------------------------
@INTERPRETERS.register("mask")
class MaskInterpreter(Interpreter):
    """Meaningful-perturbation maps ``B x h x w`` in [0, 1] (28 x 28 at 224 px, 8 x 8 at 32 px).

    ``attribute(x)`` runs ``iterations`` projected Adam steps from ``m = init_value`` and
    returns the map (1 = deleted = matters). ``attribute(x, create_graph=True)``
    runs the same optimisation without a graph and then ``lookahead_steps``
    differentiable steps (:func:`unrolled_mask_steps`, step ``lookahead_lr``,
    default ``lr``) from the optimised map: the returned map is differentiable
    w.r.t. ``x`` and sits that many gradient steps past the plain map.
    """

    name = "mask"
    taxonomy = "perturbation"
    display_order = 60
    family = "mask"
    map_is_optimised = True
    seeded = True

    def __init__(
        self,
        classifier: Classifier,
        *,
        mask_size: int | Sequence[int] | None = None,
        iterations: int = 300,
        lr: float = 0.1,
        l1: float = 1e-4,
        tv: float = 1e-2,
        tv_beta: float = 3.0,
        blur_sigma: float | None = None,
        mask_blur_sigma: float | None = None,
        jitter: int | None = None,
        seed: int = 0,
        init_value: float = 1.0,
        lookahead_steps: int = 1,
        lookahead_lr: float | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__(classifier)
        if iterations < 0 or lr <= 0:
            raise UserError(f"MASK needs iterations >= 0 and lr > 0, got iterations={iterations}, lr={lr}")
        if lookahead_steps < 1:
            raise UserError(f"MASK lookahead_steps must be >= 1 (the differentiable map needs one), got {lookahead_steps}")
        if not 0 <= init_value <= 1:
            raise UserError(f"MASK init_value must lie in [0, 1], got {init_value}")
        self.iterations, self.lr, self.seed, self.progress = iterations, lr, seed, progress
        self.init_value = init_value
        self.lookahead_steps = lookahead_steps
        self.lookahead_lr = lr if lookahead_lr is None else lookahead_lr
        self.config_options = dict(
            mask_size=mask_size,
            l1=l1,
            tv=tv,
            tv_beta=tv_beta,
            blur_sigma=blur_sigma,
            mask_blur_sigma=mask_blur_sigma,
            jitter=jitter,
        )
        self.config_for(classifier.input_size)  # fail early on bad options

    def another_run(self) -> "MaskInterpreter":
        """This interpreter with the next seed of its jitter stream (same options and classifier)."""
        twin = copy.copy(self)
        twin.seed = self.seed + 1
        return twin

    def config_for(self, input_size: int | Sequence[int]) -> MaskConfig:
        """The settings this interpreter uses for inputs of ``input_size``."""
        return MaskConfig.for_input(input_size, **self.config_options)

    def map_size(self, input_size: int) -> int:
        """Side of the native map for a square input (no optimisation run needed)."""
        return self.config_for(input_size).mask_size[1]

    def optimize(self, x: Tensor, target: Tensor | int) -> MaskOptimizer:
        """The plain MASK run on ``x`` (``B x C x H x W``) for ``target``, returned with its state.

        Its maps ``.m`` (``B x h x w``) equal ``attribute(x, target)``; its Adam moments and jitter
        stream let ADV² continue the run where the interpreter stopped.
        """
        return MaskOptimizer.run(self.classifier, x, target, self.iterations, self.config_for(tuple(x.shape[-2:])),
                                 init_value=self.init_value, progress=self.progress, lr=self.lr, seed=self.seed)

    def _attribute(self, x: Tensor, target: Tensor, *, create_graph: bool) -> Tensor:
        m = self.optimize(x, target).m
        if not create_graph:
            return m
        config = self.config_for(tuple(x.shape[-2:]))
        return unrolled_mask_steps(self.classifier, x, m, target, self.lookahead_steps, self.lookahead_lr, config=config)


__all__ = [
    "MaskConfig",
    "MaskInterpreter",
    "MaskOptimizer",
    "default_mask_side",
    "flush_denormal",
    "gaussian_blur",
    "mask_objective",
    "mask_penalty",
    "optimize_masks",
    "perturb",
    "translate",
    "unrolled_mask_steps",
]
