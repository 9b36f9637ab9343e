"""RTS (real-time saliency): masking model, objective, training, checkpoints, embedded cache."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from idls.errors import UserError
from idls.interpreters import create_interpreter, rts_training
from idls.interpreters.rts import RTSInterpreter, RTSMasker
from idls.interpreters.rts_training import (
    RTSObjective,
    class_margin,
    load_rts,
    objective_terms,
    save_rts,
    sidecar_path,
    train_rts,
)
from idls.models import create_model
from idls.system import Classifier, ModelInfo


def cifar_images(directory, n: int | None = None):
    from idls.data.datasets import load_images

    data = load_images(str(directory), input_size=32, n=n)
    return data.images, data.labels


def random_embedded(seed: int) -> Classifier:
    torch.manual_seed(seed)
    return create_model("embedded_cnn")


@pytest.fixture(scope="module")
def lossless(cifar_lossless_dir):
    return cifar_images(cifar_lossless_dir)


@pytest.fixture(scope="module")
def tiny_masker(resnet20, lossless):
    """An RTS masker for the pretrained ResNet-20, briefly trained on the 20 lossless images."""
    images, labels = lossless
    return train_rts(resnet20, images, labels, epochs=2, selector_epochs=1, batch_size=10, lr=3e-3, seed=0, progress=False)


# ----------------------------------------------------------------------------------
# The masking model
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "size", "batch"),
    [("cifar_resnet20", 32, 3), ("embedded_cnn", 64, 3), ("resnet18", 224, 1), ("densenet121", 64, 1)],
)
def test_masks_are_input_over_4_in_unit_range_and_encoder_is_the_classifier(model, size, batch):
    torch.manual_seed(0)
    classifier = create_model(model)
    masker = RTSMasker(classifier)
    x = torch.rand(batch, 3, size, size)
    cls = torch.randint(0, classifier.num_classes, (batch,))
    with torch.no_grad():
        out = masker(x, cls)
        levels = masker.pyramid(x)
        expected_features = classifier.features(x)
        expected_logits = classifier.logits_from_features(expected_features)
    assert out.mask.shape == (batch, size // 4, size // 4)
    assert float(out.mask.min()) >= 0 and float(out.mask.max()) <= 1
    assert out.mask.std() > 0  # not a constant
    # the encoder's deepest level and logits are exactly the classifier's
    torch.testing.assert_close(levels[-1], expected_features)
    torch.testing.assert_close(out.logits, expected_logits)
    assert list(masker.config.strides) == sorted(masker.config.strides)
    assert masker.config.strides[-1] == size // expected_features.shape[-1]


def test_mask_depends_on_the_explained_class(random_resnet20):
    torch.manual_seed(0)
    masker = RTSMasker(random_resnet20)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a = masker(x, torch.tensor([0, 0])).mask
        b = masker(x, torch.tensor([1, 1])).mask
    assert not torch.allclose(a, b)


def test_unsupported_model_raises_user_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    info = ModelInfo(name="vgg16", num_classes=3, input_size=32)
    classifier = Classifier(net, body=lambda n, z: n(z), head=lambda n, a: a.mean(dim=(2, 3))[:, :3], info=info)
    with pytest.raises(UserError, match="'vgg16' exposes no feature pyramid, so RTS has no encoder"):
        RTSMasker(classifier)
    with pytest.raises(UserError, match="vgg16"):
        create_interpreter("rts", classifier)


def test_untrained_model_without_checkpoint_tells_how_to_train(random_resnet20):
    with pytest.raises(UserError, match="idls train-rts --model cifar_resnet20"):
        create_interpreter("rts", random_resnet20)


def test_map_gradient_wrt_input_matches_finite_differences(random_resnet20):
    """create_graph=True: d<w, map>/dx along a random direction equals a central difference (float64)."""
    classifier = copy.deepcopy(random_resnet20).double()
    torch.manual_seed(0)
    masker = RTSMasker(classifier)  # follows the classifier's dtype
    interpreter = RTSInterpreter(classifier, masker=masker)
    x = (0.1 + 0.8 * torch.rand(2, 3, 32, 32, dtype=torch.float64)).requires_grad_(True)
    cls = torch.tensor([3, 7])
    weights = torch.rand(2, 8, 8, dtype=torch.float64)

    def score(inp):
        return (interpreter.attribute(inp, cls, create_graph=True) * weights).sum()

    (grad,) = torch.autograd.grad(score(x), x)
    direction = torch.randn_like(x)
    eps = 1e-6
    with torch.no_grad():
        numeric = (score(x + eps * direction) - score(x - eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum()
    assert analytic.abs() > 1e-6
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-8)
    # the encoder logits (ADV²'s RTS term) are differentiable too and equal the classifier's
    logits = interpreter.encoder_logits(x)
    torch.testing.assert_close(logits, classifier(x))
    assert torch.autograd.grad(logits[:, 0].sum(), x)[0].abs().sum() > 0
    # without create_graph the map is detached
    assert not interpreter.attribute(x, cls).requires_grad


# ----------------------------------------------------------------------------------
# Objective and training
# ----------------------------------------------------------------------------------
def test_class_margin_and_objective_terms_against_hand_computation(random_resnet20):
    logits = torch.tensor([[1.0, 5.0, 2.0], [4.0, -1.0, 0.5]])
    torch.testing.assert_close(class_margin(logits, torch.tensor([1, 2])), torch.tensor([3.0, -3.5]))
    # an all-ones mask keeps the image: phi(x, 1) = x, phi(x, 0) = the alternative
    x = torch.rand(4, 3, 32, 32)
    cls = random_resnet20.predict(x)
    objective = RTSObjective()
    terms = objective_terms(random_resnet20, x, torch.ones(4, 8, 8), cls, objective, torch.Generator().manual_seed(0))
    margin = class_margin(random_resnet20(x), cls)
    torch.testing.assert_close(terms["preserver"], torch.relu(objective.margin - margin).mean())
    torch.testing.assert_close(terms["area"], torch.tensor((1 + objective.area_offset) ** objective.area_power))
    assert float(terms["smoothness"]) == 0
    expected = terms["destroyer"] + 8 * terms["area"] + 0.3 * terms["preserver"]
    torch.testing.assert_close(terms["total"], expected)


def test_training_lowers_the_objective_on_a_tiny_batch(resnet20, lossless):
    images, labels = lossless[0][:8], lossless[1][:8]
    objective = RTSObjective()

    def evaluate(masker):
        with torch.no_grad():
            masks = masker(images, labels).mask
            return float(objective_terms(resnet20, images, masks, labels, objective, torch.Generator().manual_seed(5))["total"])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        before = evaluate(RTSMasker(resnet20))  # train_rts's initial state for seed 0
    grads_before = [None if p.grad is None else p.grad.clone() for p in resnet20.parameters()]
    trained = train_rts(
        resnet20, images, labels, epochs=8, selector_epochs=1, batch_size=8, lr=1e-2, seed=0, progress=False, fake_label_prob=0
    )
    after = evaluate(trained)
    assert after < 0.85 * before
    decoder_losses = [h["total"] for h in trained.history if h["phase"] == "decoder"]
    assert decoder_losses[-1] < decoder_losses[0]
    assert [h["phase"] for h in trained.history] == ["selector"] + ["decoder"] * 8
    for p, g in zip(resnet20.parameters(), grads_before, strict=True):  # the frozen encoder's .grad is never touched
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_training_rejects_bad_data(resnet20):
    with pytest.raises(UserError, match="one label per image"):
        train_rts(resnet20, torch.rand(4, 3, 32, 32), torch.zeros(3), epochs=1, progress=False)
    with pytest.raises(UserError, match="takes 32 px"):
        train_rts(resnet20, torch.rand(4, 3, 64, 64), torch.zeros(4), epochs=1, progress=False)
    with pytest.raises(UserError, match=r"\[0, 9\]"):
        train_rts(resnet20, torch.rand(4, 3, 32, 32), torch.full((4,), 10), epochs=1, progress=False)


# ----------------------------------------------------------------------------------
# Checkpoints and the interpreter
# ----------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_maps(resnet20, lossless, tiny_masker, tmp_path):
    images = lossless[0]
    path = save_rts(tiny_masker, tmp_path / "rts.safetensors")
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["model"] == "cifar_resnet20" and meta["config"]["num_classes"] == 10
    loaded = load_rts(resnet20, path)
    with torch.no_grad():
        assert torch.equal(loaded(images).mask, tiny_masker(images).mask)
    assert loaded.history == tiny_masker.history
    from_checkpoint = create_interpreter("rts", resnet20, checkpoint=str(path))
    assert torch.equal(from_checkpoint.attribute(images), RTSInterpreter(resnet20, masker=tiny_masker).attribute(images))


def test_loading_for_the_wrong_classifier_or_a_broken_checkpoint_raises(resnet20, random_resnet20, tiny_masker, tmp_path):
    path = save_rts(tiny_masker, tmp_path / "rts.safetensors")
    with pytest.raises(UserError, match="trained for model 'cifar_resnet20', not 'embedded_cnn'"):
        load_rts(random_embedded(0), path)
    with pytest.raises(UserError, match="other weights"):
        load_rts(random_resnet20, path)
    with pytest.raises(UserError, match="does not exist"):
        load_rts(resnet20, tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match=r"\.safetensors"):
        save_rts(tiny_masker, tmp_path / "rts.pt")
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="does not match its sidecar"):
        load_rts(resnet20, path)
    sidecar_path(path).unlink()
    with pytest.raises(UserError, match="no sidecar"):
        load_rts(resnet20, path)
    with pytest.raises(UserError, match="either a masker or a checkpoint"):
        RTSInterpreter(resnet20, masker=tiny_masker, checkpoint=str(path))


def test_interpreter_explains_the_predicted_class_by_default(resnet20, lossless, tiny_masker):
    images = lossless[0]
    interpreter = create_interpreter("rts", resnet20, masker=tiny_masker)
    maps, logits = interpreter.attribute_and_logits(images)
    predicted = resnet20.predict(images)
    torch.testing.assert_close(maps, interpreter.attribute(images, predicted))
    torch.testing.assert_close(logits, resnet20(images))
    assert interpreter.map_size(32) == 8
    with pytest.raises(UserError, match="built for 'cifar_resnet20', not 'embedded_cnn'"):
        RTSInterpreter(random_embedded(0), masker=tiny_masker)


# ----------------------------------------------------------------------------------
# Embedded cache
# ----------------------------------------------------------------------------------
def test_embedded_masker_is_trained_once_cached_and_retrained_for_other_weights(monkeypatch):
    from idls.data.synthetic import make_synthetic

    calls = []

    def fast_training(classifier, settings=rts_training.EMBEDDED_RTS, *, progress=False):
        calls.append(classifier)
        data = make_synthetic(8, seed=0)
        return train_rts(classifier, data.images, data.labels, epochs=1, batch_size=8, seed=0, progress=False)

    monkeypatch.setattr(rts_training, "train_embedded_rts", fast_training)
    classifier = random_embedded(0)
    first = rts_training.embedded_rts_masker(classifier)
    assert rts_training.embedded_rts_path().is_file() and sidecar_path(rts_training.embedded_rts_path()).is_file()
    interpreter = create_interpreter("rts", classifier)  # uses the cache, trains nothing
    assert len(calls) == 1
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(interpreter.attribute(x), RTSInterpreter(classifier, masker=first).attribute(x))
    rts_training.embedded_rts_masker(random_embedded(1))  # other weights: retrain, not a stale load
    assert len(calls) == 2
    with pytest.raises(UserError, match="cached RTS masker is for the embedded model, not 'cifar_resnet20'"):
        rts_training.embedded_rts_masker(create_model("cifar_resnet20"))


def test_trained_embedded_rts_localises_objects():
    """The shipped embedded masker (trained for real, idls.pretrained) localises the objects of the test split."""
    from idls.data.synthetic import TEST_SEED, make_synthetic
    from idls.metrics import localization_iou, pointing_game

    classifier = create_model("embedded_cnn", weights="pretrained")
    masker = rts_training.embedded_rts_masker(classifier)
    test = make_synthetic(240, TEST_SEED)
    with torch.no_grad():
        out = masker(test.images)
        predicted = out.logits.argmax(1)
        wrong = (predicted + torch.randint(1, classifier.num_classes, predicted.shape)) % classifier.num_classes
        wrong_area = masker(test.images, wrong).mask.mean()
    random_maps = torch.rand(out.mask.shape, generator=torch.Generator().manual_seed(0))
    iou = localization_iou(out.mask, test.masks, k=0.2).mean()
    random_iou = localization_iou(random_maps, test.masks, k=0.2).mean()
    pointing = pointing_game(out.mask, test.masks).float().mean()
    random_pointing = pointing_game(random_maps, test.masks).float().mean()
    assert iou > random_iou + 0.2
    assert pointing > random_pointing + 0.5
    assert wrong_area < 0.5 * out.mask.mean()  # the class selector closes the gate for a wrong class
    reloaded = rts_training.embedded_rts_masker(classifier)
    with torch.no_grad():
        assert torch.equal(reloaded(test.images[:8]).mask, masker(test.images[:8]).mask)
