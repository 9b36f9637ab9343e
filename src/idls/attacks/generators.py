"""Perturbation generators of the generative universal attacks (GAP, JUAP, JAP).

A generator maps a noise image ``1 x C x H x W`` to a raw perturbation of the
same shape; the attack then scales it into its budget (paper 004, Eq. 6). Two
architectures, each sized for the input:

* ``resnet`` (R-JUAP): a stem convolution, two stride-2 downsamplings, residual
  blocks at the lowest resolution, two upsamplings and an output convolution
  (the image-to-image network of Johnson et al. that GAP uses). 6 blocks and
  width 32 up to 64 px; 9 blocks and width 64 above.
* ``unet`` (U-JUAP): an encoder of stride-2 levels with skip connections to a
  symmetric decoder. The number of levels is ``min(5, log2(side) - 2)``, so the
  bottleneck keeps at least 4 x 4 positions: 3 levels at 32 px, 5 at 224 px
  (the paper's five convolutional layers). Width 32 up to 64 px, 64 above.

``groups=G`` builds ``G`` independent generators in one module (grouped
convolutions and per-channel instance norms): input ``1 x G*C x H x W``, output
``1 x G*C x H x W``, generator ``g`` owning channels ``g*C .. (g+1)*C - 1``. JAP
uses it to train one generator per image in a single batched pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from idls.errors import UserError

#: generator kinds, by the name the attacks' ``generator`` option takes
GENERATOR_KINDS = ("resnet", "unet")
#: the ResNet generator's default stride-2 levels (GAP's image-to-image network)
RESNET_LEVELS = 2
#: fewest stride-2 levels per kind (a U-Net without a level has no skip to make)
MIN_LEVELS = {"resnet": 0, "unet": 1}


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


def _conv(cin: int, cout: int, groups: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin * groups, cout * groups, kernel, stride=stride, padding=(kernel - stride + 1) // 2,
                     groups=groups)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width, groups), _norm(width * groups), nn.ReLU(inplace=True),
                                  _conv(width, width, groups), _norm(width * groups))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """Residual image-to-image generator: ``1 x G*C x H x W`` -> same shape (``H``, ``W`` divisible by ``2**downsamplings``).

    Args:
        channels: image channels ``C``.
        width: channels of the stem (doubled at each downsampling).
        blocks: residual blocks at the lowest resolution.
        groups: independent generators ``G`` in the module.
        downsamplings: stride-2 downsamplings (and as many upsamplings); 0 keeps the full
            resolution. ``H`` and ``W`` must be divisible by ``2**downsamplings``.
    """

    def __init__(self, channels: int = 3, width: int = 32, blocks: int = 6, groups: int = 1,
                 downsamplings: int = RESNET_LEVELS) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = [_conv(channels, w, groups, kernel=7), _norm(w * groups), nn.ReLU(inplace=True)]
        for _ in range(downsamplings):
            layers += [_conv(w, 2 * w, groups, stride=2), _norm(2 * w * groups), nn.ReLU(inplace=True)]
            w *= 2
        layers += [_ResidualBlock(w, groups) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(w, w // 2, groups),
                       _norm(w // 2 * groups), nn.ReLU(inplace=True)]
            w //= 2
        layers += [_conv(w, channels, groups, kernel=7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise)


class UNetGenerator(nn.Module):
    """U-Net generator: ``1 x G*C x H x W`` -> same shape (``H``, ``W`` divisible by ``2**levels``).

    Args:
        channels: image channels ``C``.
        width: channels of the first level (doubled per level, capped at 8x).
        levels: stride-2 encoder levels (and as many decoder levels with skips).
        groups: independent generators ``G`` in the module.
    """

    def __init__(self, channels: int = 3, width: int = 32, levels: int = 3, groups: int = 1) -> None:
        super().__init__()
        widths = [width * min(2 ** i, 8) for i in range(levels + 1)]
        self.stem = nn.Sequential(_conv(channels, widths[0], groups), _norm(widths[0] * groups), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(_conv(widths[i], widths[i + 1], groups, kernel=4, stride=2), _norm(widths[i + 1] * groups),
                          nn.LeakyReLU(0.2))
            for i in range(levels))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv(widths[i + 1], widths[i], groups),
                          _norm(widths[i] * groups), nn.ReLU())
            for i in reversed(range(levels)))
        self.fuse = nn.ModuleList(_conv(2 * widths[i], widths[i], groups, kernel=1) for i in reversed(range(levels)))
        self.out = nn.Sequential(_conv(widths[0], channels, groups), nn.Tanh())
        self.groups = groups

    def forward(self, noise: Tensor) -> Tensor:
        h = self.stem(noise)
        skips = []
        for layer in self.down:
            skips.append(h)
            h = layer(h)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips), strict=True):
            h = up(h)
            h = fuse(_interleave_groups(h, skip, self.groups))
        return self.out(h)


def _interleave_groups(a: Tensor, b: Tensor, groups: int) -> Tensor:
    """Concatenate ``a`` and ``b`` (``1 x G*ca x h x w``, ``1 x G*cb x h x w``) per group, for grouped convs."""
    n, _, h, w = a.shape
    return torch.cat([a.view(n, groups, -1, h, w), b.view(n, groups, -1, h, w)], dim=2).view(n, -1, h, w)


def unet_levels(side: int) -> int:
    """Stride-2 levels of the U-Net for images ``side`` px: ``min(5, log2(side) - 2)``, at least 1."""
    return max(1, min(5, int(math.log2(side)) - 2))


def build_generator(kind: str, image_size: tuple[int, int, int], *, groups: int = 1,
                    width: int | None = None, levels: int | None = None) -> nn.Module:
    """A generator of ``kind`` ('resnet' or 'unet') sized for images ``C x H x W``.

    ``levels``: its stride-2 levels (default: :data:`RESNET_LEVELS` for ``resnet``,
    :func:`unet_levels` for ``unet``); ``resnet`` also takes 0 (full resolution throughout).
    Raises :class:`UserError` when the image size or ``levels`` does not suit the architecture.
    """
    channels, height, width_px = image_size
    side = min(height, width_px)
    small = side <= 64
    chosen = width or (32 if small else 64)
    if kind not in GENERATOR_KINDS:
        raise UserError(f"unknown generator {kind!r}; choose one of: {', '.join(GENERATOR_KINDS)}")
    depth = levels if levels is not None else (RESNET_LEVELS if kind == "resnet" else unet_levels(side))
    if depth < MIN_LEVELS[kind]:
        raise UserError(f"a {kind} generator needs levels >= {MIN_LEVELS[kind]}, got {depth}")
    builders: dict[str, Callable[[], nn.Module]] = {
        "resnet": lambda: ResNetGenerator(channels, chosen, blocks=6 if small else 9, groups=groups,
                                          downsamplings=depth),
        "unet": lambda: UNetGenerator(channels, chosen, levels=depth, groups=groups),
    }
    stride = 2 ** depth
    if height % stride or width_px % stride:
        raise UserError(f"a {kind} generator needs image sides divisible by {stride}, got {height} x {width_px}; "
                        f"resize the images (e.g. to 32 or 224 px)")
    return builders[kind]()


def scale_to_budget(raw: Tensor, epsilon: float, norm: str) -> Tensor:
    """Eq. 6 of paper 004: ``min(1, epsilon / ||raw||_p) * raw`` per perturbation (``B x C x H x W``)."""
    flat = raw.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    factor = torch.clamp(epsilon / size.clamp_min(1e-12), max=1.0)
    return raw * factor.view(-1, *([1] * (raw.dim() - 1)))


__all__ = ["GENERATOR_KINDS", "RESNET_LEVELS", "ResNetGenerator", "UNetGenerator", "build_generator", "scale_to_budget", "unet_levels"]
