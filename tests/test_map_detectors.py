"""Interpretation-based detectors: stacked maps, the interpreter ensemble's disagreement and gradient,
the multi-interpreter detector's separation, skops persistence and user errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from idls.attacks import create_attack
from idls.data.synthetic import TEST_SEED, TRAIN_SEED
from idls.defenses.detectors import (
    create_detector,
    extractor_from_spec,
    load_detector,
    map_disagreement,
)
from idls.defenses.detectors.multi_interpreter import TRUSTED_SKOPS_TYPES, load_skops_model
from idls.errors import UserError
from idls.interpreters import create_interpreter
from idls.system import Classifier, ModelInfo
from tests.universal_helpers import colour_task


def _bound(detector, classifier):
    """A detector bound to ``classifier`` without fitting (what map_stack and the ensemble need)."""
    detector.classifier = classifier
    return detector


def _cv2_resize(maps: torch.Tensor, side: int) -> np.ndarray:
    """Independent oracle: OpenCV's bilinear resize (half-pixel centres, as align_corners=False)."""
    return np.stack([cv2.resize(m.numpy().astype(np.float64), (side, side), interpolation=cv2.INTER_LINEAR)
                     for m in maps])


def test_map_stack_channels_are_the_interpreters_own_maps_upsampled(colour_model):
    x = colour_task(4, 11, "s").images
    detector = _bound(create_detector("multi-interpreter", interpreters=["grad", "cam"], product_channel=True,
                                      map_size=32), colour_model)
    stack = detector.map_stack(x)
    assert stack.shape == (4, 3, 32, 32)
    grad = create_interpreter("grad", colour_model).attribute(x)
    cam = create_interpreter("cam", colour_model).attribute(x)
    assert cam.shape[-1] < 32  # CAM really is upsampled here
    np.testing.assert_allclose(stack[:, 0].numpy(), _cv2_resize(grad, 32), atol=1e-5)
    np.testing.assert_allclose(stack[:, 1].numpy(), _cv2_resize(cam, 32), atol=1e-5)
    torch.testing.assert_close(stack[:, 2], stack[:, 0] * stack[:, 1])
    assert float(stack.min()) >= 0.0 and float(stack.max()) <= 1.0


def test_ensemble_disagreement_is_zero_for_one_interpreter_twice_and_grows_with_noise(colour_model):
    x = colour_task(6, 12, "e").images
    twice = _bound(create_detector("interpreter-ensemble", interpreters=["gradcam", "gradcam"]), colour_model)
    assert torch.equal(twice.score(x), torch.zeros(6))
    maps = create_interpreter("grad", colour_model).attribute(x)
    noise = torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))
    for measure in ("l1", "pearson", "spearman"):
        assert float(map_disagreement([maps, maps.clone()], measure).abs().max()) < 1e-5
        values = torch.stack([map_disagreement([maps, (1 - t) * maps + t * noise], measure)
                              for t in (0.1, 0.4, 1.0)])
        assert (values[1:] > values[:-1]).all(), measure


def test_ensemble_l1_matches_a_direct_computation(colour_model):
    x = colour_task(3, 13, "d").images
    detector = _bound(create_detector("interpreter-ensemble", interpreters=["grad", "cam", "gradcam"]), colour_model)
    maps = [create_interpreter(n, colour_model).attribute(x).numpy() for n in ("grad", "cam", "gradcam")]
    side = min(m.shape[-1] for m in maps)

    def prepare(m):  # area-average to the smallest side, then min-max per sample
        b, s = m.shape[0], m.shape[-1]
        pooled = m.reshape(b, side, s // side, side, s // side).mean((2, 4)).reshape(b, -1)
        lo, hi = pooled.min(1, keepdims=True), pooled.max(1, keepdims=True)
        return (pooled - lo) / (hi - lo + 1e-12)

    flat = [prepare(m) for m in maps]
    expected = np.mean([np.abs(a - b).mean(1) for i, a in enumerate(flat) for b in flat[i + 1:]], axis=0)
    np.testing.assert_allclose(detector.score(x).numpy(), expected, atol=1e-5)


def test_ensemble_directions_and_two_sided_round_trip(colour_model, tmp_path):
    benign, x = colour_task(40, 15, "b").images, colour_task(8, 16, "x").images
    higher = create_detector("interpreter-ensemble", interpreters=["grad", "cam"]).fit(colour_model, benign)
    lower = create_detector("interpreter-ensemble", interpreters=["grad", "cam"], direction="lower").fit(
        colour_model, benign)
    two = create_detector("interpreter-ensemble", interpreters=["grad", "cam"], direction="two-sided").fit(
        colour_model, benign)
    d = higher.score(x)
    torch.testing.assert_close(lower.score(x), -d)
    reference = higher.score(benign).double().numpy()
    median = np.median(reference)  # 40 values: numpy averages the middle two, torch takes the lower
    lower_median = np.sort(reference)[19]
    mad = np.sort(np.abs(reference - lower_median))[19]
    assert lower_median <= median
    np.testing.assert_allclose(two.score(x).numpy(), np.abs(d.double().numpy() - lower_median) / mad, rtol=1e-5)
    again = load_detector(two.save(tmp_path / "two.safetensors"), colour_model)
    assert torch.equal(again.score(x), two.score(x)) and again.threshold == two.threshold


def _smooth_classifier() -> Classifier:
    """A small smooth (tanh) GAP + linear CNN in float64: its maps have non-vanishing input gradients."""
    torch.manual_seed(3)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.Tanh(),
                                            torch.nn.Conv2d(6, 8, 3, padding=1, stride=2), torch.nn.Tanh())
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    info = ModelInfo(name="smooth", num_classes=3, input_size=8)
    return Classifier(Net().double(), body=lambda n, z: n.body(z), head=lambda n, a: n.fc(a.mean((2, 3))),
                      info=info, linear=lambda n: n.fc).eval()


def test_ensemble_score_is_differentiable_and_matches_finite_differences():
    classifier = _smooth_classifier()
    detector = _bound(create_detector("interpreter-ensemble", interpreters=["cam", "gradcam"]), classifier)
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.8 + 0.1
    x.requires_grad_(True)
    score = detector.score(x, create_graph=True)
    (gradient,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(gradient).all() and float(gradient.abs().max()) > 0
    direction = gradient / gradient.norm()
    # CAM and Grad-CAM's in-graph maps are exact: the in-graph score is the score (in float64 here)
    torch.testing.assert_close(score.detach().float(), detector.score(x.detach()))
    h = 1e-6
    plus = detector.score((x + h * direction).detach(), create_graph=True).detach()
    minus = detector.score((x - h * direction).detach(), create_graph=True).detach()
    finite = float((plus - minus).sum() / (2 * h))
    assert finite == pytest.approx(float(gradient.norm()), rel=1e-4)


def test_ensemble_in_graph_grad_map_is_the_surrogate_map_and_carries_a_gradient(colour_model):
    detector = _bound(create_detector("interpreter-ensemble", interpreters=["grad", "cam"]), colour_model)
    x = colour_task(2, 14, "g").images.requires_grad_(True)
    grad_map, cam_map = detector.maps(x, in_graph=True)
    surrogate = create_interpreter("grad", colour_model, surrogate=True).attribute(x, create_graph=True)
    torch.testing.assert_close(grad_map, surrogate)
    torch.testing.assert_close(cam_map, create_interpreter("cam", colour_model).attribute(x.detach()))
    weights = torch.rand(grad_map.shape, generator=torch.Generator().manual_seed(0))
    (through_grad,) = torch.autograd.grad((grad_map * weights).sum(), x)
    assert float(through_grad.abs().sum()) > 0  # the ReLU network's own map would have none
    (gradient,) = torch.autograd.grad(detector.score(x, create_graph=True).sum(), x)
    assert torch.isfinite(gradient).all() and float(gradient.abs().sum()) > 0


@pytest.fixture(scope="module")
def pgd_sets(colour_model):
    """Benign images and successful PGD images of the colour model: a fit set and a held-out set."""
    def make(n, seed, prefix):
        data = colour_task(n, seed, prefix)
        result = create_attack("pgd", epsilon=16 / 255, steps=10, mode="untargeted").run(
            colour_model, data.images, data.labels)
        return data.images, result.x_adv[result.success]

    return make(400, TRAIN_SEED + 7, "fit"), make(320, TEST_SEED + 3, "test")


@pytest.fixture(scope="module")
def fitted(colour_model, pgd_sets):
    (benign, adversarial), _ = pgd_sets
    detector = create_detector("multi-interpreter", interpreters=["grad", "cam"], max_iter=60, fpr=0.1)
    return detector.fit(colour_model, benign, adversarial)


def test_multi_interpreter_separates_held_out_pgd_images(fitted, pgd_sets):
    _, (benign, adversarial) = pgd_sets
    assert adversarial.shape[0] >= 80
    summary = fitted.evaluate(benign, adversarial)
    # this tiny model's maps separate PGD images only moderately (held-out AUC around 0.7, moving by a few
    # hundredths with the library versions); with ~100 adversarial and 320 benign images an AUC's standard
    # error is ~0.03, so 0.6 is well above chance and well below the detector's level
    assert summary.auc > 0.6
    assert summary.detection_rate > summary.false_positive_rate


def test_multi_interpreter_round_trips_through_skops(fitted, pgd_sets, colour_model, tmp_path):
    _, (benign, _) = pgd_sets
    path = fitted.save(tmp_path / "multi.safetensors")
    again = load_detector(path, colour_model)
    assert again.threshold == fitted.threshold
    assert torch.equal(again.score(benign), fitted.score(benign))


def _not_a_trusted_function(x):
    return x


def test_fitting_on_precomputed_stacks_equals_fitting_on_images(fitted, pgd_sets, colour_model):
    (benign, adversarial), (test_benign, _) = pgd_sets
    again = create_detector("multi-interpreter", interpreters=["grad", "cam"], max_iter=60, fpr=0.1)
    again.fit_from_stacks(colour_model, fitted.map_stack(benign), fitted.map_stack(adversarial))
    assert again.threshold == fitted.threshold and again.fit_info == fitted.fit_info
    assert torch.equal(again.score(test_benign), fitted.score(test_benign))


def test_skops_loading_refuses_untrusted_types():
    import skops.io
    from sklearn.preprocessing import FunctionTransformer

    data = skops.io.dumps(FunctionTransformer(_not_a_trusted_function))
    assert set(skops.io.get_untrusted_types(data=data)) - set(TRUSTED_SKOPS_TYPES)
    with pytest.raises(UserError, match="untrusted types"):
        load_skops_model(data)


def test_vgg16_extractor_loads_a_local_weights_file(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features_only = make_layers(cfgs["D"])  # VGG-16's convolutional part, randomly initialised
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features_only.state_dict().items()}, path)
    extractor = extractor_from_spec(f"vgg16:weights={path},side=32")
    maps = torch.rand(2, 2, 16, 16)
    features = extractor(maps)
    assert features.shape == (2, 64 + 128 + 256 + 512 + 512)
    # the last block's features are the global mean of VGG-16's conv stack before its last pooling
    three = torch.cat([maps, maps.mean(1, keepdim=True)], 1)
    x = torch.nn.functional.interpolate(three, size=32, mode="bilinear", align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = features_only[:-1](x).mean((2, 3))
    torch.testing.assert_close(features[:, -512:], expected, rtol=1e-4, atol=1e-5)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not a VGG-16"):
        extractor_from_spec(f"vgg16:weights={tmp_path / 'bad.pth'}")
    with pytest.raises(UserError, match="not found"):
        extractor_from_spec(f"vgg16:weights={tmp_path / 'missing.pth'}")


@pytest.mark.parametrize("name", ["pooled", "random-conv"])
def test_default_extractors_are_deterministic_and_finite(name):
    maps = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = extractor_from_spec(name)(maps), extractor_from_spec(name)(maps)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    torch.testing.assert_close(extractor_from_spec(name)(maps[:1]), a[:1])  # per sample: no batch statistics


def test_unavailable_interpreters_and_bad_options_are_one_line_user_errors(colour_model):
    no_gap = Classifier(colour_model.net, body=lambda n, z: n.features(z), head=lambda n, a: n.head(a),
                        info=ModelInfo(name="no_gap", num_classes=3, input_size=32, gap_linear_head=False)).eval()
    bad = [
        ({"interpreters": ["grad"]}, "2 or 3"),
        ({"interpreters": ["grad", "cam", "gradcam", "ig"]}, "2 or 3"),
        ({"interpreters": ["grad", "nope"]}, "unknown interpreter"),
        ({"interpreters": ["grad", "cam", "gradcam"], "product_channel": True}, "product_channel"),
        ({"extractor": "nope"}, "unknown feature extractor"),
        ({"extractor": "pooled:scales=[0]"}, "scales"),
        ({"extractor": "pooled:bogus=1"}, "unexpected bogus"),
        ({"extractor": "vgg16"}, "weights"),
        ({"map_size": 0}, "map_size"),
        ({"learning_rate": 0}, "learning_rate"),
    ]
    for options, message in bad:
        with pytest.raises(UserError, match=message) as error:
            create_detector("multi-interpreter", **options)
        assert "\n" not in str(error.value)
    for options, message in [({"interpreters": ["grad"]}, "at least 2"), ({"measure": "cosine"}, "measure"),
                             ({"side": -1}, "side")]:
        with pytest.raises(UserError, match=message):
            create_detector("interpreter-ensemble", **options)
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(UserError, match="cannot explain") as error:
        create_detector("multi-interpreter").fit(no_gap, x, x)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="cannot explain"):
        create_detector("interpreter-ensemble").fit(no_gap, x)
    spearman = _bound(create_detector("interpreter-ensemble", measure="spearman"), colour_model)
    with pytest.raises(UserError, match="spearman"):
        spearman.score(x.requires_grad_(True), create_graph=True)
