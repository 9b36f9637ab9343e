"""Property-based tests (Hypothesis) for the metrics and for every projection onto a threat set.

Metrics: distances are non-negative, symmetric and zero on equal inputs; overlaps and rank
correlations stay in their ranges and reach 1 on identical maps. Projections: the result lies in
the threat set (the epsilon ball and [0, 1]), projecting twice changes nothing, and a point already
inside is left where it is.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idls import metrics
from idls.attacks.generators import scale_to_budget
from idls.attacks.pgd import project, random_start_point
from idls.attacks.threats import LpBall
from idls.attacks.universal import perturbation_norm, project_delta

NORMS = st.sampled_from(["linf", "l2"])
EPSILONS = st.floats(min_value=1e-4, max_value=2.0, allow_nan=False, allow_subnormal=False)  # the suite flushes subnormals to zero
SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
SCALES = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_subnormal=False)  # the suite flushes subnormals to zero
#: map values as float32 holds them exactly; small draws shrink to ties and constant maps, the hard cases
UNIT = st.floats(min_value=0.0, max_value=1.0, width=32, allow_subnormal=False)
TOPK = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)
FRACTIONS = st.floats(min_value=0.0, max_value=1.0, allow_subnormal=False)
FAST = settings(max_examples=50, deadline=None)


def _images(seed: int, batch: int = 3, side: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, side, side, generator=generator)
    noise = torch.randn(batch, 3, side, side, generator=generator)
    return x, noise


@st.composite
def map_pairs(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Two maps ``B x h x w`` of one shape with values in [0, 1]."""
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    values = draw(st.lists(UNIT, min_size=2 * b * h * w, max_size=2 * b * h * w))
    both = torch.tensor(values, dtype=torch.float32).view(2, b, h, w)
    return both[0], both[1]


def _inside(x: torch.Tensor, noise: torch.Tensor, epsilon: float, norm: str, fraction: float) -> torch.Tensor:
    """A point of the threat set around ``x``: ``noise`` scaled to ``fraction`` of the budget, clamped to [0, 1]
    (clamping only shrinks each coordinate of the perturbation, so the point stays in the ball)."""
    flat = noise.flatten(1)
    size = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    delta = noise * (fraction * epsilon / size.clamp_min(1e-12)).view(-1, 1, 1, 1)
    return (x + delta).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------
# Projections onto threat sets
# ---------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, norm=NORMS, epsilon=EPSILONS, scale=SCALES)
def test_projection_lands_in_the_threat_set_and_is_idempotent(seed, norm, epsilon, scale):
    x, noise = _images(seed)
    projected = project(x + scale * noise, x, epsilon, norm)
    assert bool(LpBall(norm, epsilon).contains(x, projected).all())
    assert torch.allclose(project(projected, x, epsilon, norm), projected, atol=1e-6)


@FAST
@given(seed=SEEDS, norm=NORMS, epsilon=EPSILONS, fraction=FRACTIONS)
def test_projection_leaves_a_point_inside_the_threat_set_unchanged(seed, norm, epsilon, fraction):
    x, noise = _images(seed)
    inside = _inside(x, noise, epsilon, norm, fraction)
    assert torch.allclose(project(inside, x, epsilon, norm), inside, atol=1e-6)


@FAST
@given(seed=SEEDS, norm=NORMS, radii=st.lists(EPSILONS, min_size=3, max_size=3), scale=SCALES)
def test_projection_with_one_radius_per_image_keeps_each_image_in_its_own_ball(seed, norm, radii, scale):
    x, noise = _images(seed)
    epsilon = torch.tensor(radii).view(3, 1, 1, 1)
    projected = project(x + scale * noise, x, epsilon, norm)
    for i, radius in enumerate(radii):
        assert bool(LpBall(norm, radius).contains(x[i:i + 1], projected[i:i + 1]).all()), i
    assert torch.allclose(project(projected, x, epsilon, norm), projected, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, norm=NORMS, epsilon=EPSILONS)
def test_random_start_is_inside_the_ball(seed, norm, epsilon):
    x, _ = _images(seed)
    start = random_start_point(x, epsilon, norm, torch.Generator().manual_seed(seed))
    assert bool(LpBall(norm, epsilon).contains(x, start).all())


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, norm=NORMS, epsilon=EPSILONS, scale=SCALES)
def test_universal_projection_keeps_the_budget(seed, norm, epsilon, scale):
    _, noise = _images(seed, batch=1)
    delta = project_delta(scale * noise, epsilon, norm)
    assert perturbation_norm(delta, norm) <= epsilon * (1 + 1e-6)
    assert torch.allclose(project_delta(delta, epsilon, norm), delta, atol=1e-6)
    if perturbation_norm(scale * noise, norm) <= epsilon:  # already inside: unchanged
        assert torch.equal(delta, scale * noise)


@FAST
@given(seed=SEEDS, norm=NORMS, epsilon=EPSILONS, scale=SCALES)
def test_generator_budget_scaling_keeps_the_budget_and_the_direction(seed, norm, epsilon, scale):
    """Eq. 6 of paper 004 (generative UAPs): a shrink toward 0 onto the ball, never a stretch or a turn."""
    _, noise = _images(seed)
    raw = scale * noise
    scaled = scale_to_budget(raw, epsilon, norm)
    for i in range(raw.shape[0]):
        assert perturbation_norm(scaled[i:i + 1], norm) <= epsilon * (1 + 1e-6), i
        if perturbation_norm(raw[i:i + 1], norm) <= epsilon:  # already inside: unchanged
            assert torch.equal(scaled[i], raw[i])
    factor = (scaled.flatten(1) * raw.flatten(1)).sum(1) / raw.flatten(1).pow(2).sum(1).clamp_min(1e-12)
    assert bool((factor >= 0).all() and (factor <= 1 + 1e-6).all())
    assert torch.allclose(scaled, raw * factor.view(-1, 1, 1, 1), atol=1e-6)
    assert torch.allclose(scale_to_budget(scaled, epsilon, norm), scaled, atol=1e-6)


# ---------------------------------------------------------------------------------
# Map distances
# ---------------------------------------------------------------------------------
@FAST
@given(pair=map_pairs())
def test_map_distances_are_symmetric_non_negative_and_zero_on_equal_maps(pair):
    a, b = pair
    for distance in (metrics.map_l1, metrics.map_l2):
        ab = distance(a, b)
        assert ab.shape == (a.shape[0],)
        assert torch.equal(ab, distance(b, a))
        assert bool((ab >= 0).all())
        assert bool((distance(a, a) == 0).all())
    assert bool((metrics.map_l1(a, b) <= metrics.map_l2(a, b) + 1e-6).all())  # mean |d| <= rms d


@FAST
@given(maps=map_pairs(), third=map_pairs())
def test_map_l1_obeys_the_triangle_inequality(maps, third):
    a, b = maps
    c = third[0]
    if c.shape != a.shape:
        c = b.flip(0)
    assert bool((metrics.map_l1(a, c) <= metrics.map_l1(a, b) + metrics.map_l1(b, c) + 1e-6).all())


@FAST
@given(pair=map_pairs(), k=TOPK)
def test_topk_mask_keeps_exactly_the_largest_entries(pair, k):
    maps, _ = pair
    mask = metrics.topk_mask(maps, k)
    pixels = maps[0].numel()
    expected = min(max(round(k * pixels), 1), pixels)
    assert mask.flatten(1).sum(1).tolist() == [expected] * maps.shape[0]
    for m, keep in zip(maps.flatten(1), mask.flatten(1), strict=True):
        if not bool(keep.all()):
            assert float(m[keep].min()) >= float(m[~keep].max())


@FAST
@given(pair=map_pairs(), k=TOPK)
def test_topk_iou_lies_in_unit_interval_is_symmetric_and_one_on_identical_maps(pair, k):
    a, b = pair
    iou = metrics.topk_iou(a, b, k)
    assert bool(((iou >= 0) & (iou <= 1)).all())
    assert torch.equal(iou, metrics.topk_iou(b, a, k))
    assert bool((metrics.topk_iou(a, a.clone(), k) == 1).all())  # ties broken the same way in both


@FAST
@given(pair=map_pairs())
def test_topk_iou_with_several_k_gives_one_column_per_k(pair):
    a, b = pair
    ks = [0.1, 0.5, 1.0]
    table = metrics.topk_iou(a, b, ks)
    assert table.shape == (a.shape[0], len(ks))
    for j, k in enumerate(ks):
        assert torch.equal(table[:, j], metrics.topk_iou(a, b, k))
    assert bool((table[:, -1] == 1).all())  # k = 1 keeps every pixel of both maps


@FAST
@given(pair=map_pairs())
def test_kendall_tau_lies_in_range_and_is_one_on_identical_non_constant_maps(pair):
    a, b = pair
    tau = metrics.kendall_tau(a, b)
    for i in range(a.shape[0]):
        constant = bool((a[i] == a[i].flatten()[0]).all()) or bool((b[i] == b[i].flatten()[0]).all())
        if constant:  # no rank correlation is defined
            assert math.isnan(float(tau[i]))
        else:
            assert -1 - 1e-6 <= float(tau[i]) <= 1 + 1e-6
    pairs = zip(metrics.kendall_tau(a, a.clone()), metrics.kendall_tau(a, -a), strict=True)
    for i, (same, reversed_) in enumerate(pairs):
        if not bool((a[i] == a[i].flatten()[0]).all()):
            assert float(same) == pytest.approx(1.0)
            assert float(reversed_) == pytest.approx(-1.0)  # every untied pair is discordant


# ---------------------------------------------------------------------------------
# Perturbation size and predictions
# ---------------------------------------------------------------------------------
@FAST
@given(seed=SEEDS, scale=FRACTIONS)
def test_perturbation_norms_are_symmetric_non_negative_zero_on_equal_images_and_ordered(seed, scale):
    x, noise = _images(seed)
    x_adv = (x + scale * noise).clamp(0, 1)
    linf, l2 = metrics.linf_norm(x, x_adv), metrics.l2_norm(x, x_adv)
    assert bool((linf >= 0).all() and (l2 >= 0).all())
    assert torch.equal(linf, metrics.linf_norm(x_adv, x)) and torch.allclose(l2, metrics.l2_norm(x_adv, x))
    assert bool((metrics.linf_norm(x, x.clone()) == 0).all() and (metrics.l2_norm(x, x.clone()) == 0).all())
    pixels = x[0].numel()
    assert bool((linf <= l2 + 1e-6).all() and (l2 <= math.sqrt(pixels) * linf + 1e-6).all())


@settings(max_examples=20, deadline=None)
@given(seed=SEEDS, scale=FRACTIONS)
def test_noise_rate_is_zero_on_equal_images_and_symmetric(seed, scale):
    x, noise = _images(seed, batch=2, side=16)  # at least one SSIM window
    x_adv = (x + scale * noise).clamp(0, 1)
    assert torch.allclose(metrics.noise_rate(x, x.clone()), torch.zeros(2), atol=1e-5)
    assert torch.allclose(metrics.noise_rate(x, x_adv), metrics.noise_rate(x_adv, x), atol=1e-5)


@FAST
@given(clean=st.lists(st.integers(0, 9), min_size=1, max_size=20), data=st.data())
def test_fooling_ratio_is_the_share_of_changed_predictions(clean, data):
    adv = data.draw(st.lists(st.integers(0, 9), min_size=len(clean), max_size=len(clean)))
    ratio = metrics.fooling_ratio(torch.tensor(clean), torch.tensor(adv))
    assert 0.0 <= ratio <= 1.0
    assert ratio == pytest.approx(sum(c != a for c, a in zip(clean, adv, strict=True)) / len(clean))
    assert metrics.fooling_ratio(torch.tensor(clean), torch.tensor(clean)) == 0.0
