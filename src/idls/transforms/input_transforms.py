"""Input transforms (defences) and the BPDA gradient for non-differentiable ones.

An :class:`InputTransform` maps pixels ``B x C x H x W`` in [0, 1] to pixels of the
same shape in [0, 1]. A transform whose gradient is zero or undefined almost
everywhere (quantisation, JPEG, median filtering...) sets ``differentiable = False``;
its forward pass then goes through :func:`bpda`: the value is the transform's, the
backward pass is the identity (Backward Pass Differentiable Approximation, Athalye,
Carlini & Wagner 2018), so gradient attacks see through it.

Registered transforms: ``bit-depth`` (:class:`BitDepth`), ``median`` (:class:`MedianFilter`,
differentiable: the gradient reaches the selected pixel) and ``non-local-means``
(:class:`NonLocalMeans`, OpenCV, BPDA): the three squeezers of feature squeezing
(Xu et al. 2018; :mod:`idls.defenses.detectors.squeezing`). Example::

    squeeze = BitDepth(4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = squeeze(x)                  # round(x * 15) / 15
    y.sum().backward()              # x.grad == 1 everywhere (identity backward)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from idls.errors import UserError
from idls.registry import Registry


class _StraightThrough(torch.autograd.Function):
    """``forward(x, fn) = fn(x)`` (not recorded); ``backward(g) = g`` (identity)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        with torch.no_grad():
            y = fn(x)
        if y.shape != x.shape:
            raise ValueError(f"a BPDA transform must keep the shape {tuple(x.shape)}, got {tuple(y.shape)}")
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def bpda(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn(x)`` in the forward pass, the identity in the backward pass (``x`` ``B x C x H x W``).

    Higher derivatives are those of the identity (zero second derivative).
    """
    return _StraightThrough.apply(x, fn)


class InputTransform(nn.Module):
    """Base class of defences: ``forward(x)`` maps ``B x C x H x W`` in [0, 1] to the same.

    Subclasses implement :meth:`transform` and set ``differentiable``; when it is
    ``False`` the forward pass uses :func:`bpda` (value of the transform, identity gradient).
    """

    #: registry name (also the prefix of :meth:`describe`)
    name: ClassVar[str] = "transform"
    #: whether autograd through :meth:`transform` gives useful gradients
    differentiable: ClassVar[bool] = True

    def transform(self, x: Tensor) -> Tensor:
        """The defence itself: ``B x C x H x W`` in [0, 1] -> same shape in [0, 1]."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x) if self.differentiable else bpda(self.transform, x)

    def describe(self) -> str:
        """A short label with the options, e.g. ``'bit-depth(4)'`` (recorded in ``ModelInfo.extra``)."""
        return self.name


DEFENSES: Registry[Callable[..., InputTransform]] = Registry("defence")


@DEFENSES.register("bit-depth")
class BitDepth(InputTransform):
    """Bit-depth reduction (feature squeezing, Xu et al. 2018): ``round(x * (2^b - 1)) / (2^b - 1)``.

    Non-differentiable (zero gradient almost everywhere), so attacks get the BPDA identity gradient.

    Args:
        bits: bits per channel, 1 to 8.
    """

    name = "bit-depth"
    differentiable = False
    #: its outputs lie on a grid of ``levels + 1`` values per channel (adaptive attacks search that grid)
    quantises: ClassVar[bool] = True

    def __init__(self, bits: int) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
            raise UserError(f"bit-depth needs bits as an integer from 1 to 8, got {bits!r}; e.g. bits=4")
        self.bits = bits

    @property
    def levels(self) -> int:
        """``2^bits - 1``, the largest quantised value."""
        return 2**self.bits - 1

    def transform(self, x: Tensor) -> Tensor:
        return torch.round(x * self.levels) / self.levels

    def describe(self) -> str:
        return f"{self.name}({self.bits})"

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def _symmetric_indices(length: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices ``-before .. length + after - 1`` folded into ``0 .. length - 1`` by half-sample reflection.

    This is scipy.ndimage's ``mode="reflect"`` (``d c b a | a b c d | d c b a``), repeated
    for windows wider than the image.
    """
    index = torch.arange(-before, length + after, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


@DEFENSES.register("median")
class MedianFilter(InputTransform):
    """Median smoothing (feature squeezing, Xu et al. 2018): per channel, over a ``size x size`` window.

    The output equals ``scipy.ndimage.median_filter(x, size=(1, 1, k, k), mode="reflect")`` on the
    ``B x C x H x W`` array: the window of output pixel ``i`` covers input rows ``i - k // 2`` to
    ``i - k // 2 + k - 1`` (scipy's ``origin=0``, so an even window reaches one pixel further up /
    left than down / right), borders are extended by half-sample reflection, and the value is
    the element of rank ``k * k // 2`` (0-based) of the sorted window: the *upper* median for
    even ``k`` (``torch.median`` would give the lower one).

    Differentiable: the forward pass selects one window element (``torch.kthvalue``), so the
    gradient of each output pixel flows to exactly the input pixel it selected. This is the
    "differentiable median" adaptive attacks back-propagate through; its value is the real median.

    Args:
        size: window side ``k >= 2`` (even sides allowed, e.g. Xu et al.'s 2 x 2).
    """

    name = "median"
    differentiable = True

    def __init__(self, size: int) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise UserError(f"median needs size as an integer window side >= 2, got {size!r}; e.g. size=2")
        self.size = size

    def transform(self, x: Tensor) -> Tensor:
        """``B x C x H x W`` -> ``B x C x H x W``: the median of each pixel's ``size x size`` window."""
        k = self.size
        before, after = k // 2, k - 1 - k // 2
        _, _, height, width = x.shape
        rows = _symmetric_indices(height, before, after, x.device)
        cols = _symmetric_indices(width, before, after, x.device)
        padded = x.index_select(2, rows).index_select(3, cols)            # B x C x (H + k - 1) x (W + k - 1)
        windows = padded.unfold(2, k, 1).unfold(3, k, 1)                  # B x C x H x W x k x k
        flat = windows.reshape(*windows.shape[:4], k * k)                 # B x C x H x W x k^2
        return flat.kthvalue(k * k // 2 + 1, dim=-1).values

    def describe(self) -> str:
        return f"{self.name}({self.size}x{self.size})"

    def extra_repr(self) -> str:
        return f"size={self.size}"


def _odd_window(value: Any, name: str, example: int) -> int:
    """``value`` as a positive odd integer window side, or a one-line :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise UserError(f"non-local-means needs {name} as an odd integer >= 1, got {value!r}; e.g. {name}={example}")
    return value


@DEFENSES.register("non-local-means")
class NonLocalMeans(InputTransform):
    """Non-local means smoothing (feature squeezing, Xu et al. 2018) with OpenCV.

    Each image is quantised to uint8 (``round(255 x)``) and denoised with
    ``cv2.fastNlMeansDenoisingColored(image, None, h, hColor, templateWindowSize,
    searchWindowSize)`` with ``h = hColor = strength``, ``templateWindowSize = patch`` and
    ``searchWindowSize = search``; the result is divided by 255. The same strength for the
    luminance and the colour components is the choice here: Xu et al. give one strength per
    setting. OpenCV expects BGR, so the RGB channels are reversed before and after the call.
    Single-channel images use ``cv2.fastNlMeansDenoising`` with ``h = strength``. Xu et al.'s
    settings are written ``search-patch-strength``: 13-3-2 (CIFAR-10), 11-3-4 (ImageNet).

    Not differentiable: attacks get the BPDA identity gradient. Runs on the CPU, one image at a time.

    Args:
        search: side of the search window (odd, OpenCV's ``searchWindowSize``).
        patch: side of the compared patches (odd, at most ``search``; ``templateWindowSize``).
        strength: filter strength ``h`` > 0 (OpenCV's ``h`` and ``hColor``), in uint8 grey levels.
    """

    name = "non-local-means"
    differentiable = False

    def __init__(self, search: int, patch: int, strength: float) -> None:
        super().__init__()
        self.search = _odd_window(search, "search", 13)
        self.patch = _odd_window(patch, "patch", 3)
        if self.patch > self.search:
            raise UserError(f"non-local-means needs patch <= search, got patch={patch}, search={search}; "
                            "e.g. search=13,patch=3")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength < float("inf"):
            raise UserError(f"non-local-means needs strength as a number > 0, got {strength!r}; e.g. strength=2")
        self.strength = float(strength)

    def _denoise(self, image: Any) -> Any:
        """One ``H x W x C`` uint8 RGB (or ``H x W x 1`` grey) array -> the same, denoised."""
        import cv2

        if image.shape[2] == 1:
            return cv2.fastNlMeansDenoising(image[:, :, 0], None, self.strength, self.patch, self.search)[:, :, None]
        bgr = cv2.fastNlMeansDenoisingColored(image[:, :, ::-1].copy(), None, self.strength, self.strength,
                                              self.patch, self.search)
        return bgr[:, :, ::-1]

    def transform(self, x: Tensor) -> Tensor:
        """``B x C x H x W`` (C = 1 or 3) -> the same shape, each image smoothed by OpenCV."""
        if x.shape[1] not in (1, 3):
            raise UserError(f"non-local-means works on 1- or 3-channel images, got {x.shape[1]} channels")
        pixels = torch.round(x.detach() * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        smoothed = np.stack([self._denoise(image) for image in pixels])
        out = torch.from_numpy(smoothed).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
        return out / 255

    def describe(self) -> str:
        return f"{self.name}({self.search}-{self.patch}-{self.strength:g})"

    def extra_repr(self) -> str:
        return f"search={self.search}, patch={self.patch}, strength={self.strength:g}"


__all__ = ["DEFENSES", "BitDepth", "InputTransform", "MedianFilter", "NonLocalMeans", "bpda"]
