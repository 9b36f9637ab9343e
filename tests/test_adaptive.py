"""Adaptive ADV² (paper 001 §4 Q3, Algorithm 2) and the interpreter-ensemble ADV².

- outputs stay in the epsilon ball and [0, 1] (every squeezer kind, the ensemble);
- with squeeze_weight = 0 (and with no further interpreter nor detector) each attack *is* ADV²: same images;
- Algorithm 2's stage (i) returns images on the squeezer's grid, inside the squeezed ball psi(B_eps(x0)),
  that reach the target more often than not;
- the smoothing term vanishes where the squeezer changes nothing and pulls through the squeezer otherwise;
- the adaptive attack (2-bit depth; 3 x 3 mean filter) lowers feature squeezing's L1 score against basic ADV²
  (pretrained CIFAR ResNet-20, skipped without ../shared);
- ensemble-adv2 reports every interpreter's map distance, keeps the other interpreter's map closer to its benign
  map than ADV² on one interpreter does, and lowers a differentiable detector's score;
- bad options are one-line UserErrors.

Small: the dominant-colour CNN of the suite (``colour_model``) on its lowest-margin images, short schedules.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from idls.attacks import ATTACKS, create_attack
from idls.attacks.adaptive import AdaptiveADV2, EnsembleADV2, quantises
from idls.attacks.adaptive_terms import SqueezedAgreement, ball_point_of, squeeze_l1, squeezed_space_pgd
from idls.attacks.pgd import Iterate
from idls.defenses import BitDepth, InputTransform
from idls.errors import UserError
from idls.interpreters import create_interpreter, interpreter_class
from tests.universal_helpers import colour_task

EPS = 8 / 255
SHORT = {"steps": 12, "warm_start": 8, "epsilon": EPS}


class AveragePool(InputTransform):
    """A local differentiable smoothing squeezer: 3 x 3 mean filter (replicate borders)."""

    name = "average-pool"

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


class Identity(InputTransform):
    name = "identity"

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class Brightness:
    """A differentiable stand-in detector: the mean pixel value (higher = more adversarial)."""

    differentiable_score = True

    def score(self, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
        return x.flatten(1).mean(1) if create_graph else x.detach().flatten(1).mean(1)


@pytest.fixture(scope="module")
def batch(colour_model):
    """Six test images the colour model classifies correctly with the smallest margins; runner-up targets."""
    data = colour_task(200, 5, "test")
    with torch.no_grad():
        top = colour_model(data.images).topk(2, dim=1)
    margin = torch.where(top.indices[:, 0] == data.labels, top.values[:, 0] - top.values[:, 1], torch.inf)
    rows = margin.argsort()[:6]
    return data.images[rows], data.labels[rows], top.indices[rows, 1]


def _inside(x, x_adv, eps=EPS):
    return float((x_adv - x).abs().max()) <= eps + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


# -- threat model and reduction to ADV² ------------------------------------------------------------------
@pytest.mark.parametrize("squeezer", ["bit-depth:bits=3", AveragePool()], ids=["bit-depth", "average-pool"])
def test_adaptive_output_stays_in_the_ball_and_box(squeezer, colour_model, batch):
    x, labels, targets = batch
    result = create_attack("adaptive-adv2", interpreter="cam", squeezer=squeezer, **SHORT).run(
        colour_model, x, labels, targets)
    assert _inside(x, result.x_adv)
    assert result.extras["squeeze_l1"].shape == (x.shape[0],)
    assert ("squeezed_start" in result.extras) == isinstance(squeezer, str)


def test_zero_weight_and_empty_ensemble_are_adv2(colour_model, batch):
    x, labels, targets = batch
    plain = create_attack("adv2", interpreter="cam", **SHORT).run(colour_model, x, labels, targets)
    for name, extra in (("adaptive-adv2", {"squeeze_weight": 0.0}),
                        ("adaptive-adv2", {"squeeze_weight": 0.0, "squeezer": AveragePool()}),
                        ("ensemble-adv2", {"interpreters": []})):
        result = create_attack(name, interpreter="cam", **SHORT, **extra).run(colour_model, x, labels, targets)
        assert torch.equal(result.x_adv, plain.x_adv), name


# -- Algorithm 2, stage (i) -----------------------------------------------------------------------------
def test_stage_one_stays_on_the_grid_of_the_squeezed_ball_and_reaches_the_target(colour_model, batch):
    x, _, targets = batch
    squeezer = BitDepth(3)
    out = squeezed_space_pgd(colour_model, squeezer, x, targets, epsilon=EPS, steps=10)
    x_plus = out.x_adv
    grid = x_plus * squeezer.levels
    assert torch.allclose(grid, grid.round(), atol=1e-4)  # on the 3-bit grid
    # inside psi(B_eps(x0)): the nearest ball point squeezes to it (the ball itself is checked independently)
    point = ball_point_of(x_plus, x, EPS)
    assert _inside(x, point) and torch.equal(squeezer.transform(point), x_plus)
    reached = colour_model.predict(x_plus) == targets
    assert torch.equal(reached, out.success)
    assert float(reached.float().mean()) > 0.5


# -- the smoothing term ------------------------------------------------------------------------------------
def test_smoothing_term_vanishes_without_squeezer_effect_and_pulls_through_the_squeezer(colour_model, batch):
    x = batch[0][:2]
    grads = {}
    for name, squeezer in (("identity", Identity()), ("pool", AveragePool())):
        term = SqueezedAgreement(colour_model, squeezer, 1.0)
        z = x.clone().requires_grad_(True)
        loss = term.loss(Iterate(z, torch.arange(2), 0), colour_model(z), {})
        (grads[name],) = torch.autograd.grad(loss.sum(), z)
    # CE(p, softmax z) has gradient softmax(z) - p = 0 at p = softmax(z): only float rounding remains
    assert float(grads["identity"].abs().max()) < 1e-4 * float(grads["pool"].abs().max())
    assert float(grads["pool"].abs().max()) > 0


def test_amortised_smoothing_term_is_exact_every_kth_iteration_and_first_order_in_between(colour_model, batch):
    """squeeze_every = 2: at even iterations value and gradient equal the exact term's; at odd ones the value and
    gradient are those of the sample's last exact evaluation (the term's first-order model), without a pass on psi."""
    x = batch[0][:3]
    exact, amortised = SqueezedAgreement(colour_model, AveragePool(), 2.0), \
        SqueezedAgreement(colour_model, AveragePool(), 2.0, every=2, batch=3)

    def value_and_gradient(term, z, iteration, index):
        z = z.clone().requires_grad_(True)
        loss = term.loss(Iterate(z, index, iteration), colour_model(z), {})
        (gradient,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach(), gradient

    index = torch.arange(3)
    want = value_and_gradient(exact, x, 0, index)
    got = value_and_gradient(amortised, x, 0, index)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    moved = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    calls = []
    handle = colour_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        stale = value_and_gradient(amortised, moved[1:], 1, index[1:])  # samples 1 and 2 only, a skipped iteration
    finally:
        handle.remove()
    torch.testing.assert_close(stale[0], want[0][1:])
    torch.testing.assert_close(stale[1], want[1][1:])
    assert len(calls) == 1  # the prediction's forward of this test only: none on psi(x)
    fresh = value_and_gradient(amortised, moved, 2, index)
    torch.testing.assert_close(fresh[0], value_and_gradient(exact, moved, 2, index)[0])


def test_dispatch_is_by_capability():
    assert quantises(BitDepth(3)) and not quantises(AveragePool())


# -- ensembles -----------------------------------------------------------------------------------------------
def test_ensemble_reports_every_distance_and_keeps_the_other_map_closer(colour_model, batch):
    x, labels, targets = batch
    cam, grad = create_interpreter("cam", colour_model), create_interpreter("grad", colour_model)
    plain = create_attack("adv2", interpreter=cam, **SHORT).run(colour_model, x, labels, targets)
    both = create_attack("ensemble-adv2", interpreter=cam, interpreters=["grad"], **SHORT).run(
        colour_model, x, labels, targets)
    assert _inside(x, both.x_adv)
    extras = both.extras
    assert torch.allclose(extras["map_distance/cam"], extras["map_distance"])
    assert torch.allclose(extras["ensemble_map_distance"], extras["map_distance/cam"] + extras["map_distance/grad"])
    benign = grad.attribute(x, labels)
    plain_other = (grad.attribute(plain.x_adv, plain.pred) - benign).abs().flatten(1).mean(1)
    assert torch.allclose(extras["map_distance/grad"],
                          (grad.attribute(both.x_adv, both.pred) - benign).abs().flatten(1).mean(1), atol=1e-5)
    assert float(extras["map_distance/grad"].mean()) < float(plain_other.mean())


def test_ensemble_lowers_a_differentiable_detector_score(colour_model, batch):
    x, labels, targets = batch
    detector = Brightness()
    plain = create_attack("adv2", interpreter="cam", **SHORT).run(colour_model, x, labels, targets)
    attack = create_attack("ensemble-adv2", interpreter="cam", interpreters=[], detector=detector,
                           detector_weight=50.0, **SHORT)
    assert attack.variant() == "vs Brightness"  # what the ensemble-adaptive claim pairs it with (no describe())
    evasive = attack.run(colour_model, x, labels, targets)
    assert _inside(x, evasive.x_adv)
    assert torch.allclose(evasive.extras["detector_score"], detector.score(evasive.x_adv))
    assert float(evasive.extras["detector_score"].mean()) < float(detector.score(plain.x_adv).mean())


def test_ensemble_variant_names_the_detector_it_evades():
    assert create_attack("ensemble-adv2", interpreter="cam", detector="ens").variant() == "vs ens"
    assert create_attack("ensemble-adv2", interpreter="cam", detector="ens", detector_weight=0.0).variant() == ""
    assert create_attack("ensemble-adv2", interpreter="cam").variant() == ""


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options, match", [
    ("adaptive-adv2", {"squeezer": "no-such-squeezer"}, "no-such-squeezer"),
    ("adaptive-adv2", {"squeezer": 3}, "squeezer must be"),
    ("adaptive-adv2", {"squeeze_weight": -1.0}, "squeeze_weight"),
    ("adaptive-adv2", {"squeeze_steps": -1}, "squeeze_steps"),
    ("adaptive-adv2", {"squeeze_every": 0}, "squeeze_every must be >= 1"),
    ("adaptive-adv2", {"interpreter": "mask"}, "mask"),
    ("ensemble-adv2", {"interpreters": ["cam", "mask"]}, "mask"),
    ("ensemble-adv2", {"interpreters": [3]}, "interpreters must be"),
    ("ensemble-adv2", {"detector": object()}, "differentiable"),
    ("ensemble-adv2", {"detector_weight": -1.0}, "detector_weight"),
])
def test_bad_options_are_one_line_user_errors(name, options, match):
    options = {"interpreter": "cam", **options}
    with pytest.raises(UserError, match=match) as caught:
        create_attack(name, **options)
    assert "\n" not in str(caught.value)


def test_mask_is_declared_unavailable():
    for attack in (AdaptiveADV2, EnsembleADV2):
        assert attack.interpreter_unavailable_reason(interpreter_class("mask"))
        assert attack.interpreter_unavailable_reason(interpreter_class("cam")) is None
    assert {"adaptive-adv2", "ensemble-adv2"} <= set(ATTACKS.names())


# -- the paper's setting: pretrained CIFAR ResNet-20 ---------------------------------------------------------
@pytest.fixture(scope="module")
def cifar8(resnet20, cifar_lossless_dir):
    """Eight CIFAR test images the pretrained ResNet-20 classifies correctly; runner-up targets."""
    from tests.test_joint import _correct, _load_folder

    x, labels = _correct(resnet20, *_load_folder(cifar_lossless_dir), 8)
    with torch.no_grad():
        targets = resnet20(x).topk(2, dim=1).indices[:, 1]
    return x, labels, targets


@pytest.mark.parametrize("squeezer", [BitDepth(2), AveragePool()], ids=["bit-depth-2", "average-pool"])
def test_adaptive_attack_lowers_the_squeezing_score_of_adv2(squeezer, resnet20, cifar8):
    """Squeezing undoes most of basic ADV²'s images (L1 near 2); the adaptive attack's stay predicted alike."""
    x, labels, targets = cifar8
    options = {"interpreter": "cam", "epsilon": EPS, "steps": 20, "warm_start": 10}
    basic = create_attack("adv2", **options).run(resnet20, x, labels, targets)
    adaptive = create_attack("adaptive-adv2", squeezer=squeezer, **options).run(resnet20, x, labels, targets)
    assert _inside(x, adaptive.x_adv)
    assert float(adaptive.success.float().mean()) >= float(basic.success.float().mean()) - 0.125
    assert torch.allclose(adaptive.extras["squeeze_l1"], squeeze_l1(resnet20, squeezer, adaptive.x_adv))
    basic_score = float(squeeze_l1(resnet20, squeezer, basic.x_adv).mean())
    assert basic_score > 0.5  # the squeezer is a real detector of basic ADV² here
    assert float(adaptive.extras["squeeze_l1"].mean()) < 0.5 * basic_score
