"""Contracts every registered attack keeps, parametrised over the registry (a new attack gets them for free).

- the output is in [0, 1] and inside the attack's declared threat set;
- the same seed gives identical output;
- it works on a batch of 1 and of 7, and a sample's result does not depend on the others in its batch;
- joint attacks run on every framework the registry offers and against every interpreter.

Runs on a seeded, randomly initialised CIFAR ResNet-20 (no ../shared needed), with few steps.
"""

from __future__ import annotations

import pytest
import torch

from idls.attacks import ATTACKS, create_attack, list_attacks, list_frameworks
from idls.attacks.base import attack_options
from idls.attacks.threats import LpBall
from idls.errors import UserError
from idls.interpreters import create_interpreter, interpreter_class, list_interpreters

#: few iterations for every option an attack (or one of its base classes) accepts
FAST = {"steps": 3, "warm_start": 2, "search_steps": 1, "mask_reset_every": 2, "mask_bisection_steps": 3,
        "epochs": 1, "batch_size": 4, "max_passes": 1, "deepfool_steps": 2, "width": 4}


def accepted_options(name: str) -> set[str]:
    """The options an attack declares (its ``Options`` fields)."""
    return set(attack_options(ATTACKS.get(name)))


def is_joint(name: str) -> bool:
    """Attacks crafted against an interpreter (they take one)."""
    return "interpreter" in accepted_options(name)


def fast_options(name: str, **extra) -> dict:
    accepted = accepted_options(name)
    return {**{k: v for k, v in FAST.items() if k in accepted}, **extra}


PLAIN = [name for name in list_attacks() if not is_joint(name)]
JOINT = [name for name in list_attacks() if is_joint(name)]
#: joint attacks that run on a framework attack's optimiser (ADV² and its variants)
ON_FRAMEWORKS = [name for name in JOINT if "framework" in accepted_options(name)]


@pytest.fixture(scope="module")
def model():
    from tests.model_helpers import seeded_random_resnet20

    return seeded_random_resnet20(0)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(7, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (7,), generator=generator)
    return x, labels


def _build(name: str, model, interpreter: str = "cam", **extra):
    if is_joint(name):
        extra["interpreter"] = create_interpreter(interpreter, model, **_interpreter_options(interpreter, model))
    attack = create_attack(name, **fast_options(name, **extra))
    if attack.needs_fit:  # fitted on other (seeded) images than the attacked ones
        from idls.data import LabeledImages

        generator = torch.Generator().manual_seed(7)
        images, labels = torch.rand(12, 3, 32, 32, generator=generator), torch.randint(0, 10, (12,), generator=generator)
        attack.fit(model, LabeledImages(images, labels, [f"fit/{i}" for i in range(12)]))
    return attack


def _interpreter_options(name: str, model) -> dict:
    options = {"ig": {"steps": 3}, "mask": {"iterations": 4}}.get(name, {})
    if name == "rts":
        from idls.interpreters.rts import RTSMasker

        torch.manual_seed(0)
        options = {"masker": RTSMasker(model)}
    return options


def _check_output(attack, x, result):
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
    assert bool(attack.threat().contains(x, result.x_adv).all())
    assert result.success.shape == result.pred.shape == result.confidence.shape == (x.shape[0],)
    assert result.seconds > 0 and result.cpu_seconds is not None and result.cpu_seconds > 0  # both clocks ran


@pytest.mark.parametrize("name", list_attacks())
def test_output_inside_threat_set_and_box(name, model, batch):
    x, labels = batch
    attack = _build(name, model)
    _check_output(attack, x, attack.run(model, x, labels))


@pytest.mark.parametrize("name", list_attacks())
def test_same_seed_same_output(name, model, batch):
    x, labels = batch[0][:3], batch[1][:3]
    first = _build(name, model, seed=3).run(model, x, labels)
    second = _build(name, model, seed=3).run(model, x, labels)
    assert torch.equal(first.x_adv, second.x_adv) and torch.equal(first.target, second.target)


@pytest.mark.parametrize("name", list_attacks())
def test_batch_of_one_equals_its_row_in_a_batch_of_seven(name, model, batch):
    x, labels = batch
    targets = (labels + 1) % 10
    attack = _build(name, model)
    whole = attack.run(model, x, labels, targets if attack.mode.value != "untargeted" else None)
    for row in (0, 4):
        single = _build(name, model).run(model, x[row:row + 1], labels[row:row + 1],
                                         targets[row:row + 1] if attack.mode.value != "untargeted" else None)
        _check_output(attack, x[row:row + 1], single)
        assert torch.allclose(single.x_adv[0], whole.x_adv[row], atol=2e-5), f"{name}: row {row} depends on the batch"


@pytest.mark.parametrize("name", PLAIN)
def test_untargeted_mode_moves_away_from_the_label(name, model, batch):
    x, labels = batch
    attack = _build(name, model, mode="untargeted")
    result = attack.run(model, x, labels)
    assert torch.equal(result.target, labels) and not result.targeted
    assert torch.equal(result.success, result.pred != labels)


@pytest.mark.parametrize("joint", ON_FRAMEWORKS)
@pytest.mark.parametrize("framework", list_frameworks())
def test_joint_attacks_run_on_every_framework(joint, framework, model, batch):
    x, labels = batch[0][:3], batch[1][:3]
    attack = _build(joint, model, framework=framework)
    assert attack.framework_class is ATTACKS.get(framework)
    _check_output(attack, x, attack.run(model, x, labels))


@pytest.mark.parametrize("interpreter", list_interpreters())
def test_adv2_runs_against_every_interpreter(interpreter, model, batch):
    x, labels = batch[0][:2], batch[1][:2]
    attack = _build("adv2", model, interpreter=interpreter)
    result = attack.run(model, x, labels)
    _check_output(attack, x, result)
    assert result.extras["adv_map"].shape == result.extras["target_map"].shape
    assert interpreter_class(interpreter).family is not None


def test_a_framework_must_be_registered_and_declare_a_table(model):
    with pytest.raises(UserError, match="unknown attack framework 'fgsm'"):
        create_attack("adv2", interpreter="cam", framework="fgsm")
    with pytest.raises(UserError, match="no epsilon ball"):
        create_attack("adv2", interpreter="cam", framework="stadv", epsilon=0.1)


def test_run_refuses_an_attack_that_leaves_its_threat_set(model, batch):
    """The final re-check of Attack.run: an optimiser bug cannot hand back images outside the budget."""
    x, labels = batch[0][:2], batch[1][:2]
    attack = create_attack("pgd", steps=2)
    original = type(attack)._perturb

    def escaping(self, classifier, x, labels, targets):
        outcome = original(self, classifier, x, labels, targets)
        outcome.x_adv = (x + 2 * self.epsilon).clamp(0, 1)
        return outcome

    attack._perturb = escaping.__get__(attack)
    with pytest.raises(RuntimeError, match="outside its threat set"):
        attack.run(model, x, labels)


def test_lp_ball_membership():
    x = torch.full((2, 3, 4, 4), 0.5)
    inside = x.clone()
    inside[0, 0, 0, 0] += 8 / 255
    outside = x.clone()
    outside[1, 1, 1, 1] += 9 / 255
    ball = LpBall("linf", 8 / 255)
    assert ball.contains(x, torch.stack([inside[0], outside[1]])).tolist() == [True, False]
    assert not bool(LpBall("l2", 0.01).contains(x, x + 0.01).any())
    assert not bool(ball.contains(x, x + 1.0).any())  # out of the pixel box


@pytest.mark.parametrize("interpreter", [n for n in list_interpreters() if not interpreter_class(n).map_is_optimised])
def test_joint_forward_returns_encoder_logits_exactly_when_declared(interpreter, model, batch):
    """``has_encoder`` is the capability the generative attacks read instead of asking for RTS by name."""
    x = batch[0][:2].clone().requires_grad_(True)
    built = create_interpreter(interpreter, model, **_interpreter_options(interpreter, model)).for_joint_attack()
    out = built.joint_forward(x, None)
    assert (out.encoder_logits is not None) == interpreter_class(interpreter).has_encoder
    assert out.maps.shape[0] == 2 and out.logits.shape == (2, 10)
