"""LID detector: the estimator on known manifolds and by hand, the layer hooks, fit / score / artifacts, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from idls.defenses import defend
from idls.defenses.detectors import (
    DETECTORS,
    LIDDetector,
    create_detector,
    lid_mle,
    load_detector,
)
from idls.defenses.detectors.activations import (
    activation_layers,
    layer_activations,
    recording,
)
from idls.defenses.detectors.lid import (
    MAX_LID,
    _minibatches,
    lid_features,
    same_image_mask,
)
from idls.errors import UserError
from idls.system import Classifier, ModelInfo
from tests.universal_helpers import synthetic


# -- the estimator ----------------------------------------------------------------------------
def test_lid_mle_matches_a_hand_computed_value():
    # k = 3 nearest of {4, 1, 9, 2, 100} are 1, 2, 4: LID = -1 / mean(log 1/4, log 2/4, log 4/4) = 3 / (3 log 2)
    distances = torch.tensor([[4.0, 1.0, 9.0, 2.0, 100.0]], dtype=torch.float64)
    assert lid_mle(distances, 3).item() == pytest.approx(1 / math.log(2), rel=1e-12)
    # with k = 2 only 1 and 2 count: -1 / mean(log 1/2, 0) = 2 / log 2
    assert lid_mle(distances, 2).item() == pytest.approx(2 / math.log(2), rel=1e-12)


def test_lid_mle_is_scale_invariant_and_ignores_left_out_points():
    distances = torch.rand(7, 30, dtype=torch.float64) + 0.01
    estimate = lid_mle(distances, 10)
    assert torch.allclose(lid_mle(distances * 37.5, 10), estimate, rtol=1e-10)
    padded = torch.cat([distances, torch.full((7, 5), math.inf, dtype=torch.float64)], dim=1)
    assert torch.equal(lid_mle(padded, 10), estimate)


def test_lid_mle_degenerate_neighbourhoods_are_finite():
    distances = torch.tensor([[0.0, 0.0, 0.0],   # a point mass: r_k = 0
                              [0.0, 1.0, 2.0],   # a duplicate among the neighbours
                              [3.0, 3.0, 3.0]])  # equidistant neighbours
    estimate = lid_mle(distances, 3)
    assert torch.isfinite(estimate).all()
    assert estimate.tolist() == [0.0, 0.0, MAX_LID]
    with pytest.raises(ValueError, match="k must be"):
        lid_mle(distances, 4)


def _subspace_points(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points uniform in a unit cube of a random ``d``-dimensional linear subspace of R^50."""
    basis = torch.linalg.qr(torch.randn(50, d, generator=generator, dtype=torch.float64))[0]
    return (torch.rand(n, d, generator=generator, dtype=torch.float64) @ basis.T).float()


def _torus_points(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points uniform on the flat ``d``-torus (cos, sin per angle), rotated into R^50."""
    angles = torch.rand(n, d, generator=generator, dtype=torch.float64) * 2 * math.pi
    rotation = torch.linalg.qr(torch.randn(50, 50, generator=generator, dtype=torch.float64))[0][:, :2 * d]
    return (torch.cat([angles.cos(), angles.sin()], dim=1) @ rotation.T).float()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("manifold", "d", "tolerance"),
                         [(_subspace_points, 2, 0.15), (_subspace_points, 5, 0.15), (_torus_points, 2, 0.2)])
def test_lid_of_a_known_manifold_is_its_dimension(manifold, d, tolerance, seed):
    points = manifold(400, d, torch.Generator().manual_seed(seed))
    itself = torch.eye(400, dtype=torch.bool)  # leave each point out of its own neighbours
    estimates = lid_features([points], [points], 20, itself)[:, 0]
    assert estimates.mean().item() == pytest.approx(d, rel=tolerance)


def test_same_image_mask_finds_the_source_only_when_close():
    reference = synthetic(12, 1, "ref").images
    close = (reference[[3, 7]] + 0.05 * torch.randn(2, 3, 32, 32).sign()).clamp(0, 1)
    far = synthetic(2, 2, "far").images
    mask = same_image_mask(torch.cat([close, far]), reference, max_linf=0.25)
    assert mask[0].nonzero().flatten().tolist() == [3]
    assert mask[1].nonzero().flatten().tolist() == [7]
    assert not mask[2:].any()


@pytest.mark.parametrize(("n", "size"), [(100, 100), (250, 100), (37, 10), (5, 5)])
def test_minibatches_have_one_size_and_query_every_image_once(n, size):
    order = torch.randperm(n)
    batches = _minibatches(order, size)
    assert all(reference.numel() == size for reference, _ in batches)
    assert all(set(queries.tolist()) <= set(reference.tolist()) for reference, queries in batches)
    assert sorted(torch.cat([queries for _, queries in batches]).tolist()) == list(range(n))


# -- layer hooks ------------------------------------------------------------------------------
class _Shared(nn.Module):
    """A network that calls one activation twice and holds an Identity and a nested Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.stage = nn.Sequential(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1)), nn.Identity(), nn.Dropout())
        self.fc = nn.Linear(4, 2)

    def features(self, z):
        return self.act(self.stage(self.act(self.conv(z))))

    def head(self, a):
        return self.fc(a.mean(dim=(2, 3))) * 2.0  # the logits differ from fc's output


def _shared_classifier() -> Classifier:
    return Classifier(_Shared(), body=lambda n, z: n.features(z), head=lambda n, a: n.head(a),
                      info=ModelInfo(name="shared", num_classes=2, input_size=8)).eval()


def test_layer_rule_flattens_containers_and_skips_pass_through_modules():
    names = [name for name, _ in activation_layers(_Shared())]
    assert names == ["conv", "act", "stage.0.0", "fc"]
    classifier = _shared_classifier()
    x = torch.rand(5, 3, 8, 8)
    names, outputs = layer_activations(classifier, x)
    assert names == ["conv", "act", "stage.0.0", "act#2", "fc", "logits"]
    assert [o.shape for o in outputs] == [(5, 256), (5, 256), (5, 256), (5, 256), (5, 2), (5, 2)]
    # oracle: the first layer is the conv of the normalised image, the last the classifier's logits
    z = classifier.normalize(x)
    assert torch.allclose(outputs[0], classifier.net.conv(z).flatten(1))
    assert torch.allclose(outputs[-1], classifier(x))


def test_one_activation_per_layer_and_hooks_are_removed(tiny):
    x = synthetic(4, 1, "x").images
    names, outputs = layer_activations(tiny, x)
    layers = activation_layers(tiny.net)
    # every conv / bn / relu / pool of the tiny CNN and its final linear layer (which gives the logits)
    assert names == [name for name, _ in layers]
    assert len(outputs) == len(layers) == 12
    assert all(o.shape[0] == 4 and o.dim() == 2 for o in outputs)
    assert torch.allclose(outputs[-1], tiny(x))
    assert all(not m._forward_hooks for m in tiny.net.modules())
    with pytest.raises(RuntimeError, match="inside"), recording(tiny.net):
        raise RuntimeError("inside")
    assert all(not m._forward_hooks for m in tiny.net.modules())


def test_activations_respect_the_input_transform(tiny):
    x = synthetic(3, 1, "x").images
    flip = _Flip()
    _, defended = layer_activations(defend(tiny, flip), x)
    _, plain = layer_activations(tiny, flip(x))
    assert all(torch.allclose(a, b) for a, b in zip(defended, plain, strict=True))


class _Flip(nn.Module):
    def forward(self, x):
        return x.flip(-1)


def test_layers_of_the_registered_cifar_resnet_and_embedded_cnn():
    from idls.models import create_model

    resnet = create_model("cifar_resnet20").eval()
    names, outputs = layer_activations(resnet, torch.rand(2, 3, 32, 32))
    assert names == ["conv1", "bn1", "relu"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)] + ["linear"]
    assert [o.shape[1] for o in outputs[-4:]] == [4096, 4096, 4096, 10]
    embedded = create_model("embedded_cnn").eval()
    names, _ = layer_activations(embedded, torch.rand(2, 3, embedded.input_size, embedded.input_size))
    assert names == [f"features.{i}" for i in range(15)] + ["fc"]


# -- the detector -----------------------------------------------------------------------------
def _pseudo_adversarial(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Images with a random-sign perturbation of 16/255: stand-ins where only the mechanics matter."""
    signs = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).sign()
    return (images + 16 / 255 * signs).clamp(0, 1)


def test_registered_with_its_options():
    assert DETECTORS.get("lid") is LIDDetector
    detector = create_detector("lid")
    assert (detector.options.k, detector.options.minibatch) == (20, 100)
    assert detector.needs_adversarial and detector.natural_threshold == 0.5
    assert detector.describe() == "lid(k=20, minibatch=100)"


def test_save_load_round_trip_gives_identical_scores(tmp_path, tiny):
    benign = synthetic(60, 3, "fit").images
    detector = create_detector("lid", k=5, minibatch=20).fit(tiny, benign, _pseudo_adversarial(benign, 0))
    test = synthetic(10, 4, "test").images
    scores = detector.score(torch.cat([test, _pseudo_adversarial(test, 1)]))
    assert scores.shape == (20,) and ((scores >= 0) & (scores <= 1)).all()
    assert detector.state_tensors()["reference"].shape == (20, 3, 32, 32)
    path = detector.save(tmp_path / "lid.safetensors")
    again = load_detector(path, tiny)
    assert isinstance(again, LIDDetector) and again.threshold == detector.threshold
    assert torch.equal(again.score(torch.cat([test, _pseudo_adversarial(test, 1)])), scores)


def test_fit_is_seeded(tiny):
    benign = synthetic(30, 3, "fit").images
    adversarial = _pseudo_adversarial(benign, 0)
    test = synthetic(8, 4, "test").images
    a = create_detector("lid", k=5, minibatch=20, seed=3).fit(tiny, benign, adversarial).score(test)
    b = create_detector("lid", k=5, minibatch=20, seed=3).fit(tiny, benign, adversarial).score(test)
    c = create_detector("lid", k=5, minibatch=20, seed=4).fit(tiny, benign, adversarial).score(test)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_errors_are_one_line_user_errors(tiny):
    benign = synthetic(30, 3, "fit").images
    cases = [
        (lambda: create_detector("lid", k=20, minibatch=20), "k must be smaller than minibatch"),
        (lambda: create_detector("lid", k=0), "k must be >= 1"),
        (lambda: create_detector("lid", noise_std=0.2), "noise_std"),
        (lambda: create_detector("lid").fit(tiny, benign), "supervised"),
        (lambda: create_detector("lid").fit(tiny, benign, benign[:0]), "supervised"),
        (lambda: create_detector("lid", k=25, minibatch=50).fit(tiny, benign, _pseudo_adversarial(benign, 0)),
         "more than k=25 benign"),
        (lambda: create_detector("lid", k=3, minibatch=10).fit(tiny, benign, _pseudo_adversarial(benign[:1], 0)),
         "at least 2 adversarial"),
        (lambda: create_detector("lid").score(benign), "not fitted"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


@pytest.mark.shared
def test_separates_pgd_images_from_benign_on_held_out_cifar(resnet20_path, resnet20):
    from idls.attacks import create_attack
    from tests.universal_helpers import shared_cifar_split

    fit, test = shared_cifar_split(resnet20_path, fit_n=120)
    test_images, test_labels = test.images[:60], test.labels[:60]
    attack = create_attack("pgd", epsilon=8 / 255, step_size=2 / 255, steps=5, mode="untargeted")
    adversarial_fit = attack.run(resnet20, fit.images, fit.labels).x_adv
    adversarial_test = attack.run(resnet20, test_images, test_labels).x_adv
    # fpr=None: every fit image trains (the threshold is the regression's own 0.5); the AUC does not use it
    detector = create_detector("lid", k=10, minibatch=40, fpr=None).fit(resnet20, fit.images, adversarial_fit)
    summary = detector.evaluate(test_images, adversarial_test)
    assert summary.auc > 0.75
