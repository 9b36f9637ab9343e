"""MASK interpreter (meaningful perturbation): objective, optimiser, batching, look-ahead gradients."""

from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur as tv_gaussian_blur

from idls.errors import UserError
from idls.interpreters import create_interpreter
from idls.interpreters.mask import (
    MaskConfig,
    MaskInterpreter,
    MaskOptimizer,
    flush_denormal,
    gaussian_blur,
    mask_objective,
    mask_penalty,
    optimize_masks,
    unrolled_mask_steps,
)
from idls.system import upsample_maps


def load_lossless(directory, count: int) -> torch.Tensor:
    """The first ``count`` lossless CIFAR images as ``count x 3 x 32 x 32`` in [0, 1]."""
    with open(directory / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))[:count]
    arrays = [np.asarray(Image.open(directory / row["file"]).convert("RGB")) for row in rows]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def class_probability(classifier, x, target) -> torch.Tensor:
    with torch.no_grad():
        return classifier(x).softmax(1).gather(1, target[:, None])[:, 0]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The optimisation loops are ~10x slower with 2 threads on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cifar_batch(cifar_lossless_dir):
    return load_lossless(cifar_lossless_dir, 12)


@pytest.fixture(scope="module")
def double_resnet20(random_resnet20):
    return copy.deepcopy(random_resnet20).double()


# -- settings ---------------------------------------------------------------------------
def test_registered_with_scaled_defaults(random_resnet20):
    interpreter = create_interpreter("mask", random_resnet20, iterations=3)
    assert isinstance(interpreter, MaskInterpreter)
    imagenet, cifar = MaskConfig.for_input(224), MaskConfig.for_input(32)
    assert imagenet.mask_size == (28, 28) and cifar.mask_size == (8, 8)
    assert MaskConfig.for_input(96).mask_size == (12, 12)
    assert imagenet.l1_weight == pytest.approx(1e-4) and imagenet.tv_weight == pytest.approx(1e-2)
    # deleting the whole image costs the same at every mask size
    assert cifar.l1_weight * 64 == pytest.approx(imagenet.l1_weight * 784)
    assert imagenet.blur_sigma == pytest.approx(10.0) and imagenet.jitter == 4 and cifar.jitter == 1


@pytest.mark.parametrize(
    "options",
    [
        dict(mask_size=0),
        dict(mask_size=33),
        dict(iterations=-1),
        dict(lr=0.0),
        dict(lookahead_steps=0),
        dict(jitter=40),
        dict(init_value=2.0),
        dict(blur_sigma=0.0),
    ],
)
def test_bad_options_raise_user_error(random_resnet20, options):
    with pytest.raises(UserError):
        MaskInterpreter(random_resnet20, **options)


def test_wrong_target_count_and_mask_shape_raise_user_error(random_resnet20):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(UserError):
        optimize_masks(random_resnet20, x, torch.tensor([0, 1, 2]), iterations=1)
    with pytest.raises(UserError):
        mask_objective(random_resnet20, x, torch.zeros(2, 4, 4), 0)


# -- building blocks against independent oracles -------------------------------------------
def test_gaussian_blur_matches_torchvision():
    images = torch.rand(2, 3, 32, 32)
    sigma = 1.5
    expected = tv_gaussian_blur(images, kernel_size=[11, 11], sigma=[sigma, sigma])  # radius ceil(3 sigma) = 5
    torch.testing.assert_close(gaussian_blur(images, sigma), expected, atol=1e-5, rtol=0)


def test_penalty_matches_explicit_sum():
    config = MaskConfig.for_input(32)
    m = torch.rand(2, 8, 8, dtype=torch.float64)
    expected = []
    for sample in m.numpy():
        tv = sum(
            ((sample[i + 1, j] - sample[i, j]) ** 2 + (sample[i, j + 1] - sample[i, j]) ** 2 + 1e-8) ** 1.5
            for i in range(7)
            for j in range(7)
        )
        expected.append(config.l1 * 784 / 64 * sample.sum() + config.tv * math.sqrt(784 / 64) * tv)
    torch.testing.assert_close(mask_penalty(m, config), torch.tensor(expected, dtype=torch.float64))


def test_objective_at_the_extremes(random_resnet20):
    """m = 0 keeps the image (objective = p_c(x)); m = 1 deletes all of it (p_c(blur x) + full area cost)."""
    config = MaskConfig.for_input(32)
    x = torch.rand(3, 3, 32, 32)
    target = torch.tensor([0, 4, 9])
    keep = mask_objective(random_resnet20, x, torch.zeros(3, 8, 8), target, config)
    delete = mask_objective(random_resnet20, x, torch.ones(3, 8, 8), target, config)
    torch.testing.assert_close(keep, class_probability(random_resnet20, x, target), atol=1e-6, rtol=0)
    blurred = tv_gaussian_blur(x, kernel_size=[11, 11], sigma=[config.blur_sigma] * 2)
    expected = class_probability(random_resnet20, blurred, target) + config.l1_weight * 64
    torch.testing.assert_close(delete, expected, atol=1e-5, rtol=0)


def test_optimizer_update_is_projected_adam(double_resnet20):
    """Without jitter, MaskOptimizer follows torch.optim.Adam + clamp exactly (float64)."""
    config = MaskConfig.for_input(32, jitter=0)
    x, target = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.tensor([1, 7])
    start = torch.rand(2, 8, 8, dtype=torch.float64)
    ours = MaskOptimizer(double_resnet20, start, config, lr=0.1)
    ours.step(x, target, iterations=3)

    m = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([m], lr=0.1)
    for _ in range(3):
        adam.zero_grad()
        mask_objective(double_resnet20, x, m, target, config).sum().backward()
        adam.step()
        with torch.no_grad():
            m.clamp_(0, 1)
    torch.testing.assert_close(ours.m, m.detach(), atol=1e-10, rtol=0)


def test_flush_denormal_restores_previous_mode():
    def flushed() -> bool:
        return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0

    torch.set_flush_denormal(False)
    with flush_denormal():
        inside = flushed()
    assert flushed() is False
    if torch.set_flush_denormal(True):  # platforms without FTZ support return False
        torch.set_flush_denormal(False)
        assert inside is True


# -- the optimisation on a real classifier ---------------------------------------------------
def test_objective_decreases_for_every_sample(resnet20, cifar_batch):
    x = cifar_batch[:8]
    target = resnet20.predict(x)
    config = MaskConfig.for_input(32)
    optimizer = MaskOptimizer.start(resnet20, x, config)
    before = mask_objective(resnet20, x, optimizer.m, target, config).detach()
    history = optimizer.step(x, target, iterations=60)
    after = mask_objective(resnet20, x, optimizer.m, target, config).detach()
    assert history.shape == (60, 8)
    # from m = 1 the objective can fall by at most the area cost (0.078) where blur already kills p_c
    assert torch.all(after < before - 0.02), (before, after)
    assert (history[-5:].mean(0) < history[:5].mean(0)).all()


def test_maps_shape_and_range(random_resnet20):
    x = torch.rand(3, 3, 32, 32)
    maps = MaskInterpreter(random_resnet20, iterations=5).attribute(x)
    assert maps.shape == (3, 8, 8) and not maps.requires_grad
    assert maps.min() >= 0 and maps.max() <= 1


def test_top_region_matters_more_than_random_region(resnet20, cifar_batch):
    """Deletion curve: blurring the map's top pixels hurts p_c more than a random square or the bottom pixels.

    With the l1 of docs/design.md §3 (full deletion costs only 0.078) the CIFAR masks cover ~70% of the
    image and their top 20% alone rarely kills the class, so the test averages the
    probability drop over deleted fractions 20-50% (a deletion-curve area).
    """
    x = cifar_batch
    target = resnet20.predict(x)
    maps = MaskInterpreter(resnet20, iterations=100).attribute(x, target)
    blurred = tv_gaussian_blur(x, kernel_size=[9, 9], sigma=[2.0, 2.0])  # not MASK's own blur
    clean = class_probability(resnet20, x, target)

    def drop(region: torch.Tensor) -> torch.Tensor:
        return clean - class_probability(resnet20, x + region * (blurred - x), target)

    pixels = upsample_maps(maps, 32).flatten(1)
    generator = torch.Generator().manual_seed(0)
    top, bottom, random = [], [], []
    for fraction in (0.2, 0.3, 0.4, 0.5):
        count = int(fraction * pixels.shape[1])
        for order, drops in ((pixels, top), (-pixels, bottom)):
            region = torch.zeros_like(pixels).scatter(1, order.topk(count, dim=1).indices, 1.0)
            drops.append(drop(region.view(-1, 1, 32, 32)))
        side = round(math.sqrt(count))
        for _ in range(8):
            row, col = torch.randint(0, 32 - side + 1, (2,), generator=generator).tolist()
            square = torch.zeros(1, 1, 32, 32)
            square[..., row : row + side, col : col + side] = 1
            random.append(drop(square) / 8)
    top_area, random_area, bottom_area = (torch.stack(d).sum(0).mean() / 4 for d in (top, random, bottom))
    assert top_area > random_area + 0.06, (top_area, random_area)
    assert top_area > bottom_area + 0.2, (top_area, bottom_area)


def test_batch_equals_single_images(resnet20, cifar_batch):
    x = cifar_batch[:3]
    target = resnet20.predict(x)
    interpreter = MaskInterpreter(resnet20, iterations=15, seed=3)
    batched = interpreter.attribute(x, target)
    singles = torch.cat([interpreter.attribute(x[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-3, rtol=0)  # float32 batched-conv rounding only


def test_select_keeps_the_per_sample_state(random_resnet20):
    x, target = torch.rand(3, 3, 32, 32), torch.tensor([2, 5, 8])
    full = MaskOptimizer.start(random_resnet20, x)
    full.step(x, target, iterations=3)
    index = torch.tensor([2, 0])
    part = full.select(index)
    full.step(x, target, iterations=3)
    part.step(x[index], target[index], iterations=3)
    torch.testing.assert_close(part.m, full.m[index], atol=1e-6, rtol=0)
    full.reset(torch.tensor([1]))
    assert torch.all(full.m[1] == 1) and full.steps[1].item() == 0 and full.steps[0].item() == 6


# -- differentiable look-ahead -------------------------------------------------------------
def test_attribute_with_graph_has_nonzero_input_gradient(resnet20, cifar_batch):
    x = cifar_batch[:4].clone().requires_grad_(True)
    maps = MaskInterpreter(resnet20, iterations=30).attribute(x, create_graph=True)
    assert maps.shape == (4, 8, 8) and maps.requires_grad
    weights = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((maps * weights).sum(), x)
    assert torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all()


def test_unrolled_steps_gradient_matches_finite_differences(double_resnet20):
    """d(look-ahead map)/dx along a random direction equals central differences (float64).

    Plain gradient steps (``normalize=False``): with normalisation the step scale is a
    constant by design, so finite differences would not see the same function.
    """
    generator = torch.Generator().manual_seed(0)
    x = (0.25 + 0.5 * torch.rand(2, 3, 32, 32, generator=generator, dtype=torch.float64)).requires_grad_(True)
    m = 0.3 + 0.4 * torch.rand(2, 8, 8, generator=generator, dtype=torch.float64)
    target = torch.tensor([3, 6])
    weights = torch.rand(2, 8, 8, generator=generator, dtype=torch.float64)
    direction = torch.randn(x.shape, generator=generator, dtype=torch.float64)

    def score(images: torch.Tensor) -> torch.Tensor:
        return (unrolled_mask_steps(double_resnet20, images, m, target, steps=2, lr=1.0, normalize=False) * weights).sum()

    (grad,) = torch.autograd.grad(score(x), x)
    analytic = (grad * direction).sum()
    step = 1e-6  # the input gradient of a ReLU net jumps at activation changes; stay inside one linear piece
    with torch.no_grad():
        numeric = (score(x + step * direction) - score(x - step * direction)) / (2 * step)
    assert analytic.abs() > 1e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-8)


def test_optimize_returns_the_interpreters_map_with_its_state(random_resnet20):
    """ADV² continues the interpreter's own run: same maps as ``attribute``, Adam state after every step."""
    interpreter = create_interpreter("mask", random_resnet20, iterations=6)
    x, target = torch.rand(3, 3, 32, 32), torch.tensor([1, 3, 7])
    run = interpreter.optimize(x, target)
    torch.testing.assert_close(run.m, interpreter.attribute(x, target), atol=0, rtol=0)
    assert bool((run.steps == 6).all()) and bool((run.exp_avg_sq > 0).any())
