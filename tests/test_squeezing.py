"""Feature squeezing: the squeezers against scipy / OpenCV / numpy, the median's gradient, the detector."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import scipy.ndimage
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idls.attacks import create_attack
from idls.data.synthetic import TEST_SEED, TRAIN_SEED
from idls.defenses import (
    BitDepth,
    MedianFilter,
    NonLocalMeans,
    defense_from_spec,
    list_defenses,
)
from idls.defenses.detectors import FeatureSqueezing, create_detector, list_detectors, load_detector, roc_auc
from idls.defenses.detectors.squeezing import LARGE_INPUT_SQUEEZERS, SMALL_INPUT_SQUEEZERS
from idls.errors import UserError
from tests.universal_helpers import colour_task, synthetic, tiny_classifier


def _rand(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _photo_like_uint8(n: int, seed: int, size: int = 32) -> np.ndarray:
    """``n x size x size x 3`` uint8: smooth colour fields plus noise, so NLM has something to smooth."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n, 4, 4, 3))
    smooth = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in coarse])
    return np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).round().astype(np.uint8)


# -- the squeezers -------------------------------------------------------------------------------------
def test_squeezers_are_registered_with_their_labels():
    assert {"bit-depth", "median", "non-local-means"} <= set(list_defenses())
    assert defense_from_spec("median:size=2").describe() == "median(2x2)"
    assert defense_from_spec("non-local-means:search=13,patch=3,strength=2").describe() == "non-local-means(13-3-2)"
    assert defense_from_spec("non-local-means:search=11,patch=3,strength=4").describe() == "non-local-means(11-3-4)"
    assert MedianFilter.differentiable and not NonLocalMeans.differentiable and not BitDepth.differentiable


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 2, 3, 4), (1, 1, 1, 6)])
def test_median_equals_scipy(k, shape):
    x = _rand(shape, seed=k)
    expected = scipy.ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
    np.testing.assert_array_equal(MedianFilter(k)(x).numpy(), expected)
    # many ties (quantised values) and float64
    quantised = (torch.round(_rand(shape, seed=10 + k, dtype=torch.float64) * 3) / 3)
    expected = scipy.ndimage.median_filter(quantised.numpy(), size=(1, 1, k, k), mode="reflect")
    np.testing.assert_array_equal(MedianFilter(k)(quantised).numpy(), expected)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 7), height=st.integers(1, 7), width=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_median_equals_scipy_for_any_window_and_image_size(k, height, width, seed):
    """Also windows wider than the image, where the half-sample reflection repeats."""
    x = _rand((1, 2, height, width), seed=seed)
    expected = scipy.ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
    np.testing.assert_array_equal(MedianFilter(k)(x).numpy(), expected)


def test_even_median_is_not_torch_lower_median():
    """On a 2 x 2 window the value is the upper of the two middle elements (scipy's rank), not torch.median's."""
    x = _rand((1, 1, 6, 6), seed=3)
    windows = x[0, 0].unfold(0, 2, 1).unfold(1, 2, 1).reshape(5, 5, 4)  # windows ending at (i, j), i, j >= 1
    upper = windows.sort(dim=-1).values[..., 2]
    torch.testing.assert_close(MedianFilter(2)(x)[0, 0, 1:, 1:], upper, rtol=0, atol=0)
    assert not torch.equal(upper, windows.median(dim=-1).values)


@pytest.mark.parametrize("k", [2, 3])
def test_median_gradient_flows_to_the_selected_elements_only(k):
    x = _rand((1, 1, 4, 5), seed=20 + k, dtype=torch.float64).requires_grad_(True)  # distinct values
    median = MedianFilter(k)
    assert torch.autograd.gradcheck(median, (x,))  # finite differences
    jacobian = torch.autograd.functional.jacobian(median, x).reshape(x.numel(), x.numel())
    outputs = median(x).detach().flatten()
    values = x.detach().flatten()
    for row, value in zip(jacobian, outputs, strict=True):
        selected = values == value  # the one input pixel whose value the output took
        assert int(selected.sum()) == 1
        assert float(row[selected]) == 1.0 and float(row[~selected].abs().sum()) == 0.0


@pytest.mark.parametrize("search, patch, strength", [(13, 3, 2), (11, 3, 4), (5, 3, 10.5)])
def test_non_local_means_equals_opencv(search, patch, strength):
    images = _photo_like_uint8(3, seed=search)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    out = NonLocalMeans(search, patch, strength)(x)
    expected = np.stack([cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(im[:, :, ::-1]), None, strength,
                                                         strength, patch, search)[:, :, ::-1] for im in images])
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(torch.round(out * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(), expected)
    assert not torch.equal(out, x)  # it did smooth


def test_non_local_means_grey_and_bpda():
    grey = _photo_like_uint8(2, seed=1)[..., :1]
    x = torch.from_numpy(grey).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    out = NonLocalMeans(7, 3, 8)(x)
    expected = np.stack([cv2.fastNlMeansDenoising(im[:, :, 0], None, 8, 3, 7) for im in grey])
    np.testing.assert_array_equal(torch.round(out * 255).to(torch.uint8)[:, 0].detach().numpy(), expected)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x), rtol=0, atol=0)  # BPDA: the identity gradient


def test_bit_depth_5_equals_numpy():
    x = _rand((2, 3, 8, 8), seed=4)
    np.testing.assert_array_equal(BitDepth(5)(x).numpy(), np.round(x.numpy() * 31) / 31)


@pytest.mark.parametrize("spec, message", [
    ("median:size=1", "size as an integer window side >= 2"),
    ("median:size=2.5", "size as an integer window side >= 2"),
    ("median:size=true", "size as an integer window side >= 2"),
    ("median:width=2", "bad option for defence 'median'"),
    ("non-local-means:search=12,patch=3,strength=2", "search as an odd integer"),
    ("non-local-means:search=13,patch=0,strength=2", "patch as an odd integer"),
    ("non-local-means:search=3,patch=5,strength=2", "patch <= search"),
    ("non-local-means:search=13,patch=3,strength=0", "strength as a number > 0"),
    ("non-local-means:search=13,patch=3,strength=abc", "strength as a number > 0"),
    ("non-local-means:search=13,patch=3", "bad option for defence 'non-local-means'"),
])
def test_bad_squeezer_options_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as error:
        defense_from_spec(spec)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match=message) as error:
        create_detector("feature-squeezing", squeezers=[spec])
    assert "\n" not in str(error.value) and spec in str(error.value)


@pytest.mark.parametrize("squeezers, message", [
    ([], "non-empty list"), ([3], "non-empty list"), (["blur:size=2"], "unknown defence 'blur'")])
def test_bad_squeezer_lists_are_one_line_user_errors(squeezers, message):
    with pytest.raises(UserError, match=message) as error:
        create_detector("feature-squeezing", squeezers=squeezers)
    assert "\n" not in str(error.value)


# -- the detector ------------------------------------------------------------------------------------------
SPECS = ["bit-depth:bits=3", "median:size=2", "non-local-means:search=7,patch=3,strength=6"]


@pytest.fixture(scope="module")
def benign():
    return synthetic(120, TRAIN_SEED + 7, "fit").images


def test_score_is_the_largest_softmax_l1_change_with_one_shared_forward(tiny, benign):
    detector = create_detector("feature-squeezing", squeezers=SPECS).fit(tiny, benign[:20])
    x = benign[20:30]
    seen: list[int] = []
    handle = tiny.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        per_squeezer = detector.squeezer_scores(x)
    finally:
        handle.remove()
    assert sum(seen) == (1 + len(SPECS)) * x.shape[0]  # 1 + S classifier forwards per image
    with torch.no_grad():
        plain = torch.softmax(tiny(x), dim=1)
        expected = torch.stack([(plain - torch.softmax(tiny(defense_from_spec(s).transform(x)), dim=1)).abs().sum(1)
                                for s in SPECS], dim=1)
    torch.testing.assert_close(per_squeezer, expected)
    torch.testing.assert_close(detector.score(x), expected.max(dim=1).values)
    assert per_squeezer.shape == (10, 3) and bool((per_squeezer >= 0).all()) and bool((per_squeezer <= 2).all())


@pytest.mark.parametrize("fpr", [0.05, 0.1, 0.25])
def test_threshold_flags_the_requested_share_of_calibration_images(tiny, benign, fpr):
    detector = create_detector("feature-squeezing", squeezers=SPECS[:2], fpr=fpr).fit(tiny, benign)
    scores = detector.score(benign)
    assert len(torch.unique(scores)) == len(scores)  # distinct, so the rate is met exactly
    assert int(detector.flag(benign).sum()) == math.floor(fpr * len(benign) + 1e-9)
    assert detector.fit_info["n_calibration"] == len(benign)


def test_default_squeezers_follow_the_input_size(tiny):
    small = create_detector("feature-squeezing")
    assert small.describe() == "feature-squeezing(xu-joint)"
    small.fit(tiny, synthetic(8, 1, "s").images)
    assert small.specs == SMALL_INPUT_SQUEEZERS and small.fit_info["squeezers"] == list(SMALL_INPUT_SQUEEZERS)
    assert small.describe() == "feature-squeezing(bit-depth(5), median(2x2), non-local-means(13-3-2))"
    big_model = tiny_classifier(input_size=96)
    big = create_detector("feature-squeezing").fit(big_model, _rand((4, 3, 96, 96), seed=5))
    assert big.specs == LARGE_INPUT_SQUEEZERS
    assert big.describe() == "feature-squeezing(bit-depth(5), median(2x2), non-local-means(11-3-4))"


@pytest.mark.parametrize("squeezers", [None, SPECS])
def test_save_load_round_trip_scores_identically(tmp_path, tiny, benign, squeezers):
    detector = create_detector("feature-squeezing", squeezers=squeezers).fit(tiny, benign[:40])
    path = detector.save(tmp_path / "fs.safetensors")
    again = load_detector(path, tiny)
    assert isinstance(again, FeatureSqueezing)
    assert again.specs == detector.specs and again.threshold == detector.threshold
    assert again.describe() == detector.describe()
    x = benign[40:60]
    assert torch.equal(again.squeezer_scores(x), detector.squeezer_scores(x))
    assert torch.equal(again.flag(x), detector.flag(x))


def test_score_is_differentiable_and_descent_lowers_it(tiny, benign):
    detector = create_detector("feature-squeezing", squeezers=["median:size=2", "bit-depth:bits=4"]).fit(
        tiny, benign[:20])
    x = benign[20:28].clone().requires_grad_(True)
    score = detector.score(x, create_graph=True)
    assert score.requires_grad and score.shape == (8,)
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    stepped = x.detach()
    for _ in range(5):  # small signed-gradient descent steps on the score itself
        stepped.requires_grad_(True)
        (grad,) = torch.autograd.grad(detector.score(stepped, create_graph=True).sum(), stepped)
        stepped = (stepped.detach() - 0.5 / 255 * grad.sign()).clamp(0, 1)
    assert float(detector.score(stepped).sum()) < float(detector.score(x.detach()).sum())


def test_registered_and_unsupervised():
    assert "feature-squeezing" in list_detectors()
    assert FeatureSqueezing.differentiable_score and not FeatureSqueezing.needs_adversarial


def test_detects_pgd_on_the_colour_model_better_than_chance(colour_model):
    """Early-stopped PGD leaves images near the decision boundary, where squeezing moves the prediction."""
    fit = colour_task(100, TRAIN_SEED + 5, "fit")
    test = colour_task(200, TEST_SEED + 3, "test")
    detector = create_detector("feature-squeezing").fit(colour_model, fit.images)
    attack = create_attack("pgd", epsilon=8 / 255, steps=10, mode="untargeted", early_stop=True)
    result = attack.run(colour_model, test.images, test.labels)
    adversarial = result.x_adv[result.success]
    assert adversarial.shape[0] >= 30
    summary = detector.evaluate(test.images, adversarial)
    assert summary.auc > 0.75
    assert summary.detection_rate > 2 * max(summary.false_positive_rate, detector.options.fpr)
    per_squeezer_benign, per_squeezer_adv = detector.squeezer_scores(test.images), detector.squeezer_scores(adversarial)
    assert all(roc_auc(per_squeezer_benign[:, j], per_squeezer_adv[:, j]) > 0.7 for j in range(3))
