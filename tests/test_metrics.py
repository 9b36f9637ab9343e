"""Metric identities and comparisons against independent (numpy / brute-force) oracles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from idls import metrics
from idls.errors import UserError


# -- prediction metrics ------------------------------------------------------------------
def test_success_targeted_and_untargeted():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0]])
    target = torch.tensor([0, 2, 2])
    label = torch.tensor([0, 0, 1])
    assert metrics.success(logits, target=target).tolist() == [True, False, True]
    assert metrics.success(logits, label=label).tolist() == [False, True, True]
    assert metrics.success(torch.tensor([0, 1, 2]), target=target).tolist() == [True, False, True]
    with pytest.raises(UserError):
        metrics.success(logits)
    with pytest.raises(UserError):
        metrics.success(logits, target=target, label=label)


def test_rates_and_confidence():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 0, 1])
    ok = metrics.success(logits, target=target)
    assert ok.tolist() == [True, False, False]  # tie -> argmax takes the first class
    assert metrics.attack_success_rate(ok) == pytest.approx(1 / 3)
    expected = math.exp(2) / (math.exp(2) + 1)
    assert metrics.misclassification_confidence(logits, target, ok) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(metrics.misclassification_confidence(logits, target, torch.zeros(3, dtype=torch.bool)))
    assert metrics.target_confidence(logits, torch.tensor([1, 1, 1]))[2].item() == pytest.approx(0.5)
    clean = torch.tensor([0, 1, 1, 2])
    adv = torch.tensor([0, 2, 1, 0])
    assert metrics.fooling_ratio(clean, adv) == pytest.approx(0.5)


# -- map distances ---------------------------------------------------------------------
def test_map_distances_known_values():
    m = torch.rand(4, 8, 8)
    assert torch.all(metrics.map_l1(m, m) == 0) and torch.all(metrics.map_l2(m, m) == 0)
    zeros, ones = torch.zeros(2, 5, 5), torch.ones(2, 5, 5)
    assert torch.allclose(metrics.map_l1(zeros, ones), torch.ones(2))
    assert torch.allclose(metrics.map_l2(zeros, ones), torch.ones(2))
    half = zeros.clone()
    half[:, :, :2] = 0.5  # 10 of 25 entries differ by 0.5
    assert torch.allclose(metrics.map_l1(zeros, half), torch.full((2,), 0.5 * 10 / 25))
    assert torch.allclose(metrics.map_l2(zeros, half), torch.full((2,), math.sqrt(0.25 * 10 / 25)))
    with pytest.raises(UserError):
        metrics.map_l1(torch.rand(2, 8, 8), torch.rand(2, 7, 7))


def test_topk_mask_counts_ties_and_per_sample_k():
    maps = torch.rand(3, 10, 10)
    mask = metrics.topk_mask(maps, 0.2)
    assert mask.dtype == torch.bool and mask.shape == maps.shape
    assert mask.flatten(1).sum(1).tolist() == [20, 20, 20]
    kept_min = torch.where(mask, maps, torch.inf).flatten(1).amin(1)
    dropped_max = torch.where(mask, -torch.inf, maps).flatten(1).amax(1)
    assert torch.all(kept_min > dropped_max)
    flat = torch.zeros(1, 4, 5)  # all tied: the first entries in raster order win, every time
    tied = metrics.topk_mask(flat, 0.3)
    assert tied.flatten().nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    per_sample = metrics.topk_mask(maps, torch.tensor([0.1, 0.5, 1.0]))
    assert per_sample.flatten(1).sum(1).tolist() == [10, 50, 100]
    assert metrics.topk_mask(torch.rand(1, 3, 3), 0.01).sum() == 1  # at least one entry
    with pytest.raises(UserError):
        metrics.topk_mask(maps, 0.0)


def _numpy_topk_iou(a: np.ndarray, b: np.ndarray, k: float) -> float:
    n = a.size
    keep = max(1, int(round(k * n)))
    top_a = set(np.argsort(-a.ravel(), kind="stable")[:keep])
    top_b = set(np.argsort(-b.ravel(), kind="stable")[:keep])
    return len(top_a & top_b) / len(top_a | top_b)


def test_topk_iou_identities_and_numpy_oracle():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(5, 8, 8, generator=g)
    other = torch.rand(5, 8, 8, generator=g)
    assert torch.allclose(metrics.topk_iou(m, m), torch.ones(5))
    left = torch.zeros(1, 4, 4)
    left[:, :, :2] = 1.0
    assert metrics.topk_iou(left, 1 - left, k=0.5).item() == 0.0  # disjoint top halves
    ks = [0.1, 0.2, 0.5]
    got = metrics.topk_iou(m, other, k=ks)
    assert got.shape == (5, 3)
    for i, j in itertools.product(range(5), range(3)):
        assert got[i, j].item() == pytest.approx(_numpy_topk_iou(m[i].numpy(), other[i].numpy(), ks[j]), abs=1e-6)


def _brute_force_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-a by counting pairs (equals tau-b without ties)."""
    a, b = a.ravel(), b.ravel()
    s = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i in range(a.size) for j in range(i + 1, a.size))
    return s / (a.size * (a.size - 1) / 2)


def test_kendall_tau():
    g = torch.Generator().manual_seed(4)
    m = torch.rand(3, 4, 4, generator=g)
    assert torch.allclose(metrics.kendall_tau(m, m), torch.ones(3))
    assert torch.allclose(metrics.kendall_tau(m, 1 - m), -torch.ones(3))
    other = torch.rand(3, 4, 4, generator=g)
    got = metrics.kendall_tau(m, other)
    for i in range(3):
        assert got[i].item() == pytest.approx(_brute_force_tau(m[i].numpy(), other[i].numpy()), abs=1e-6)
    assert torch.isnan(metrics.kendall_tau(torch.zeros(1, 3, 3), torch.rand(1, 3, 3))).all()


# -- noise ----------------------------------------------------------------------------------
def test_perturbation_norms():
    x = torch.rand(2, 3, 4, 4)
    delta = torch.zeros_like(x)
    delta[0, 1, 2, 3] = -0.3
    delta[1] = 0.01
    assert torch.allclose(metrics.linf_norm(x, x + delta), torch.tensor([0.3, 0.01]))
    assert torch.allclose(metrics.l2_norm(x, x + delta), torch.tensor([0.3, 0.01 * math.sqrt(48)]))


def test_noise_rate_zero_for_identical_and_grows_with_noise():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 32, 32, generator=g) * 0.6 + 0.2
    noise = torch.randn(x.shape, generator=g)
    assert torch.allclose(metrics.noise_rate(x, x), torch.zeros(3), atol=1e-5)
    small = metrics.noise_rate(x, (x + 2 / 255 * noise).clamp(0, 1))
    large = metrics.noise_rate(x, (x + 16 / 255 * noise).clamp(0, 1))
    assert torch.all(small > 0) and torch.all(large > small)
    assert metrics.ssim_sigma(32, 32) == 1.0 and metrics.ssim_sigma(224, 224) == 1.5
    # a per-sample value: perturbing one image leaves the others at 0
    mixed = x.clone()
    mixed[1] = (mixed[1] + 8 / 255 * noise[1]).clamp(0, 1)
    rate = metrics.noise_rate(x, mixed)
    assert rate[1] > 0 and abs(rate[0]) < 1e-5 and abs(rate[2]) < 1e-5


# -- localisation -----------------------------------------------------------------------------
def test_localization_iou_of_the_mask_itself_is_one_and_upsampling_aligns():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 8:16] = True
    masks[1, 20:30, 2:30] = True
    assert torch.allclose(metrics.localization_iou(masks.float(), masks), torch.ones(2))
    # an 8x8 map hot in one cell must land on that cell's 4x4 pixel block after upsampling
    cell_map = torch.zeros(1, 8, 8)
    cell_map[0, 2, 3] = 1.0
    block = torch.zeros(1, 32, 32, dtype=torch.bool)
    block[0, 8:12, 12:16] = True
    assert metrics.localization_iou(cell_map, block).item() == pytest.approx(1.0)
    assert metrics.pointing_game(cell_map, block, tolerance=0).item()


def test_localization_iou_random_maps_match_chance():
    g = torch.Generator().manual_seed(6)
    masks = torch.zeros(200, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True  # object covers a = 1/4 of the image
    maps = torch.rand(200, 32, 32, generator=g)  # full-resolution noise: no interpolation smoothing
    a = 0.25
    for k, chance in ((None, a / (2 - a)), (0.1, 0.1 * a / (0.1 + a - 0.1 * a))):
        got = metrics.localization_iou(maps, masks, k=k).mean().item()
        assert got == pytest.approx(chance, abs=0.01)


def test_pointing_game_tolerance():
    masks = torch.zeros(3, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    maps = torch.zeros(3, 32, 32)
    maps[0, 15, 15] = 1  # inside
    maps[1, 15, 22] = 1  # 3 px right of the object's last column (19)
    maps[2, 0, 0] = 1  # far away
    assert metrics.pointing_game(maps, masks, tolerance=0).tolist() == [True, False, False]
    assert metrics.pointing_game(maps, masks, tolerance=3).tolist() == [True, True, False]
    assert metrics.default_pointing_tolerance(32, 32) == 2 and metrics.default_pointing_tolerance(224, 224) == 15
    with pytest.raises(UserError):
        metrics.pointing_game(maps, torch.zeros(3, 32, 32))
    with pytest.raises(UserError):
        metrics.localization_iou(maps, masks[:2])
