"""Interpreter validity: do the maps localise the ground-truth object? (paper 001 Table 2 analogue)

For every interpreter, on images with object masks: IoU between the top-k region
of the (upsampled) map and the object mask, and pointing-game accuracy; the same
two numbers for a uniformly random map are the floor every interpreter must beat.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from idls import metrics
from idls.interpreters.base import Interpreter


def random_maps_like(maps: Tensor, seed: int = 0) -> Tensor:
    """Uniform random maps with the shape of ``maps`` (``B x h x w``), seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(maps.shape, generator=generator).to(maps.device)


def interpreter_validity(
    interpreters: Mapping[str, Interpreter],
    images: Tensor,
    object_masks: Tensor,
    *,
    k: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
    maps: Mapping[str, Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Localisation table ``{name: {localization_iou, pointing_game, random_iou, random_pointing}}``.

    Args:
        interpreters: name -> interpreter (explaining the predicted class).
        images: ``N x 3 x H x W`` in [0, 1].
        object_masks: ``N x H x W`` bool ground-truth object pixels.
        maps: precomputed benign maps per name (skips recomputation).
    """
    table: dict[str, dict[str, float]] = {}
    for name, interpreter in interpreters.items():
        if maps is not None and name in maps:
            m = maps[name]
        else:
            m = torch.cat([interpreter.attribute(chunk) for chunk in images.split(batch_size)])
        rand = random_maps_like(m, seed)
        table[name] = {
            "localization_iou": float(metrics.localization_iou(m, object_masks, k).mean()),
            "pointing_game": float(metrics.pointing_game(m, object_masks).float().mean()),
            "random_iou": float(metrics.localization_iou(rand, object_masks, k).mean()),
            "random_pointing": float(metrics.pointing_game(rand, object_masks).float().mean()),
            "map_size": int(m.shape[-1]),
        }
    return table
