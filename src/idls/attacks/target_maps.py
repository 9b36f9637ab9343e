"""Target attribution maps for joint attacks (ADV², AdvEdge): what ``g(x*)`` should look like.

A target map is ``B x h x w`` in [0, 1] at the interpreter's native resolution.
Sources (paper 001 §3 and §5 Q1):

* ``'benign'`` (default): the benign map ``g(x)`` of the true class, i.e. the
  explanation the attacked image had before the attack;
* ``'patch'``: a random rectangle or circle (random size, angle and position,
  1 inside, 0 outside), drawn from a seeded generator (:func:`patch_maps`);
* ``'other-class'``: the benign map of a random correctly classified image of
  another class, neither the image's own class nor its attack target
  (:func:`other_class_maps`);
* a file (``.safetensors``, ``.pt``/``.pth``) holding one tensor ``h x w``
  (the same map for every image) or ``B x h x w`` (:func:`load_map_file`);
* a tensor given directly (checked like a file's content).

:func:`resolve_target_maps` turns any of these into the maps of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from idls.errors import UserError

TARGET_MAP_KINDS: tuple[str, ...] = ("benign", "patch", "other-class")
MAP_FILE_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth")
_RANGE_TOLERANCE = 1e-6

# Patch geometry, as fractions of the map side (cells are addressed by their centres in [0, 1]).
RECTANGLE_HALF_SIDES = (0.15, 0.4)
CIRCLE_RADIUS = (0.15, 0.35)
CENTRE_RANGE = (0.2, 0.8)

MapFn = Callable[[Tensor, Tensor], Tensor]  # (images B x C x H x W, classes B) -> maps B x h x w


# ---------------------------------------------------------------------------------
# Random patches
# ---------------------------------------------------------------------------------
def patch_maps(
    batch: int,
    size: tuple[int, int],
    seed: int,
    *,
    indices: Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Random patch maps ``B x h x w`` with 1 inside a rectangle or circle and 0 outside.

    Per map: shape rectangle or circle (probability 1/2 each), centre uniform in
    [0.2, 0.8] of each side, rotation uniform in [0, pi) (rectangles), half-sides
    uniform in [0.15, 0.4] of the side (rectangles) or radius in [0.15, 0.35]
    (circles). A cell is inside when its centre is; the cell under the patch
    centre is always inside, so no map is empty.

    Args:
        batch: number of maps B.
        size: ``(h, w)`` native map size.
        seed: generator seed; the same seed gives the same maps on every device.
        indices: optional ``B`` dataset positions: the map of an image then depends
            only on (seed, its index), not on the batch it travels in.
        device: device of the result.
        dtype: dtype of the result.
    """
    height, width = size
    if batch < 0 or height < 1 or width < 1:
        raise UserError(f"patch maps need a batch >= 0 and a positive map size, got {batch} and {size}")
    if indices is not None:
        idx = indices.detach().long().cpu()
        if idx.shape != (batch,) or (idx.numel() and int(idx.min()) < 0):
            raise UserError(f"indices must be {batch} non-negative dataset positions")
        count = int(idx.max()) + 1 if idx.numel() else 0
    else:
        idx, count = torch.arange(batch), batch
    # one row of 7 uniforms per dataset position (drawn row by row: row i does not depend on count)
    uniforms = torch.rand(count, 7, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)[idx]

    def column(k: int, bounds: tuple[float, float]) -> Tensor:
        low, high = bounds
        return (low + (high - low) * uniforms[:, k])[:, None, None]

    is_circle = column(0, (0.0, 1.0)) < 0.5
    centre_y, centre_x = column(1, CENTRE_RANGE), column(2, CENTRE_RANGE)
    angle = column(3, (0.0, math.pi))
    half_a, half_b = column(4, RECTANGLE_HALF_SIDES), column(5, RECTANGLE_HALF_SIDES)
    radius = column(6, CIRCLE_RADIUS)

    rows = ((torch.arange(height, dtype=torch.float64) + 0.5) / height)[None, :, None]
    cols = ((torch.arange(width, dtype=torch.float64) + 0.5) / width)[None, None, :]
    dy, dx = rows - centre_y, cols - centre_x
    along = torch.cos(angle) * dx + torch.sin(angle) * dy
    across = -torch.sin(angle) * dx + torch.cos(angle) * dy
    inside_rectangle = (along.abs() <= half_a) & (across.abs() <= half_b)
    inside_circle = dy * dy + dx * dx <= radius * radius
    inside = torch.where(is_circle, inside_circle, inside_rectangle)
    # the cell containing the centre is always inside
    centre_row = (centre_y[:, 0, 0] * height).long().clamp(0, height - 1)
    centre_col = (centre_x[:, 0, 0] * width).long().clamp(0, width - 1)
    inside[torch.arange(batch), centre_row, centre_col] = True
    return inside.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------
# Maps of other classes
# ---------------------------------------------------------------------------------
def other_class_maps(
    labels: Tensor,
    targets: Tensor,
    donor_maps: Tensor,
    donor_labels: Tensor,
    seed: int,
) -> Tensor:
    """For each image, the map of a random donor whose class is neither its label nor its target.

    Args:
        labels: ``B`` true classes of the attacked images.
        targets: ``B`` attack targets.
        donor_maps: ``P x h x w`` benign maps of correctly classified donor images.
        donor_labels: ``P`` their classes.
        seed: seeds the choice (uniform over the eligible donors).

    Returns:
        ``B x h x w`` maps (rows of ``donor_maps``).

    Raises:
        UserError: an image has no eligible donor.
    """
    labels, targets = labels.long().cpu(), targets.long().cpu()
    donor_labels = donor_labels.long().cpu()
    eligible = (donor_labels[None, :] != labels[:, None]) & (donor_labels[None, :] != targets[:, None])
    missing = ~eligible.any(1)
    if bool(missing.any()):
        raise UserError(
            f"{int(missing.sum())} image(s) have no correctly classified donor of another class than their label and "
            "target for target_map='other-class'; attack a batch with more classes or pass "
            "other_class_pool=(images, labels)"
        )
    generator = torch.Generator().manual_seed(int(seed))
    keys = torch.rand(eligible.shape, generator=generator).masked_fill(~eligible, -1.0)
    choice = keys.argmax(1).to(donor_maps.device)
    return donor_maps[choice]


# ---------------------------------------------------------------------------------
# User-supplied maps
# ---------------------------------------------------------------------------------
def _read_tensor(path: Path) -> Tensor:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        content = load_file(str(path))
    else:
        content = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(content, dict):
        tensors = [v for v in content.values() if isinstance(v, Tensor)]
        if len(tensors) != 1:
            raise UserError(f"target map file {path} must hold exactly one tensor, found {len(tensors)}")
        content = tensors[0]
    if not isinstance(content, Tensor):
        raise UserError(f"target map file {path} must hold a tensor (h x w or B x h x w), got {type(content).__name__}")
    return content


def check_target_maps(maps: Tensor, batch: int, size: tuple[int, int], source: str = "target maps") -> Tensor:
    """Validate ``h x w`` or ``B x h x w`` maps in [0, 1]; return them as ``B x h x w`` float.

    Raises:
        UserError: wrong shape, non-finite values or values outside [0, 1].
    """
    if not isinstance(maps, Tensor):
        raise UserError(f"{source} must be a tensor, got {type(maps).__name__}")
    expected = f"{size[0]} x {size[1]} or {batch} x {size[0]} x {size[1]}"
    bad_batch = maps.dim() == 3 and maps.shape[0] not in (1, batch)
    if maps.dim() not in (2, 3) or tuple(maps.shape[-2:]) != tuple(size) or bad_batch:
        raise UserError(f"{source} must have shape {expected} (the interpreter's native map size), "
                        f"got {tuple(maps.shape)}")
    if maps.dtype == torch.bool:
        maps = maps.float()
    if not maps.is_floating_point():
        raise UserError(f"{source} must hold floating-point values in [0, 1], got dtype {maps.dtype}")
    if not bool(torch.isfinite(maps).all()):
        raise UserError(f"{source} contain NaN or infinite values")
    if maps.numel() and (float(maps.min()) < -_RANGE_TOLERANCE or float(maps.max()) > 1 + _RANGE_TOLERANCE):
        raise UserError(f"{source} must lie in [0, 1], got range [{float(maps.min()):.3g}, {float(maps.max()):.3g}]")
    maps = maps.clamp(0, 1)
    if maps.dim() == 2:
        maps = maps[None]
    return maps.expand(batch, *size).clone() if maps.shape[0] != batch else maps.clone()


def load_map_file(path: str | Path, batch: int, size: tuple[int, int], indices: Tensor | None = None) -> Tensor:
    """Maps ``B x h x w`` from a ``.safetensors`` / ``.pt`` / ``.pth`` file (loaded with ``weights_only``).

    The file holds one tensor ``h x w`` (used for every image), ``B x h x w``, or
    ``N x h x w`` for a whole data set, of which ``indices`` (``B`` data-set
    positions) pick the batch's maps.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"target map file {path} does not exist")
    if path.suffix not in MAP_FILE_SUFFIXES:
        raise UserError(f"target map file {path} must be one of {', '.join(MAP_FILE_SUFFIXES)}")
    try:
        content = _read_tensor(path)
    except UserError:
        raise
    except Exception as exc:  # corrupt file, pickled code refused by weights_only, ...
        raise UserError(f"cannot read target map file {path}: {exc}") from None
    if indices is not None and content.dim() == 3 and content.shape[0] not in (1, batch):
        positions = indices.detach().long().cpu()
        if positions.numel() and int(positions.max()) >= content.shape[0]:
            raise UserError(f"target map file {path} holds {content.shape[0]} maps but image position "
                            f"{int(positions.max())} was attacked; give one map per image (or one for all)")
        content = content[positions]
    return check_target_maps(content, batch, size, source=f"target maps in {path}")


# ---------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------
def resolve_target_maps(
    spec: str | Path | Tensor,
    *,
    x: Tensor,
    labels: Tensor,
    targets: Tensor,
    map_size: tuple[int, int],
    benign_map_fn: MapFn,
    seed: int = 0,
    predict_fn: Callable[[Tensor], Tensor] | None = None,
    other_class_pool: tuple[Tensor, Tensor] | None = None,
    indices: Tensor | None = None,
) -> Tensor:
    """Target maps ``B x h x w`` of a batch for a target-map spec.

    Args:
        spec: ``'benign'``, ``'patch'``, ``'other-class'``, a file path or a tensor.
        x: ``B x C x H x W`` attacked images.
        labels: ``B`` true classes; targets: ``B`` attack targets.
        map_size: the interpreter's native ``(h, w)``.
        benign_map_fn: ``(images, classes) -> maps`` (the real interpreter, no graph).
        seed: seeds 'patch' and 'other-class'.
        predict_fn: ``images -> classes``; 'other-class' keeps donors it classifies correctly.
        other_class_pool: ``(images, labels)`` donors for 'other-class' (default: the batch).
        indices: optional ``B`` data-set positions of the batch: 'patch' maps then depend on the
            image, not its batch, and a file of ``N`` maps is indexed by them.
    """
    batch = x.shape[0]
    if isinstance(spec, Tensor):
        return check_target_maps(spec, batch, map_size).to(x.device)
    if isinstance(spec, Path) or (isinstance(spec, str) and spec not in TARGET_MAP_KINDS):
        if isinstance(spec, str) and not Path(spec).suffix:
            raise UserError(f"unknown target map {spec!r}; choose one of: {', '.join(TARGET_MAP_KINDS)}, or a map file")
        return load_map_file(spec, batch, map_size, indices).to(x.device)
    if spec == "benign":
        return benign_map_fn(x, labels)
    if spec == "patch":
        return patch_maps(batch, map_size, seed, indices=indices, device=x.device, dtype=x.dtype)
    donors, donor_labels = (x, labels) if other_class_pool is None else other_class_pool
    donors, donor_labels = donors.to(x.device), donor_labels.to(x.device).long()
    if predict_fn is not None:
        correct = predict_fn(donors) == donor_labels
        donors, donor_labels = donors[correct], donor_labels[correct]
    donor_maps = benign_map_fn(donors, donor_labels) if len(donors) else x.new_zeros(0, *map_size)
    return other_class_maps(labels, targets, donor_maps, donor_labels, seed).to(x.device)


__all__ = [
    "MAP_FILE_SUFFIXES",
    "TARGET_MAP_KINDS",
    "check_target_maps",
    "load_map_file",
    "other_class_maps",
    "patch_maps",
    "resolve_target_maps",
]
