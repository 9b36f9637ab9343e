"""Input transforms (defences) and the BPDA gradient for non-differentiable ones.

An :class:`InputTransform` maps pixels ``B x C x H x W`` in [0, 1] to pixels of the
same shape in [0, 1]. A transform whose gradient is zero or undefined almost
everywhere (quantisation, JPEG, median filtering...) sets ``differentiable = False``;
its forward pass then goes through :func:`bpda`: the value is the transform's, the
backward pass is the identity (Backward Pass Differentiable Approximation, Athalye,
Carlini & Wagner 2018), so gradient attacks see through it. Example::

    squeeze = BitDepth(4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = squeeze(x)                  # round(x * 15) / 15
    y.sum().backward()              # x.grad == 1 everywhere (identity backward)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

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


__all__ = ["DEFENSES", "BitDepth", "InputTransform", "bpda"]
