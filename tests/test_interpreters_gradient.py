"""Grad, Integrated Gradients, CAM and Grad-CAM against independent oracles.

Oracles: Captum (Saliency, IntegratedGradients), pytorch-grad-cam (GradCAM),
central finite differences, IG completeness, and CAM's exact logit identity.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from idls.errors import UserError
from idls.interpreters import create_interpreter
from idls.interpreters.cam import class_activation_map
from idls.interpreters.grad import gradient_map, input_gradient
from idls.interpreters.gradcam import gradcam_map
from idls.interpreters.integrated_gradients import integrated_gradients, make_baseline
from idls.system import Classifier, ModelInfo, smooth_surrogate
from tests.conftest import TEST_DEVICES

DEVICES = TEST_DEVICES
GRADIENT_INTERPRETERS = ["grad", "ig", "cam", "gradcam"]


def converted(model: Classifier, dtype: torch.dtype, device: str = "cpu") -> Classifier:
    """A copy of a (session-scoped) model in another dtype/device, leaving the fixture untouched."""
    return copy.deepcopy(model).to(device=device, dtype=dtype)


def images(n: int, size: int = 32, *, dtype=torch.float32, device="cpu", seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


class _TinyNet(nn.Module):
    def __init__(self, num_classes: int = 5, gap_head: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 if gap_head else 8 * 4 * 4, num_classes)
        self.gap_head = gap_head

    def features(self, z: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(z))))

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean(dim=(2, 3)) if self.gap_head else a.flatten(1))


def tiny_classifier(dtype: torch.dtype = torch.float64, *, gap_head: bool = True) -> Classifier:
    """A 2-conv network on 8 x 8 inputs (feature map 8 x 4 x 4), GAP + linear or flatten + linear head."""
    torch.manual_seed(3)
    net = _TinyNet(gap_head=gap_head)
    info = ModelInfo(name="tiny", num_classes=5, input_size=8, gap_linear_head=gap_head)
    clf = Classifier(net, body=lambda n, z: n.features(z), head=lambda n, a: n.head(a), info=info,
                     linear=(lambda n: n.fc) if gap_head else None)
    return clf.eval().to(dtype)


def reference_postprocess(attribution: torch.Tensor, pool: int) -> torch.Tensor:
    """Oracle-side Grad post-processing written independently: |.|, channel max, avg-pool, min-max."""
    per_pixel = attribution.abs().max(dim=1).values[:, None]
    pooled = F.avg_pool2d(per_pixel, pool)[:, 0].flatten(1)
    lo, hi = pooled.min(1, keepdim=True).values, pooled.max(1, keepdim=True).values
    return ((pooled - lo) / (hi - lo)).view(attribution.shape[0], attribution.shape[2] // pool, -1)


# ------------------------------------------------------------------------------------------
# Grad
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_matches_captum_saliency(random_resnet20, device, dtype):
    from captum.attr import Saliency

    model = converted(random_resnet20, dtype, device)
    x = images(4, dtype=dtype, device=device)
    target = model(x).argmax(1)
    # d CE / dx = -d log p_c / dx, so |Saliency of log-softmax| is the oracle of |d CE / dx|.
    oracle = Saliency(lambda z: F.log_softmax(model(z), dim=1)).attribute(x, target=target, abs=True)
    ours = input_gradient(model, x, target).abs()
    torch.testing.assert_close(ours, oracle, rtol=1e-4, atol=1e-6 * float(oracle.max()))
    maps = gradient_map(model, x, target, pool=2)
    assert maps.shape == (4, 16, 16)
    torch.testing.assert_close(maps, reference_postprocess(oracle, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loss", ["cross_entropy", "logit"])
def test_grad_matches_central_finite_differences(loss):
    model = tiny_classifier(torch.float64)
    x = images(2, size=8, dtype=torch.float64, seed=1)
    target = torch.tensor([1, 3])
    analytic = input_gradient(model, x, target, loss=loss)

    step = 1e-6
    n = x[0].numel()
    basis = torch.eye(n, dtype=torch.float64).view(n, *x.shape[1:])
    numeric = torch.empty_like(x)
    for b in range(2):  # all 2 * 192 perturbed copies of one image in a single batch
        batch = torch.cat([x[b] + step * basis, x[b] - step * basis])
        logits = model(batch)
        cls = torch.full((2 * n,), int(target[b]))
        values = F.cross_entropy(logits, cls, reduction="none") if loss == "cross_entropy" else logits[:, target[b]]
        numeric[b] = ((values[:n] - values[n:]) / (2 * step)).view(x.shape[1:])
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_grad_default_pool_follows_input_size(random_resnet20):
    g = create_interpreter("grad", random_resnet20)
    assert g.attribute(images(1)).shape == (1, 32, 32)  # 32 // 56 -> no pooling
    assert create_interpreter("grad", random_resnet20, pool=3).attribute(images(1)).shape == (1, 11, 11)  # ragged


def test_grad_map_is_scale_free_when_softmax_saturates(random_resnet20):
    """CE gradients of a saturated softmax can be ~1e-20; the map must still span [0, 1]."""
    model = converted(random_resnet20, torch.float32)
    with torch.no_grad():
        model.net.linear.weight.mul_(5.0)  # saturate the softmax: logit gaps ~40
    x = images(2)
    raw = input_gradient(model, x, model(x).argmax(1))
    maps = create_interpreter("grad", model).attribute(x)
    assert float(raw.abs().max()) < 1e-12  # below minmax_normalize's epsilon
    torch.testing.assert_close(maps.amax(dim=(1, 2)), torch.ones(2))
    torch.testing.assert_close(maps, reference_postprocess(raw, 1), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Integrated Gradients
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["riemann_right", "riemann_left", "riemann_middle"])
def test_ig_matches_captum(random_resnet20, method, dtype):
    from captum.attr import IntegratedGradients

    model = converted(random_resnet20, dtype)
    x = images(3, dtype=dtype, seed=2)
    target = torch.tensor([0, 4, 7])
    oracle = IntegratedGradients(model).attribute(x, target=target, n_steps=8, method=method)
    # internal_batch_size 10 < 3 * 8 exercises the chunked path
    ours = integrated_gradients(model, x, target, steps=8, method=method, internal_batch_size=10)
    tol = 1e-4 if dtype == torch.float32 else 1e-6  # Captum keeps its weights in float32
    torch.testing.assert_close(ours, oracle.to(dtype), rtol=tol, atol=tol * float(oracle.abs().max()))


def test_ig_trapezoid_is_captums_rescaled_to_unit_weights(random_resnet20):
    """Captum's trapezoid weights sum to (m-1)/m; ours are the textbook ones (sum 1)."""
    from captum.attr import IntegratedGradients

    model = converted(random_resnet20, torch.float64)
    x, target, m = images(2, dtype=torch.float64), torch.tensor([2, 5]), 6
    oracle = IntegratedGradients(model).attribute(x, target=target, n_steps=m, method="riemann_trapezoid")
    ours = integrated_gradients(model, x, target, steps=m, method="riemann_trapezoid")
    # Captum rounds its nodes and weights to float32: agreement to ~1e-7 relative
    torch.testing.assert_close(ours, oracle * m / (m - 1), rtol=1e-6, atol=1e-6 * float(oracle.abs().max()))


@pytest.mark.parametrize("baseline", ["black", "blur"])
def test_ig_completeness(baseline):
    """sum of attributions = f_c(x) - f_c(baseline), up to the quadrature error (many steps, float64)."""
    model = tiny_classifier(torch.float64)
    x = images(4, size=8, dtype=torch.float64, seed=4)
    target = torch.tensor([0, 1, 2, 3])
    attribution = integrated_gradients(model, x, target, baseline=baseline, steps=1024, method="riemann_trapezoid")
    with torch.no_grad():
        gap = (model(x) - model(make_baseline(x, baseline))).gather(1, target[:, None])[:, 0]
    assert float(gap.abs().min()) > 1e-2  # the check is not vacuous
    torch.testing.assert_close(attribution.sum(dim=(1, 2, 3)), gap, rtol=2e-3, atol=1e-5)


def test_ig_tensor_baseline_and_map(random_resnet20):
    x = images(2)
    grey = torch.full((1, 3, 1, 1), 0.5)
    ig = create_interpreter("ig", random_resnet20, baseline=grey, steps=4)
    target = torch.tensor([3, 8])
    raw = integrated_gradients(random_resnet20, x, target, baseline=0.5, steps=4)
    expected = raw.sum(1).abs().flatten(1)
    expected = (expected - expected.min(1, keepdim=True).values) / (
        expected.max(1, keepdim=True).values - expected.min(1, keepdim=True).values
    )
    torch.testing.assert_close(ig.attribute(x, target), expected.view(2, 32, 32), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# CAM
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model_fixture", ["resnet20", "random_resnet20"])
def test_cam_logit_identity(request, model_fixture, dtype):
    """GAP + linear head: mean over the raw CAM plus the class bias is exactly the logit."""
    model = converted(request.getfixturevalue(model_fixture), dtype)
    x = images(4, dtype=dtype, seed=5)
    classes = torch.arange(model.num_classes).repeat_interleave(4)  # every class for every image
    with torch.no_grad():
        logits = model(x).T.flatten()  # the same (class, image) order
        cam = class_activation_map(model, x.repeat(model.num_classes, 1, 1, 1), classes, normalize=False)
    assert cam.shape == (40, 8, 8)
    recovered = cam.mean(dim=(1, 2)) + model.linear.bias[classes]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(recovered, logits, rtol=tol, atol=tol)


def test_cam_requires_gap_linear_head():
    with pytest.raises(UserError, match="gradcam"):
        create_interpreter("cam", tiny_classifier(gap_head=False))


# ------------------------------------------------------------------------------------------
# Grad-CAM
# ------------------------------------------------------------------------------------------
class _BodyHead(nn.Module):
    """Adapter exposing the feature map A as a module output, for pytorch-grad-cam's hooks."""

    class _Body(nn.Module):
        def __init__(self, classifier: Classifier) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.classifier.features(x)

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.body = self._Body(classifier)
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits_from_features(self.body(x))


def library_gradcam_native(classifier: Classifier, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's GradCAM, kept at the feature map's resolution.

    The library ReLUs, min-max normalises (eps 1e-7) and cv2-resizes to the input's
    size; pointing that size at the feature map's own size makes the resize an identity.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    native = tuple(classifier.features(x[:1]).shape[-2:])

    class NativeGradCAM(GradCAM):
        def get_target_width_height(self, input_tensor):
            return native[1], native[0]

    adapter = _BodyHead(classifier)
    with NativeGradCAM(model=adapter, target_layers=[adapter.body]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in target])


@pytest.mark.parametrize("model_fixture", ["resnet20", "random_resnet20"])
def test_gradcam_matches_pytorch_grad_cam(request, model_fixture):
    model = request.getfixturevalue(model_fixture)
    x = images(4, seed=6)
    target = torch.tensor([0, 3, 3, 9])
    oracle = torch.from_numpy(library_gradcam_native(model, x, target))
    ours = gradcam_map(model, x, target)
    assert ours.shape == oracle.shape == (4, 8, 8)
    torch.testing.assert_close(ours, oracle, rtol=1e-4, atol=1e-5)


def test_gradcam_without_gap_head_matches_library():
    model = tiny_classifier(torch.float32, gap_head=False)
    x = images(3, size=8, seed=7)
    target = torch.tensor([0, 2, 4])
    oracle = torch.from_numpy(library_gradcam_native(model, x, target))
    torch.testing.assert_close(gradcam_map(model, x, target), oracle, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Contract shared by all four
# ------------------------------------------------------------------------------------------
def build(name: str, model: Classifier, **options):
    if name in ("grad", "ig"):
        options.setdefault("surrogate", True)
    if name == "ig":
        options.setdefault("steps", 4)
    return create_interpreter(name, model, **options)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRADIENT_INTERPRETERS)
def test_contract(resnet20, name, device):
    model = converted(resnet20, torch.float32, device)
    interpreter = build(name, model)
    x = images(3, seed=8, device=device)
    maps = interpreter.attribute(x)
    native = 32 if name in ("grad", "ig") else 8
    assert maps.shape == (3, native, native)
    assert maps.dtype == x.dtype and maps.device == x.device and not maps.requires_grad
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    torch.testing.assert_close(maps.amin(dim=(1, 2)), torch.zeros(3, device=device))
    torch.testing.assert_close(maps.amax(dim=(1, 2)), torch.ones(3, device=device))
    # explains the predicted class by default, and the target changes the map
    predicted = model(x).argmax(1)
    torch.testing.assert_close(maps, interpreter.attribute(x, predicted))
    other = interpreter.attribute(x, (predicted + 1) % 10)
    assert float((other - maps).abs().max()) > 1e-2
    # differentiable maps
    x_var = x.clone().requires_grad_(True)
    live = interpreter.attribute(x_var, create_graph=True)
    if name in ("cam", "gradcam"):
        torch.testing.assert_close(live.detach(), maps)
    else:  # the smooth surrogate's first derivative is close to, not equal to, the real one
        assert float((live.detach() - maps).abs().mean()) < 0.05
        assert float(torch.corrcoef(torch.stack([live.detach().flatten(), maps.flatten()]))[0, 1]) > 0.9
    (dx,) = torch.autograd.grad(live.sum(), x_var)
    assert torch.isfinite(dx).all() and float(dx.abs().max()) > 0


class _PrimitiveReLU(nn.Module):
    """Oracle ReLU: value relu(z), derivatives of every order by autograd on the explicit primitive
    r(z) = z + sqrt(z^2 + tau) (z < 0), sqrt(z^2 + tau) (z >= 0) of ADV²'s smooth gradient."""

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau = tau

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        root = torch.sqrt(z * z + self.tau)
        r = torch.where(z < 0, z + root, root)
        return torch.relu(z).detach() + (r - r.detach())


def primitive_relu_copy(model: Classifier, tau: float = 1e-4) -> Classifier:
    """A copy of ``model`` with every nn.ReLU replaced by :class:`_PrimitiveReLU` (BatchNorm left native, eval)."""
    oracle = copy.deepcopy(model)
    for module in list(oracle.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, _PrimitiveReLU(tau))
    return oracle.eval()


@pytest.mark.parametrize("model_fixture", ["resnet20", "random_resnet20"])
def test_smooth_surrogate_second_derivatives_equal_the_explicit_primitives(model_fixture, request):
    """A ReLU net's logit is piecewise linear: d |grad logit| / dx vanishes. The surrogate's custom double
    backward must give exactly the second derivative that autograd computes on the explicit primitive."""
    model = converted(request.getfixturevalue(model_fixture), torch.float64)
    x = images(2, seed=9, dtype=torch.float64).requires_grad_(True)
    derivatives = {}
    for label, net in (("relu", model), ("smooth", smooth_surrogate(model)), ("oracle", primitive_relu_copy(model))):
        maps = gradient_map(net, x, torch.tensor([1, 2]), loss="logit", create_graph=True)
        (dx,) = torch.autograd.grad(maps.sum(), x)
        derivatives[label] = dx
    assert float(derivatives["relu"].abs().max()) < 1e-7
    scale = float(derivatives["oracle"].abs().max())
    assert scale > 1e-3  # the comparison below is not between two zeros
    torch.testing.assert_close(derivatives["smooth"], derivatives["oracle"], rtol=1e-6, atol=1e-8 * scale)


def test_interpreter_uses_surrogate_only_for_differentiable_maps(resnet20):
    x = images(2, seed=10)
    with_surrogate = create_interpreter("grad", resnet20, surrogate=True)
    plain = create_interpreter("grad", resnet20)
    torch.testing.assert_close(with_surrogate.attribute(x), plain.attribute(x), rtol=0, atol=0)
    assert with_surrogate.model_for(create_graph=True) is with_surrogate.surrogate
    assert with_surrogate.model_for(create_graph=False) is resnet20


@pytest.fixture(scope="module")
def resnet18():
    from idls.models import create_model

    torch.manual_seed(0)
    return create_model("resnet18")


@pytest.mark.parametrize("name,side", [("grad", 56), ("ig", 224), ("cam", 7), ("gradcam", 7)])
def test_resnet18_at_224(resnet18, name, side):
    interpreter = create_interpreter(name, resnet18, **({"steps": 2} if name == "ig" else {}))
    maps = interpreter.attribute(images(1, 224, seed=11))
    assert maps.shape == (1, side, side)
    assert float(maps.min()) == 0 and float(maps.max()) == pytest.approx(1)


@pytest.mark.slow
def test_gradcam_on_vgg16_differentiable():
    from idls.models import create_model

    model = create_model("vgg16")
    x = images(1, 64, seed=12).requires_grad_(True)
    maps = create_interpreter("gradcam", model).attribute(x, create_graph=True)
    assert maps.shape == (1, 2, 2)
    (dx,) = torch.autograd.grad(maps.sum(), x)
    assert float(dx.abs().max()) > 0


# ------------------------------------------------------------------------------------------
# User mistakes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,options,match",
    [
        ("grad", {"pool": 0}, "pool"),
        ("grad", {"loss": "hinge"}, "loss"),
        ("ig", {"method": "simpson"}, "method"),
        ("ig", {"steps": 1}, "steps"),
        ("ig", {"baseline": "white-noise"}, "baseline"),
    ],
)
def test_bad_options_raise_user_error(random_resnet20, name, options, match):
    with pytest.raises(UserError, match=match):
        create_interpreter(name, random_resnet20, **options)


@pytest.mark.parametrize("name", GRADIENT_INTERPRETERS)
def test_bad_target_raises_user_error(random_resnet20, name):
    with pytest.raises(UserError, match="target"):
        create_interpreter(name, random_resnet20).attribute(images(2), torch.tensor([0, 10]))


def test_bad_tensor_baseline_raises_user_error(random_resnet20):
    ig = create_interpreter("ig", random_resnet20, baseline=torch.zeros(3, 5, 5), steps=2)
    with pytest.raises(UserError, match="broadcast"):
        ig.attribute(images(1))
