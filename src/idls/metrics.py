"""The evaluation metrics of docs/design.md §5 — one definition each, used everywhere.

Per-sample functions return a tensor with one entry per image (``B``) so that
result records can store them; the aggregate helpers turn those into the
numbers a table reports. Conventions:

* images are ``B x C x H x W`` in [0, 1];
* attribution maps are ``B x h x w`` in [0, 1] at the interpreter's native
  resolution (never upsampled before comparing two maps);
* object masks are ``B x H x W`` (bool, or numbers where > 0.5 means object);
* float16 / bfloat16 inputs are compared in float32 (their values exactly, the arithmetic not rounded
  to half precision); a sample whose maps or images hold NaN or Inf gets NaN in every map and
  perturbation metric (never a number computed from them), the others are unaffected; a sample
  whose logits hold NaN or Inf never counts as a success. No check here synchronises a device:
  the metrics also run inside attack loops. (Attacks and interpreters refuse NaN logits themselves.)

Groups: prediction (:func:`success`, :func:`attack_success_rate`,
:func:`target_confidence`, :func:`misclassification_confidence`,
:func:`prediction_changed`, :func:`fooling_ratio`); map distances
(:func:`map_l1`, :func:`map_l2`, :func:`topk_mask`, :func:`topk_iou`,
:func:`kendall_tau`); noise (:func:`linf_norm`, :func:`l2_norm`,
:func:`noise_rate`); interpreter validity against ground truth
(:func:`localization_iou`, :func:`pointing_game`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from idls.errors import UserError

DEFAULT_TOPK = 0.2

# ---------------------------------------------------------------------------------
# Prediction metrics
# ---------------------------------------------------------------------------------


def _real(t: Tensor) -> Tensor:
    """``t`` in at least float32 (float16 / bfloat16 values exactly; other dtypes unchanged)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _finite_samples(*tensors: Tensor) -> Tensor:
    """``B`` bool: the samples whose entries are finite in every one of ``tensors`` (each ``B x ...``)."""
    finite = torch.isfinite(tensors[0].detach().flatten(1)).all(1)
    for t in tensors[1:]:
        finite = finite & torch.isfinite(t.detach().flatten(1)).all(1).to(finite.device)
    return finite


def _nan_unless(finite: Tensor, value: Tensor) -> Tensor:
    """``value`` (``B`` or ``B x K``) with NaN in the samples that are not ``finite``."""
    mask = finite.to(value.device).view(-1, *([1] * (value.dim() - 1)))
    return torch.where(mask, value, torch.full_like(value, math.nan))


def _as_prediction(prediction: Tensor) -> Tensor:
    """Accept logits ``B x N`` or classes ``B``; return classes ``B`` (long)."""
    return prediction.argmax(1) if prediction.dim() == 2 else prediction.long()


def success(prediction: Tensor, *, target: Tensor | None = None, label: Tensor | None = None) -> Tensor:
    """Per-sample attack success ``B`` (bool).

    Targeted (``target`` given): ``argmax == target``. Untargeted (``label``
    given): ``argmax != label``. Give exactly one of the two.

    Args:
        prediction: logits ``B x N`` or predicted classes ``B``.
        target: target classes ``B``.
        label: true classes ``B``.
    """
    if (target is None) == (label is None):
        raise UserError("success() needs exactly one of target= (targeted) or label= (untargeted)")
    pred = _as_prediction(prediction)
    ok = pred == target.to(pred.device) if target is not None else pred != label.to(pred.device)
    return ok & _finite_samples(prediction) if prediction.dim() == 2 else ok


def attack_success_rate(successes: Tensor) -> float:
    """Successes / attempts for a ``B`` bool tensor (nan for an empty batch)."""
    return float(successes.float().mean()) if successes.numel() else math.nan


def target_confidence(logits: Tensor, classes: Tensor) -> Tensor:
    """Softmax probability ``B`` of ``classes`` (``B`` long) under ``logits`` ``B x N``."""
    return logits.softmax(1).gather(1, classes.to(logits.device).long()[:, None])[:, 0]


def misclassification_confidence(logits: Tensor, target: Tensor, successes: Tensor) -> float:
    """Mean softmax probability of the target class over the successful samples (nan if none).

    Args:
        logits: ``B x N`` logits of the adversarial images.
        target: ``B`` target classes (for untargeted attacks pass the prediction).
        successes: ``B`` bool.
    """
    if not bool(successes.any()):
        return math.nan
    return float(target_confidence(logits, target)[successes.to(logits.device)].mean())


def prediction_changed(prediction_clean: Tensor, prediction_adv: Tensor) -> Tensor:
    """``B`` bool: the prediction differs (inputs: logits ``B x N`` or classes ``B``)."""
    return _as_prediction(prediction_clean) != _as_prediction(prediction_adv).to(prediction_clean.device)


def fooling_ratio(prediction_clean: Tensor, prediction_adv: Tensor) -> float:
    """Share of images whose prediction changes (universal perturbations)."""
    return attack_success_rate(prediction_changed(prediction_clean, prediction_adv))


# ---------------------------------------------------------------------------------
# Map distances (maps B x h x w in [0, 1], native resolution)
# ---------------------------------------------------------------------------------


def _check_map_pair(maps: Tensor, other: Tensor) -> None:
    if maps.dim() != 3 or maps.shape != other.shape:
        raise UserError(
            f"maps must both be B x h x w with equal shapes, got {tuple(maps.shape)} and {tuple(other.shape)}; "
            "compare maps at the same native resolution"
        )


def map_l1(maps: Tensor, other: Tensor) -> Tensor:
    """Mean absolute difference ``B``: sum |m - m'| / pixels."""
    _check_map_pair(maps, other)
    value = (_real(maps) - _real(other)).abs().flatten(1).mean(1)
    return _nan_unless(_finite_samples(maps, other), value)


def map_l2(maps: Tensor, other: Tensor) -> Tensor:
    """Root-mean-square difference ``B``: ||m - m'||_2 / sqrt(pixels)."""
    _check_map_pair(maps, other)
    value = (_real(maps) - _real(other)).flatten(1).pow(2).mean(1).sqrt()
    return _nan_unless(_finite_samples(maps, other), value)


def _topk_counts(k: float | Tensor, batch: int, pixels: int, device: torch.device) -> Tensor:
    """Number of kept entries per sample, ``B`` long, at least 1 for k > 0."""
    k_t = torch.as_tensor(k, dtype=torch.float64, device=device).expand(batch)
    if bool(((k_t <= 0) | (k_t > 1)).any()):
        raise UserError(f"top-k fraction must lie in (0, 1], got {k}; e.g. k=0.2 keeps the top 20% of the map")
    return (k_t * pixels).round().clamp(min=1, max=pixels).long()


def topk_mask(maps: Tensor, k: float | Tensor = DEFAULT_TOPK) -> Tensor:
    """Binarise maps by keeping the top-``k`` fraction of entries of each sample.

    Exactly ``round(k * pixels)`` entries (at least one) are kept per sample.
    Ties are broken deterministically in favour of the earlier entry in raster
    (row-major) order, via a stable descending sort.

    Args:
        maps: ``B x h x w`` (any real values).
        k: fraction in (0, 1], a float or a ``B`` tensor of per-sample fractions.

    Returns:
        ``B x h x w`` bool.
    """
    flat = maps.flatten(1)
    counts = _topk_counts(k, flat.shape[0], flat.shape[1], flat.device)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    keep_sorted = torch.arange(flat.shape[1], device=flat.device)[None, :] < counts[:, None]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, keep_sorted)
    return mask.view_as(maps)


def jaccard(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union ``B`` of two bool masks ``B x ...`` (1 when both are empty)."""
    a, b = a.flatten(1), b.flatten(1)
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).float()


def topk_iou(maps: Tensor, other: Tensor, k: float | Sequence[float] = DEFAULT_TOPK) -> Tensor:
    """IoU of the top-``k`` regions of two maps (docs/design.md §5).

    Args:
        maps: ``B x h x w``.
        other: ``B x h x w``, compared with ``maps``.
        k: one fraction, or a sequence of fractions (report several k).

    Returns:
        ``B`` for a single ``k``; ``B x len(k)`` (columns in the order given) for a sequence.
    """
    _check_map_pair(maps, other)
    maps, other, finite = _real(maps), _real(other), _finite_samples(maps, other)
    if isinstance(k, Sequence):
        return _nan_unless(finite, torch.stack([jaccard(topk_mask(maps, kk), topk_mask(other, kk)) for kk in k], dim=1))
    return _nan_unless(finite, jaccard(topk_mask(maps, k), topk_mask(other, k)))


def kendall_tau(maps: Tensor, other: Tensor) -> Tensor:
    """Kendall's tau-b ``B`` between the flattened maps of each sample (scipy).

    A sample where either map is constant has no defined rank correlation and
    gets nan. (Rank statistics are not batched in torch; this loops in scipy and
    is meant for evaluation, not for attack hot paths.)
    """
    _check_map_pair(maps, other)
    a = maps.detach().flatten(1).double().cpu().numpy()
    b = other.detach().flatten(1).double().cpu().numpy()
    taus = np.array([kendalltau(ai, bi).statistic for ai, bi in zip(a, b, strict=True)], dtype=np.float64)
    return _nan_unless(_finite_samples(maps, other), torch.as_tensor(taus, dtype=torch.float32, device=maps.device))


# ---------------------------------------------------------------------------------
# Perturbation size
# ---------------------------------------------------------------------------------


def _check_image_pair(x: Tensor, x_adv: Tensor) -> None:
    if x.dim() != 4 or x.shape != x_adv.shape:
        raise UserError(
            f"images must both be B x C x H x W with equal shapes, got {tuple(x.shape)} and {tuple(x_adv.shape)}"
        )


def linf_norm(x: Tensor, x_adv: Tensor) -> Tensor:
    """``B``: ||x* - x||_inf, the max |x* - x| over all pixels and channels (symmetric in its arguments)."""
    _check_image_pair(x, x_adv)
    return _nan_unless(_finite_samples(x, x_adv), (_real(x_adv) - _real(x)).flatten(1).abs().amax(1))


def l2_norm(x: Tensor, x_adv: Tensor) -> Tensor:
    """``B``: ||x* - x||_2 over all pixels and channels, on the [0, 1] scale (symmetric in its arguments)."""
    _check_image_pair(x, x_adv)
    return _nan_unless(_finite_samples(x, x_adv), (_real(x_adv) - _real(x)).flatten(1).norm(dim=1))


def ssim_sigma(height: int, width: int) -> float:
    """Gaussian sigma of the SSIM window for an image size.

    torchmetrics derives the window from sigma: side = 2 * int(3.5 sigma + 0.5) + 1
    and it scores only pixels at least half a window from the border.
    Images of side >= 64 use the standard sigma = 1.5 (11 x 11 window, Wang et
    al. 2004). Smaller images (CIFAR, 32 px) use sigma = 1.0 (9 x 9 window), so
    the central 24 x 24 of a 32 x 32 image is scored instead of 22 x 22 and the
    window covers a comparable share of the object.
    """
    return 1.5 if min(height, width) >= 64 else 1.0


def ssim(x: Tensor, x_adv: Tensor, sigma: float | None = None) -> Tensor:
    """Per-sample SSIM ``B`` (torchmetrics, gaussian window, data_range = 1)."""
    _check_image_pair(x, x_adv)
    sigma = ssim_sigma(*x.shape[-2:]) if sigma is None else sigma
    value = structural_similarity_index_measure(
        x_adv.detach().float(), x.detach().float(), gaussian_kernel=True, sigma=sigma, reduction="none", data_range=1.0
    )
    return _nan_unless(_finite_samples(x, x_adv), value.to(x.device))


def noise_rate(x: Tensor, x_adv: Tensor, sigma: float | None = None) -> Tensor:
    """``B``: 1 - SSIM(x, x*) (0 for identical images); window as in :func:`ssim_sigma`."""
    return 1.0 - ssim(x, x_adv, sigma)


# ---------------------------------------------------------------------------------
# Interpreter validity against ground-truth object masks
# ---------------------------------------------------------------------------------


def _prepare_localization(maps: Tensor, object_masks: Tensor) -> tuple[Tensor, Tensor]:
    """Upsample maps to the mask size (bilinear) and binarise the masks; check shapes."""
    if object_masks.dim() == 4 and object_masks.shape[1] == 1:
        object_masks = object_masks[:, 0]
    if maps.dim() != 3 or object_masks.dim() != 3 or maps.shape[0] != object_masks.shape[0]:
        raise UserError(
            f"maps must be B x h x w and object masks B x H x W with the same B, got {tuple(maps.shape)} "
            f"and {tuple(object_masks.shape)}"
        )
    masks = object_masks.to(maps.device)
    masks = masks if masks.dtype == torch.bool else masks > 0.5
    empty = ~masks.flatten(1).any(1)
    if bool(empty.any()):
        raise UserError(
            f"object masks of samples {empty.nonzero().flatten().tolist()} are empty; drop images without an object"
        )
    size = tuple(masks.shape[-2:])
    if tuple(maps.shape[-2:]) != size:
        maps = torch.nn.functional.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps, masks


def localization_iou(maps: Tensor, object_masks: Tensor, k: float | None = None) -> Tensor:
    """Jaccard ``B`` between the top-``k`` region of each (upsampled) map and its object mask.

    Args:
        maps: ``B x h x w`` attribution maps.
        object_masks: ``B x H x W`` ground-truth object masks (bool or > 0.5).
        k: fraction of the upsampled map kept as its region. ``None`` (default)
            keeps, per sample, as many pixels as the object covers, so a map that
            ranks every object pixel above every background pixel scores 1.
    """
    finite = _finite_samples(maps)
    maps, masks = _prepare_localization(_real(maps), object_masks)
    fraction = masks.flatten(1).double().mean(1) if k is None else k
    return _nan_unless(finite, jaccard(topk_mask(maps, fraction), masks))


def default_pointing_tolerance(height: int, width: int) -> int:
    """Pointing-game tolerance in pixels: 15 px at 224 px (Zhang et al. 2016), scaled; >= 1.

    32 px images get 2 px.
    """
    return max(1, round(15 * min(height, width) / 224))


def pointing_game(maps: Tensor, object_masks: Tensor, tolerance: int | None = None) -> Tensor:
    """Pointing-game hits ``B`` (bool): the maximum of the upsampled map lies on the object.

    The map is upsampled bilinearly to the mask size; its maximum (first in
    raster order on ties) is a hit when an object pixel lies within Euclidean
    distance ``tolerance`` pixels of it (default :func:`default_pointing_tolerance`).
    The hit rate is ``pointing_game(...).float().mean()``. A map holding NaN or Inf never hits.
    """
    finite = _finite_samples(maps)
    maps, masks = _prepare_localization(_real(maps), object_masks)
    height, width = masks.shape[-2:]
    tol = default_pointing_tolerance(height, width) if tolerance is None else tolerance
    peak = maps.flatten(1).argmax(1)
    peak_row, peak_col = (peak // width).float(), (peak % width).float()
    rows = torch.arange(height, device=maps.device, dtype=torch.float32)[None, :, None]
    cols = torch.arange(width, device=maps.device, dtype=torch.float32)[None, None, :]
    dist2 = (rows - peak_row[:, None, None]) ** 2 + (cols - peak_col[:, None, None]) ** 2
    return (masks & (dist2 <= tol * tol)).flatten(1).any(1) & finite.to(masks.device)


__all__ = [
    "DEFAULT_TOPK",
    "attack_success_rate",
    "default_pointing_tolerance",
    "fooling_ratio",
    "jaccard",
    "kendall_tau",
    "l2_norm",
    "linf_norm",
    "localization_iou",
    "map_l1",
    "map_l2",
    "misclassification_confidence",
    "noise_rate",
    "pointing_game",
    "prediction_changed",
    "ssim",
    "ssim_sigma",
    "success",
    "target_confidence",
    "topk_iou",
    "topk_mask",
]
