"""MI-FGSM (Dong et al. 2018): the momentum rule against a hand-written loop, and its place in the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from idls.attacks import create_attack, list_frameworks
from idls.attacks.mifgsm import MIFGSM, Momentum
from idls.attacks.pgd import project
from idls.errors import UserError
from idls.models import create_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("cifar_resnet20").eval()


def reference_mifgsm(model, x, targets, epsilon, alpha, steps, decay):
    """Algorithm 1 of Dong et al. written out directly (targeted: descend the target's cross-entropy)."""
    g = torch.zeros_like(x)
    x_adv = x.clone()
    trajectory = []
    for _ in range(steps):
        x_req = x_adv.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x_req), targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_req)
        g = decay * g + grad / grad.abs().sum(dim=(1, 2, 3), keepdim=True)
        x_adv = torch.clamp(torch.min(torch.max(x_adv - alpha * g.sign(), x - epsilon), x + epsilon), 0, 1)
        trajectory.append(x_adv)
    return trajectory


def test_momentum_steps_match_the_papers_algorithm(model):
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 32, 32, generator=generator)
    targets = torch.tensor([1, 5, 7])
    epsilon, steps = 8 / 255, 4
    expected = reference_mifgsm(model, x, targets, epsilon, epsilon / steps, steps, decay=1.0)

    seen = []
    rule = Momentum(1.0)

    def recording_rule(grad, index):
        direction = rule(grad, index)
        seen.append(direction)
        return direction

    attack = MIFGSM(steps=steps, epsilon=epsilon)
    attack.step_rule = lambda: recording_rule
    attack.run(model, x, torch.tensor([0, 0, 0]), targets)
    x_adv = x.clone()
    for direction, reference in zip(seen, expected, strict=True):
        x_adv = project(x_adv - epsilon / steps * direction, x, epsilon, "linf")
        assert torch.allclose(x_adv, reference, atol=1e-6)
    assert len(seen) == steps


def test_zero_decay_is_pgd_with_the_same_steps(model):
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 32, 32, generator=generator)
    labels = torch.tensor([0, 1, 2, 3])
    plain = create_attack("pgd", steps=5, step_size=2 / 255).run(model, x, labels)
    momentum_free = create_attack("mifgsm", steps=5, step_size=2 / 255, decay=0.0).run(model, x, labels)
    assert torch.equal(plain.x_adv, momentum_free.x_adv)


def test_momentum_rule_keeps_rows_apart():
    """Active-row updates (early stop) touch only those rows' momentum."""
    rule = Momentum(0.5)
    grad = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(4))
    rule(grad, torch.arange(4))
    before = rule.velocity.clone()
    rule(grad[[1, 3]], torch.tensor([1, 3]))
    assert torch.equal(rule.velocity[[0, 2]], before[[0, 2]])
    expected = 0.5 * before[[1, 3]] + grad[[1, 3]] / grad[[1, 3]].abs().sum(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(rule.velocity[[1, 3]], expected)


def test_defaults_follow_the_paper_and_options_are_checked():
    attack = create_attack("mifgsm")
    assert attack.steps == 10 and attack.step_size == pytest.approx(attack.epsilon / 10) and attack.decay == 1.0
    assert create_attack("mifgsm", norm="l2", epsilon=0.5, steps=5).step_size == pytest.approx(0.1)
    with pytest.raises(UserError, match="decay must be >= 0"):
        create_attack("mifgsm", decay=-1)
    with pytest.raises(UserError, match="bad option for attack 'mifgsm'"):
        create_attack("mifgsm", momentum=0.9)


def test_mifgsm_is_a_joint_framework_and_changes_the_joint_steps(model):
    assert "mifgsm" in list_frameworks()
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 32, 32, generator=generator)
    labels = torch.tensor([3, 8])
    options = dict(interpreter="cam", steps=4, warm_start=3)
    on_pgd = create_attack("adv2", framework="pgd", **options).run(model, x, labels)
    on_mifgsm = create_attack("adv2", framework="mifgsm", **options).run(model, x, labels)
    assert not torch.equal(on_pgd.x_adv, on_mifgsm.x_adv)
    assert float((on_mifgsm.x_adv - x).abs().max()) <= 8 / 255 + 1e-6
