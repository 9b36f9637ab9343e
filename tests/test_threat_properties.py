"""Property-based tests (Hypothesis): every projection lands in its threat set, and projecting twice changes nothing."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idls.attacks.pgd import project, random_start_point
from idls.attacks.threats import LpBall
from idls.attacks.universal import perturbation_norm, project_delta

NORMS = st.sampled_from(["linf", "l2"])
EPSILONS = st.floats(min_value=1e-4, max_value=2.0, allow_nan=False, allow_subnormal=False)  # the suite flushes subnormals to zero
SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
SCALES = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_subnormal=False)  # the suite flushes subnormals to zero


def _images(seed: int, batch: int = 3, side: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, side, side, generator=generator)
    noise = torch.randn(batch, 3, side, side, generator=generator)
    return x, noise


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, norm=NORMS, epsilon=EPSILONS, scale=SCALES)
def test_projection_lands_in_the_threat_set_and_is_idempotent(seed, norm, epsilon, scale):
    x, noise = _images(seed)
    projected = project(x + scale * noise, x, epsilon, norm)
    assert bool(LpBall(norm, epsilon).contains(x, projected).all())
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
    if perturbation_norm(scale * noise, norm) <= epsilon:  # already inside: unchanged
        assert torch.equal(delta, scale * noise)
