"""The defence seam: input transforms, BPDA, and ``defend`` attacked by every registered attack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idls.attacks import ATTACKS, create_attack, list_attacks
from idls.attacks.base import attack_options
from idls.attacks.universal import UniversalAttack
from idls.data import LabeledImages, make_synthetic
from idls.defenses import (
    BitDepth,
    InputTransform,
    bpda,
    create_defense,
    defend,
    list_defenses,
)
from idls.errors import UserError
from idls.interpreters import create_interpreter


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _needs_interpreter(name: str) -> bool:
    """Joint attacks: their options include ``interpreter``."""
    return "interpreter" in attack_options(ATTACKS.get(name))


# -- transforms --------------------------------------------------------------------------------
def test_registry_builds_bit_depth():
    assert "bit-depth" in list_defenses()
    transform = create_defense("bit-depth", bits=4)
    assert isinstance(transform, BitDepth) and transform.describe() == "bit-depth(4)"
    assert not BitDepth.differentiable


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_depth_equals_numpy_oracle(bits):
    x = torch.cat([_images(3, seed=bits), torch.tensor([0.0, 1.0, 0.5, 1 / 3]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
                   .repeat(1, 1, 16, 16)])
    levels = 2**bits - 1
    expected = np.round(x.numpy() * levels) / levels
    out = BitDepth(bits)(x)
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), expected)
    assert len(torch.unique(out)) <= levels + 1
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, True, "4"])
def test_bit_depth_rejects_bad_bits(bits):
    with pytest.raises(UserError, match="bits as an integer from 1 to 8"):
        BitDepth(bits)


def test_unknown_defense_and_bad_option_are_user_errors():
    with pytest.raises(UserError, match="unknown defence 'blur'"):
        create_defense("blur")
    with pytest.raises(UserError, match="bad option for defence 'bit-depth'"):
        create_defense("bit-depth", levels=4)


def test_bpda_backward_is_identity():
    x = _images(2, seed=1).requires_grad_(True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (grad_bpda,) = torch.autograd.grad((BitDepth(3)(x) * weights).sum(), x)
    (grad_identity,) = torch.autograd.grad((x * weights).sum(), x)
    torch.testing.assert_close(grad_bpda, grad_identity, rtol=0, atol=0)
    # the plain rounding has zero gradient: BPDA is what makes gradient attacks see through it
    (grad_plain,) = torch.autograd.grad((BitDepth(3).transform(x) * weights).sum(), x)
    assert float(grad_plain.abs().max()) == 0


def test_bpda_forward_is_the_transform_and_double_backward_works():
    x = _images(1, seed=3).requires_grad_(True)
    y = bpda(lambda t: t.clamp(0.2, 0.8), x)
    torch.testing.assert_close(y, x.detach().clamp(0.2, 0.8), rtol=0, atol=0)
    (grad,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    torch.testing.assert_close(second, torch.full_like(x, 2.0))  # d/dx of 2*bpda(x) through the identity


# -- the defended classifier -----------------------------------------------------------------------
@pytest.fixture()
def defended(random_resnet20):
    return defend(random_resnet20, BitDepth(4))


def test_defended_logits_and_features_equal_classifier_of_transformed(random_resnet20, defended):
    x = _images(3, seed=4)
    squeezed = BitDepth(4).transform(x)
    with torch.no_grad():
        torch.testing.assert_close(defended(x), random_resnet20(squeezed), rtol=0, atol=0)
        torch.testing.assert_close(defended.features(x), random_resnet20.features(squeezed), rtol=0, atol=0)
        features, logits = defended.features_and_logits(x)
        torch.testing.assert_close(features, random_resnet20.features(squeezed), rtol=0, atol=0)
        torch.testing.assert_close(logits, random_resnet20(squeezed), rtol=0, atol=0)
    assert torch.equal(defended.predict(x), random_resnet20.predict(squeezed))


def test_defend_shares_weights_and_leaves_the_original_untouched(random_resnet20):
    x = _images(2, seed=5)
    with torch.no_grad():
        before = random_resnet20(x).clone()
    info_before = random_resnet20.info
    wrapped = defend(random_resnet20, BitDepth(2))
    assert random_resnet20.input_transform is None
    assert random_resnet20.info is info_before and "defense" not in random_resnet20.info.extra
    with torch.no_grad():
        torch.testing.assert_close(random_resnet20(x), before, rtol=0, atol=0)
        assert not torch.equal(wrapped(x), before)
    assert wrapped.net is random_resnet20.net
    own = {id(p) for p in random_resnet20.parameters()}
    assert {id(p) for p in wrapped.parameters()} == own
    assert not wrapped.training and not wrapped.input_transform.training
    assert wrapped.info.name == random_resnet20.info.name
    assert wrapped.info.extra["defense"] == "bit-depth(2)"
    assert "input_transform" in dict(wrapped.named_modules()) and "input_transform" not in dict(random_resnet20.named_modules())


def test_defences_chain(random_resnet20):
    twice = defend(defend(random_resnet20, BitDepth(5)), BitDepth(2))
    x = _images(2, seed=6)
    assert twice.info.extra["defense"] == "bit-depth(5) + bit-depth(2)"
    with torch.no_grad():
        torch.testing.assert_close(twice(x), random_resnet20(BitDepth(2)(BitDepth(5)(x))), rtol=0, atol=0)


def test_defend_rejects_non_modules(random_resnet20):
    with pytest.raises(UserError, match="a defence must be an nn.Module"):
        defend(random_resnet20, "bit-depth")


def test_custom_differentiable_transform(random_resnet20):
    class Darken(InputTransform):
        name = "darken"

        def transform(self, x):
            return x * 0.5

    x = _images(1, seed=7).requires_grad_(True)
    wrapped = defend(random_resnet20, Darken())
    wrapped(x).sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    random_resnet20(reference * 0.5).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    assert wrapped.info.extra["defense"] == "darken"


@pytest.mark.parametrize("interpreter", ["cam", "gradcam"])
def test_interpreters_explain_the_defended_system(random_resnet20, defended, interpreter):
    x = _images(2, seed=8)
    maps = create_interpreter(interpreter, defended).attribute(x)
    reference = create_interpreter(interpreter, random_resnet20).attribute(BitDepth(4).transform(x))
    torch.testing.assert_close(maps, reference)


# -- every attack against a defended classifier -------------------------------------------------
def _tiny_options(name: str) -> dict:
    """Few steps where the attack has a step count; joint attacks explain with CAM."""
    parameters = attack_options(ATTACKS.get(name))
    options: dict = {}
    if _needs_interpreter(name):
        options.update(interpreter="cam", steps=3, warm_start=2)
    elif "steps" in parameters:
        options["steps"] = 3
    if "epochs" in parameters:
        options["epochs"] = 1
    return options


@pytest.mark.parametrize("name", [n for n in list_attacks() if not _needs_interpreter(n)] + ["adv2"])
def test_every_attack_runs_against_a_defended_classifier(defended, name):
    attack = create_attack(name, **_tiny_options(name))
    if isinstance(attack, UniversalAttack):  # fitted first, on images other than the attacked ones
        fit = make_synthetic(8, 11, size=32)
        attack.fit(defended, LabeledImages(fit.images, fit.labels, [f"fit/{i}" for i in range(8)]))
    x, labels = _images(2, seed=9), torch.tensor([3, 7])
    result = attack.run(defended, x, labels)
    assert result.x_adv.shape == x.shape
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    with torch.no_grad():
        assert torch.equal(result.pred, defended(result.x_adv).argmax(1))
