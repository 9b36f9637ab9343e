"""The embedded synthetic data set: coloured shapes on textured backgrounds.

Procedurally generated, deterministic by seed, no download. Each image holds one
object whose *silhouette* is the class (disc, square, triangle, cross, ring,
star), drawn with a random colour, scale, position and rotation on a random
background (smooth noise, stripes or a gradient between two random colours),
together with a few distractors (small elongated blobs and thin lines that are
no class shape, sometimes in the object's colour) so that neither colour nor
"the only thing in the picture" gives the answer away. Ground-truth object masks
come with the images, so explanations can be scored against them.

Like a photo, every surface has texture: background and object each carry a
value-noise grey-level texture (octaves of 8 and 16 lattice cells per side, the
same spectrum on both, with a random amplitude per image), and the object's colour
differs from the background in grey level too. So the grey image has edges
throughout, about as densely as a CIFAR-10 photo's (AdvEdge's Sobel weights,
:mod:`idls.attacks.edge`, exceed its 0.1 threshold on a comparable share of
pixels); smooth, flat surfaces would leave the edge-weighted attacks almost no
pixels to change.

Rendering is batched: all random parameters of a chunk of :data:`CHUNK` images
are drawn at once from a generator seeded by ``(seed, chunk index)`` and the
chunk is rasterised with whole-batch tensor ops (2x supersampling for smooth
edges). Hence ``make_synthetic(n, s)`` equals the first ``n`` images of
``make_synthetic(m, s)`` for any ``m >= n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

CLASS_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring", "star")
IMAGE_SIZE = 64
#: images per independently seeded chunk (a multiple of the class count: balanced chunks)
CHUNK = 240
#: seeds of the two splits (the training split uses consecutive seeds from TRAIN_SEED)
TRAIN_SEED = 1_000
TEST_SEED = 7_777_777
#: bump when the rendering changes, so cached models trained on older data are retrained
GENERATOR_VERSION = 2

_SUPERSAMPLE = 2
_MAX_DISTRACTORS = 4
#: lattice cells per image side of the value-noise octaves of the surface texture, and their weights; the
#: background and the object share this spectrum, so texture scale is no cue to what is object
_TEXTURE_CELLS = (8, 16)
_TEXTURE_WEIGHTS = (0.5, 0.5)
#: ranges of the texture's amplitude (grey level, added to R, G and B alike) on the background and the object
_BG_TEXTURE = (0.5, 1.0)
_OBJECT_TEXTURE = (0.4, 0.8)
#: channel range of the object's colour: the headroom keeps its texture from being clipped flat at 0 or 1
_OBJECT_COLOUR_RANGE = (0.1, 0.9)
_GREY_WEIGHT = 2.0  # weight of the grey level in the object colour's distance to the background colours
_OBJECT_RADIUS = (0.17, 0.30)  # bounding-circle radius as a fraction of the image side
_MARGIN = 1.06  # every shape lies inside 1.06 x its bounding radius


@dataclass
class SyntheticSet:
    """A batch of synthetic images.

    Attributes:
        images: ``N x 3 x S x S`` float32 in [0, 1].
        labels: ``N`` long, indices into ``class_names``.
        masks: ``N x S x S`` bool, the object's pixels.
        class_names: the class names.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# ---------------------------------------------------------------------------------
# Shapes: indicator functions on local coordinates (u, v), bounding radius ~1.
# ---------------------------------------------------------------------------------
def _disc(u: Tensor, v: Tensor) -> Tensor:
    return u * u + v * v <= 0.9**2


def _square(u: Tensor, v: Tensor) -> Tensor:
    return torch.maximum(u.abs(), v.abs()) <= 0.72


def _triangle(u: Tensor, v: Tensor) -> Tensor:
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(3):  # three half-planes of an equilateral triangle, circumradius 1
        angle = math.pi / 2 + 2 * math.pi * k / 3 + math.pi
        inside &= u * math.cos(angle) + v * math.sin(angle) <= 0.5
    return inside


def _cross(u: Tensor, v: Tensor) -> Tensor:
    au, av = u.abs(), v.abs()
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u: Tensor, v: Tensor) -> Tensor:
    r2 = u * u + v * v
    return (r2 <= 0.95**2) & (r2 >= 0.5**2)


def _star(u: Tensor, v: Tensor, points: int = 5, inner: float = 0.45) -> Tensor:
    """Regular star polygon: fold the angle into one half-spike, test one edge."""
    sector = 2 * math.pi / points
    a = torch.remainder(torch.atan2(v, u), sector)
    b = torch.minimum(a, sector - a)  # 0 at a tip, sector / 2 at an inner vertex
    rho = torch.sqrt(u * u + v * v)
    px, py = rho * torch.cos(b), rho * torch.sin(b)
    tip_x, tip_y = 1.0, 0.0
    in_x, in_y = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    ex, ey = in_x - tip_x, in_y - tip_y
    # Same side of the tip->inner-vertex edge as the origin (whose cross product is positive).
    return ex * (py - tip_y) - ey * (px - tip_x) >= 0


_SHAPES: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (_disc, _square, _triangle, _cross, _ring, _star)
assert len(_SHAPES) == len(CLASS_NAMES)


# ---------------------------------------------------------------------------------
# Random parameters of one chunk.
# ---------------------------------------------------------------------------------
@dataclass
class _ChunkParams:
    labels: Tensor  # C
    centre: Tensor  # C x 2, in units of the image side
    radius: Tensor  # C, in units of the image side
    angle: Tensor  # C
    object_rgb: Tensor  # C x 3
    shade: Tensor  # C x 2, a gentle linear shading across the object
    bg_kind: Tensor  # C, 0 noise / 1 stripes / 2 gradient
    bg_rgb: Tensor  # C x 2 x 3, the two background colours
    noise_coarse: Tensor  # C x 1 x 4 x 4
    noise_fine: Tensor  # C x 1 x 8 x 8
    noise_mix: Tensor  # C
    stripe: Tensor  # C x 4: direction angle, cycles per image, phase, sharpness
    ramp_angle: Tensor  # C
    d_active: Tensor  # C x D bool
    d_line: Tensor  # C x D bool (line or blob)
    d_centre: Tensor  # C x D x 2
    d_size: Tensor  # C x D x 2 (half length, half width), in units of the image side
    d_angle: Tensor  # C x D
    d_rgb: Tensor  # C x D x 3
    pixel_noise: Tensor  # C
    bg_texture: tuple[Tensor, ...]  # per octave of _TEXTURE_CELLS: C x 1 x k x k lattice values
    object_texture: tuple[Tensor, ...]  # the same for the object's surface
    texture_amplitude: Tensor  # C x 2: background, object

    def head(self, count: int, device: torch.device) -> "_ChunkParams":
        """The parameters of the first ``count`` images, on ``device``."""
        def cut(value: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
            if isinstance(value, tuple):
                return tuple(v[:count].to(device) for v in value)
            return value[:count].to(device)

        return _ChunkParams(**{f.name: cut(getattr(self, f.name)) for f in fields(self)})


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _farthest_colour(candidates: Tensor, palette: Tensor) -> Tensor:
    """Per sample, the candidate colour farthest from its nearest palette colour.

    Distances count the grey level (the mean of R, G, B) :data:`_GREY_WEIGHT` times on top of RGB, so
    the object's outline is also an edge of the grey image, as an object's outline is in a photo.

    candidates: ``C x K x 3``; palette: ``C x P x 3`` -> ``C x 3``.
    """
    def lift(rgb: Tensor) -> Tensor:
        return torch.cat([rgb, _GREY_WEIGHT * rgb.mean(dim=-1, keepdim=True)], dim=-1)

    gap = torch.cdist(lift(candidates), lift(palette)).min(dim=2).values  # C x K
    best = gap.argmax(dim=1)
    return candidates[torch.arange(candidates.shape[0]), best]


def _draw_params(seed: int, chunk_index: int) -> _ChunkParams:
    g = torch.Generator().manual_seed((seed * 1_000_003 + chunk_index * 7_919 + 12_345) % (2**63))
    c, d, k = CHUNK, _MAX_DISTRACTORS, len(CLASS_NAMES)
    labels = (torch.arange(c) % k)[torch.randperm(c, generator=g)]
    radius = _uniform(g, (c,), *_OBJECT_RADIUS)
    reach = radius * _MARGIN
    centre = reach[:, None] + torch.rand((c, 2), generator=g) * (1 - 2 * reach[:, None])
    bg_rgb = torch.rand((c, 2, 3), generator=g)
    # Object colour: of 6 random candidates, the one farthest from both background colours.
    object_rgb = _farthest_colour(_uniform(g, (c, 6, 3), *_OBJECT_COLOUR_RANGE), bg_rgb)
    d_rgb = torch.rand((c, d, 3), generator=g)
    same_colour = torch.rand((c, d, 1), generator=g) < 0.35
    d_rgb = torch.where(same_colour, object_rgb[:, None, :].expand(-1, d, -1), d_rgb)
    d_line = torch.rand((c, d), generator=g) < 0.5
    d_half_length = torch.where(d_line, _uniform(g, (c, d), 0.09, 0.20), _uniform(g, (c, d), 0.04, 0.09))
    d_half_width = torch.where(d_line, _uniform(g, (c, d), 0.008, 0.018), d_half_length * _uniform(g, (c, d), 0.3, 0.55))
    return _ChunkParams(
        labels=labels,
        centre=centre,
        radius=radius,
        angle=_uniform(g, (c,), 0, 2 * math.pi),
        object_rgb=object_rgb,
        shade=_uniform(g, (c, 2), -0.12, 0.12),
        bg_kind=torch.randint(0, 3, (c,), generator=g),
        bg_rgb=bg_rgb,
        noise_coarse=torch.rand((c, 1, 4, 4), generator=g),
        noise_fine=torch.rand((c, 1, 8, 8), generator=g),
        noise_mix=torch.rand((c,), generator=g),
        stripe=torch.stack(
            [
                _uniform(g, (c,), 0, math.pi),
                _uniform(g, (c,), 2, 7),
                _uniform(g, (c,), 0, 2 * math.pi),
                _uniform(g, (c,), 1, 6),
            ],
            dim=1,
        ),
        ramp_angle=_uniform(g, (c,), 0, 2 * math.pi),
        d_active=torch.rand((c, d), generator=g) < 0.7,
        d_line=d_line,
        d_centre=torch.rand((c, d, 2), generator=g),
        d_size=torch.stack([d_half_length, d_half_width], dim=2),
        d_angle=_uniform(g, (c, d), 0, 2 * math.pi),
        d_rgb=d_rgb,
        pixel_noise=_uniform(g, (c,), 0.0, 0.04),
        bg_texture=tuple(torch.rand((c, 1, k, k), generator=g) for k in _TEXTURE_CELLS),
        object_texture=tuple(torch.rand((c, 1, k, k), generator=g) for k in _TEXTURE_CELLS),
        texture_amplitude=torch.stack([_uniform(g, (c,), *_BG_TEXTURE), _uniform(g, (c,), *_OBJECT_TEXTURE)], dim=1),
    )


# ---------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------
def _grid(size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in units of the image side: x ``1 x 1 x S`` (columns), y ``1 x S x 1`` (rows)."""
    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    return t.view(1, 1, size), t.view(1, size, 1)


def _window(centre: Tensor, extent: float, size: int, supersample: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """A square pixel window per image around ``centre`` that holds everything within ``extent``.

    Clamping the window into the image keeps it covering the in-image part of the shape.

    Args:
        centre: ``B x 2`` (x, y) in units of the image side.
        extent: largest distance of a shape point from its centre, in image units.
    Returns:
        x ``B x 1 x W'`` and y ``B x W' x 1`` sub-pixel centres (image units, ``W' = W * supersample``),
        flat ``B x W*W`` indices of the window's pixels in an ``S x S`` image, and ``W``.
    """
    width = min(size, math.ceil(2 * extent * size) + 3)
    corner = (centre * size - width / 2).floor().clamp(0, size - width).long()  # B x 2
    steps = (torch.arange(width * supersample, device=centre.device, dtype=torch.float32) + 0.5) / supersample
    x = (corner[:, 0:1] + steps) / size
    y = (corner[:, 1:2] + steps) / size
    pixels = torch.arange(width, device=centre.device)
    rows, cols = corner[:, 1:2] + pixels, corner[:, 0:1] + pixels
    flat = (rows[:, :, None] * size + cols[:, None, :]).flatten(1)
    return x[:, None, :], y[:, :, None], flat, width


def _paste(window_values: Tensor, flat: Tensor, size: int) -> Tensor:
    """Windows ``B x W x W`` -> ``B x S x S`` images, zero outside the windows."""
    full = torch.zeros(window_values.shape[0], size * size, device=window_values.device, dtype=window_values.dtype)
    return full.scatter_(1, flat, window_values.flatten(1)).view(-1, size, size)


def _local(x: Tensor, y: Tensor, centre: Tensor, angle: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate/scale image coordinates into shape-local ones.

    x, y: broadcastable to ``B x H x W``; centre ``B x 2``; angle, scale ``B`` -> u, v ``B x H x W``.
    """
    dx = x - centre[:, 0, None, None]
    dy = y - centre[:, 1, None, None]
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    s = scale[:, None, None]
    return (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s


def _object_alpha(p: _ChunkParams, size: int) -> Tensor:
    """Object coverage ``C x S x S`` in [0, 1] (supersampled); one pass per class, not per image."""
    x, y, flat, width = _window(p.centre, _OBJECT_RADIUS[1] * _MARGIN, size, _SUPERSAMPLE)
    u, v = _local(x, y, p.centre, p.angle, p.radius)
    inside = torch.zeros_like(u, dtype=torch.bool)
    for cls, shape in enumerate(_SHAPES):
        rows = (p.labels == cls).nonzero().squeeze(1)
        if rows.numel():
            inside[rows] = shape(u[rows], v[rows])
    coverage = F.avg_pool2d(inside.float()[:, None], _SUPERSAMPLE)[:, 0]
    return _paste(coverage, flat, size)


def _texture(lattices: tuple[Tensor, ...], size: int) -> Tensor:
    """Zero-mean value-noise texture ``C x 1 x S x S`` (within [-0.5, 0.5] but for bicubic overshoot) from the
    per-octave lattices ``C x 1 x k x k`` of :data:`_TEXTURE_CELLS`."""
    field = sum(w * F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
                for w, z in zip(_TEXTURE_WEIGHTS, lattices, strict=True))
    return field - field.mean(dim=(2, 3), keepdim=True)


def _background(p: _ChunkParams, size: int) -> Tensor:
    """Backgrounds ``C x 3 x S x S``: a two-colour blend driven by one texture field."""
    x, y = _grid(size, p.labels.device)
    up = lambda z: F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)[:, 0]  # noqa: E731
    mix = p.noise_mix[:, None, None]
    noise = mix * up(p.noise_coarse) + (1 - mix) * up(p.noise_fine)
    lo = noise.flatten(1).min(1).values[:, None, None]
    hi = noise.flatten(1).max(1).values[:, None, None]
    noise = (noise - lo) / (hi - lo + 1e-6)
    direction, cycles, phase, sharpness = (p.stripe[:, i, None, None] for i in range(4))
    along = torch.cos(direction) * x + torch.sin(direction) * y
    stripes = torch.sigmoid(sharpness * torch.sin(2 * math.pi * cycles * along + phase))
    ramp_dir = p.ramp_angle[:, None, None]
    ramp = torch.cos(ramp_dir) * (x - 0.5) + torch.sin(ramp_dir) * (y - 0.5)
    ramp = (ramp / math.sqrt(2) + 0.5).clamp(0, 1)
    kind = p.bg_kind[:, None, None]
    field = torch.where(kind == 0, noise, torch.where(kind == 1, stripes, ramp))[:, None]  # C x 1 x S x S
    a, b = p.bg_rgb[:, 0, :, None, None], p.bg_rgb[:, 1, :, None, None]
    texture = _texture(p.bg_texture, size) * p.texture_amplitude[:, 0, None, None, None]
    return (a + (b - a) * field + texture).clamp(0, 1)


def _composite_distractors(canvas: Tensor, p: _ChunkParams, size: int) -> Tensor:
    """Paint the active distractors (blobs: ellipses; lines: thin bars) onto ``canvas`` ``C x 3 x S x S``.

    Drawn at native resolution with an approximate distance to the edge (in
    pixels) for anti-aliasing, each in a small window around its centre.
    """
    extent = float(p.d_size.max()) * math.sqrt(2)
    for slot in range(p.d_active.shape[1]):
        centre = p.d_centre[:, slot]
        x, y, flat, _ = _window(centre, extent, size, 1)
        half_length, half_width = p.d_size[:, slot, 0], p.d_size[:, slot, 1]
        u, v = _local(x, y, centre, p.d_angle[:, slot], torch.ones_like(half_length))
        hl, hw = half_length[:, None, None], half_width[:, None, None]
        ellipse = (torch.sqrt((u / hl) ** 2 + (v / hw) ** 2) - 1) * hw
        line = torch.maximum(u.abs() - hl, v.abs() - hw)
        distance = torch.where(p.d_line[:, slot, None, None], line, ellipse) * size
        alpha = (0.5 - distance).clamp(0, 1) * p.d_active[:, slot, None, None]
        canvas = torch.lerp(canvas, p.d_rgb[:, slot, :, None, None], _paste(alpha, flat, size)[:, None])
    return canvas


def _render_chunk(p: _ChunkParams, size: int, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Images ``C x 3 x S x S`` in [0, 1] and masks ``C x S x S`` of one chunk (``noise``: unit Gaussian pixels)."""
    canvas = _composite_distractors(_background(p, size), p, size)
    alpha = _object_alpha(p, size)[:, None]
    x, y = _grid(size, canvas.device)
    shading = p.shade[:, 0, None, None] * (x - 0.5) + p.shade[:, 1, None, None] * (y - 0.5)
    texture = _texture(p.object_texture, size) * p.texture_amplitude[:, 1, None, None, None]
    colour = (p.object_rgb[:, :, None, None] + shading[:, None] + texture).clamp(0, 1)
    canvas = torch.lerp(canvas, colour, alpha) + noise * p.pixel_noise[:, None, None, None]
    return canvas.clamp(0, 1), alpha[:, 0] >= 0.5


def make_synthetic(n: int, seed: int, size: int = IMAGE_SIZE, device: str | torch.device = "cpu") -> SyntheticSet:
    """Generate ``n`` synthetic images, deterministic in ``seed`` (bitwise on the CPU).

    Args:
        n: number of images.
        seed: any non-negative integer; the training split uses :data:`TRAIN_SEED`
            onwards, the test split :data:`TEST_SEED`.
        size: image side in pixels (shapes scale with it).
        device: where to render (random parameters are always drawn on the CPU).

    Returns:
        :class:`SyntheticSet` with images ``n x 3 x size x size``, labels ``n``, masks ``n x size x size``.
    """
    if n < 0 or seed < 0 or size < 8:
        raise ValueError(f"make_synthetic needs n >= 0, seed >= 0, size >= 8 (got n={n}, seed={seed}, size={size})")
    device = torch.device(device)
    images, labels, masks = [], [], []
    for chunk in range(math.ceil(n / CHUNK)):
        count = min(CHUNK, n - chunk * CHUNK)
        params = _draw_params(seed, chunk).head(count, device)
        noise_gen = torch.Generator().manual_seed((seed * 7_654_321 + chunk * 104_729 + 99) % (2**63))
        noise = torch.randn((CHUNK, 3, size, size), generator=noise_gen)[:count].to(device)
        img, mask = _render_chunk(params, size, noise)
        images.append(img)
        labels.append(params.labels.to(device))
        masks.append(mask)
    if not images:
        empty = torch.empty(0, 3, size, size, device=device)
        return SyntheticSet(empty, torch.empty(0, dtype=torch.long, device=device), torch.empty(0, size, size, dtype=torch.bool, device=device))
    return SyntheticSet(torch.cat(images), torch.cat(labels), torch.cat(masks))
