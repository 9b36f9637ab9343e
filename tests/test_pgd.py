"""The PGD engine (best iterate, early stop, constraints), target selection and the PGD attack."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from idls.attacks import (
    ATTACKS,
    PGD,
    TargetMode,
    create_attack,
    least_likely_targets,
    projected_gradient_descent,
    random_targets,
)
from idls.errors import UserError
from idls.optim.denormal import _flushing_denormals

STEP = 0.01


def _load_lossless(directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    rows = list(csv.DictReader(open(directory / "labels.csv")))
    images = [np.asarray(Image.open(directory / r["file"]).convert("RGB")) for r in rows]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor([int(r["label"]) for r in rows])


@pytest.fixture(scope="module")
def cifar_batch(cifar_lossless_dir):
    return _load_lossless(cifar_lossless_dir)


def _mean_shift(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).mean(1)


def _rising_loss(it):
    """Loss -mean(x): its sign gradient is -1 everywhere, so each step adds STEP to every pixel."""
    return -it.x.flatten(1).mean(1)


# -- targets --------------------------------------------------------------------------------
def test_random_targets_reproducible_wrong_uniform_and_batch_independent():
    labels = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0))
    t1 = random_targets(labels, 10, seed=7)
    assert torch.equal(t1, random_targets(labels, 10, seed=7))
    assert not torch.equal(t1, random_targets(labels, 10, seed=8))
    assert not bool((t1 == labels).any())
    offsets = torch.bincount((t1 - labels) % 10, minlength=10)
    assert offsets[0] == 0 and offsets[1:].min() > 5000 / 9 * 0.85 and offsets[1:].max() < 5000 / 9 * 1.15
    indices = torch.arange(5000)
    full = random_targets(labels, 10, seed=7, indices=indices)
    part = random_targets(labels[1234:1300], 10, seed=7, indices=indices[1234:1300])
    assert torch.equal(full[1234:1300], part)


def test_least_likely_and_mode_parsing():
    logits = torch.tensor([[0.0, -1.0, 2.0], [5.0, 4.0, 3.0]])
    assert least_likely_targets(logits).tolist() == [1, 2]
    assert TargetMode.parse("least-likely") is TargetMode.LEAST_LIKELY
    assert not TargetMode.parse("untargeted").is_targeted
    with pytest.raises(UserError):
        TargetMode.parse("sideways")


# -- engine: best iterate, early stop ---------------------------------------------------
def test_best_iterate_is_the_minimum_score_not_the_first_or_last():
    x = torch.full((3, 1, 4, 4), 0.2)
    wanted = torch.tensor([3, 7, 5])  # per-sample iteration where the score is minimal

    def score_fn(it, ev):  # |shift - wanted * STEP|: decreases until `wanted`, then increases
        return (_mean_shift(it.x, x[it.index]) - it.select(wanted).float() * STEP).abs()

    out = projected_gradient_descent(
        x, _rising_loss, success_fn=lambda it, ev: torch.ones(it.index.numel(), dtype=torch.bool),
        score_fn=score_fn, epsilon=0.2, step_size=STEP, steps=10,
    )
    assert out.iterations_run == 10
    assert torch.allclose(_mean_shift(out.x_adv, x), wanted.float() * STEP, atol=1e-6)
    assert torch.all(out.score < 1e-6) and out.success.all()
    assert out.iterations_to_success.tolist() == [0, 0, 0]


def test_best_iterate_only_among_successes_and_last_iterate_when_never():
    x = torch.full((2, 1, 3, 3), 0.5)
    succeeds_from = torch.tensor([4, 100])  # sample 1 never succeeds

    def success_fn(it, ev):
        return torch.full_like(it.index, it.iteration) >= it.select(succeeds_from)

    # default score = loss = -mean(x): the lowest loss among successes is the last iterate
    out = projected_gradient_descent(x, _rising_loss, success_fn=success_fn, epsilon=0.5, step_size=STEP, steps=8)
    assert torch.allclose(_mean_shift(out.x_adv, x), torch.full((2,), 8 * STEP), atol=1e-6)
    assert out.success.tolist() == [True, False]
    assert out.iterations_to_success.tolist() == [4, -1]
    assert torch.isinf(out.score[1]) and torch.isfinite(out.score[0])


def test_early_stop_freezes_done_samples_and_ends_the_loop():
    x = torch.full((3, 1, 2, 2), 0.3)
    first = torch.tensor([2, 5, 3])
    active_sizes: list[int] = []

    def loss_fn(it):
        active_sizes.append(it.index.numel())
        return _rising_loss(it)

    def success_fn(it, ev):
        return torch.full_like(it.index, it.iteration) >= it.select(first)

    out = projected_gradient_descent(
        x, loss_fn, success_fn=success_fn, epsilon=0.5, step_size=STEP, steps=50, early_stop=True
    )
    assert out.iterations_run == 5  # all done after the 5th step's evaluation
    assert out.iterations_to_success.tolist() == first.tolist()
    assert torch.allclose(_mean_shift(out.x_adv, x), first.float() * STEP, atol=1e-6)
    assert active_sizes == [3, 3, 3, 2, 1, 1]  # done samples are no longer evaluated
    kept = projected_gradient_descent(
        x, _rising_loss, success_fn=success_fn, epsilon=0.5, step_size=STEP, steps=50, early_stop=True, patience=2
    )
    # default score (the loss) keeps improving, so patience never runs out before the budget
    assert kept.iterations_run == 50


def test_patience_waits_for_the_score_to_stall():
    x = torch.full((1, 1, 2, 2), 0.3)

    def score_fn(it, ev):
        return (_mean_shift(it.x, x[it.index]) - 4 * STEP).abs()  # best at iteration 4

    out = projected_gradient_descent(
        x, _rising_loss, success_fn=lambda it, ev: torch.ones(1, dtype=torch.bool), score_fn=score_fn,
        epsilon=0.5, step_size=STEP, steps=50, early_stop=True, patience=3,
    )
    assert out.iterations_run == 7 and torch.allclose(_mean_shift(out.x_adv, x), torch.tensor([4 * STEP]))


# -- engine: constraints, steps, hooks --------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_iterate_stays_in_the_ball_and_the_box(norm):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 8, 8, generator=g)
    x[0] = 0.0  # on the box boundary
    weights = torch.randn(x.shape, generator=g)
    eps = 0.05 if norm == "linf" else 0.3
    seen: list[torch.Tensor] = []

    def loss_fn(it):
        seen.append((it.x.detach(), it.index))
        return (torch.sin(30 * it.x) * it.select(weights)).flatten(1).sum(1)

    out = projected_gradient_descent(
        x, loss_fn, success_fn=lambda it, ev: torch.zeros(it.index.numel(), dtype=torch.bool),
        epsilon=eps, step_size=eps / 3, steps=12, norm=norm, random_start=True, generator=torch.Generator().manual_seed(0),
    )
    for xi, index in seen + [(out.x_adv, torch.arange(4))]:
        delta = (xi - x[index]).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert torch.all(size <= eps + 1e-6)
        assert xi.min() >= 0 and xi.max() <= 1
    assert float((seen[0][0] - x).abs().max()) > 0  # the random start moved away from x
    assert float(size.max()) > 0.9 * eps  # the attack uses its budget


def test_l2_step_length_step_weights_and_per_sample_epsilon():
    x = torch.full((2, 3, 4, 4), 0.5)
    g = torch.Generator().manual_seed(1)
    direction = torch.randn(x.shape, generator=g)
    one = projected_gradient_descent(
        x, lambda it: (it.x * it.select(direction)).flatten(1).sum(1),
        success_fn=lambda it, ev: torch.zeros(it.index.numel(), dtype=torch.bool),
        epsilon=1.0, step_size=0.1, steps=1, norm="l2",
    )
    delta = one.x_adv - x
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.full((2,), 0.1), atol=1e-6)
    expected = -direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.1
    assert torch.allclose(delta, expected, atol=1e-6)

    weights = torch.ones(2, 1, 4, 4)
    weights[:, :, :2] = 0.0  # AdvEdge-style: no step in the top half
    weights[:, :, 2:] = 0.5
    out = projected_gradient_descent(
        x, _rising_loss, success_fn=lambda it, ev: torch.zeros(it.index.numel(), dtype=torch.bool),
        epsilon=torch.tensor([0.02, 0.1]), step_size=STEP, steps=6, step_weights=weights,
    )
    delta = out.x_adv - x
    assert torch.all(delta[:, :, :2] == 0)
    assert torch.allclose(delta[0, :, 2:], torch.full_like(delta[0, :, 2:], 0.02))  # capped by its epsilon
    assert torch.allclose(delta[1, :, 2:], torch.full_like(delta[1, :, 2:], 6 * 0.5 * STEP))


def test_flush_denormal_on_inside_loop_and_restored():
    x = torch.full((1, 1, 2, 2), 0.5)
    states: list[bool] = []

    def loss_fn(it):
        states.append(_flushing_denormals())
        return _rising_loss(it)

    never = lambda it, ev: torch.zeros(it.index.numel(), dtype=torch.bool)  # noqa: E731
    for before in (False, True):
        torch.set_flush_denormal(before)
        try:
            projected_gradient_descent(x, loss_fn, success_fn=never, epsilon=0.1, step_size=STEP, steps=2)
            assert _flushing_denormals() == before
        finally:
            torch.set_flush_denormal(False)
    assert all(states)


def test_engine_rejects_bad_arguments():
    x = torch.rand(2, 3, 4, 4)
    never = lambda it, ev: torch.zeros(it.index.numel(), dtype=torch.bool)  # noqa: E731
    with pytest.raises(UserError):
        projected_gradient_descent(x, _rising_loss, success_fn=never, epsilon=0.1, step_size=0.1, steps=1, norm="l1")
    with pytest.raises(UserError):
        projected_gradient_descent(x, _rising_loss, success_fn=never, epsilon=0.1, step_size=0.1, steps=1,
                                   step_weights=torch.ones(2, 2, 4, 4))


# -- the PGD attack -------------------------------------------------------------------------
def test_registry_and_options():
    assert "pgd" in ATTACKS
    attack = create_attack("pgd", steps=5)
    assert isinstance(attack, PGD) and attack.epsilon == pytest.approx(8 / 255) and attack.step_size == pytest.approx(1 / 255)
    assert create_attack("pgd", norm="l2").step_size == pytest.approx(0.05)
    with pytest.raises(UserError):
        create_attack("pgd", epsilonn=0.1)
    with pytest.raises(UserError):
        create_attack("no_such_attack")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_constraints_on_random_resnet20(random_resnet20, norm):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    attack = PGD(norm=norm, steps=6, random_start=True, early_stop=False, seed=3)
    result = attack.run(random_resnet20, x, labels)
    delta = (result.x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= attack.epsilon + 1e-6) and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.iterations_run == 6 and not bool((result.target == labels).any())
    again = PGD(norm=norm, steps=6, random_start=True, early_stop=False, seed=3).run(random_resnet20, x, labels)
    assert torch.equal(result.x_adv, again.x_adv)  # seeded: identical reruns


def test_pgd_targeted_on_pretrained_resnet20(resnet20, cifar_batch):
    x, labels = cifar_batch
    result = PGD(steps=20, early_stop=True).run(resnet20, x, labels)
    assert result.success_rate >= 0.9
    assert torch.equal(result.target, random_targets(labels, 10, seed=0))
    with torch.no_grad():
        probs = resnet20(result.x_adv).softmax(1)
    assert torch.equal(result.pred, probs.argmax(1))
    assert torch.allclose(result.confidence, probs.gather(1, result.target[:, None])[:, 0], atol=1e-5)
    assert torch.all((result.x_adv - x).abs().amax(dim=(1, 2, 3)) <= 8 / 255 + 1e-6)
    reached = result.iterations_to_success
    assert torch.all((reached >= 1) & (reached <= result.iterations_run))
    assert result.iterations_run == int(reached.max())  # early stop: nothing ran past the last success
    assert result.extras["score"].shape == (len(labels),)


def test_pgd_untargeted_least_likely_and_given_targets(resnet20, cifar_batch):
    x, labels = cifar_batch
    x, labels = x[:10], labels[:10]
    untargeted = PGD(steps=20, mode="untargeted").run(resnet20, x, labels)
    assert not untargeted.targeted and torch.equal(untargeted.target, labels)
    assert untargeted.success_rate >= 0.9 and torch.equal(untargeted.success, untargeted.pred != labels)
    least = PGD(steps=40, mode="least_likely").run(resnet20, x, labels)
    with torch.no_grad():
        assert torch.equal(least.target, resnet20(x).argmin(1))
    assert least.success_rate >= 0.9
    again = PGD(steps=40, mode="least_likely").run(resnet20, x, labels, least.target)  # precomputed targets are kept
    assert torch.equal(again.target, least.target) and torch.equal(again.x_adv, least.x_adv)
    given = (labels + 5) % 10
    assert torch.equal(PGD(steps=20).run(resnet20, x, labels, given).target, given)


def test_pgd_user_errors(random_resnet20):
    x = torch.rand(2, 3, 32, 32)
    labels = torch.tensor([1, 2])
    with pytest.raises(UserError):
        PGD(steps=1).run(random_resnet20, x, labels, targets=labels)  # target == label
    with pytest.raises(UserError):
        PGD(steps=1, mode="untargeted").run(random_resnet20, x, labels, targets=torch.tensor([0, 0]))
    with pytest.raises(UserError):
        PGD(steps=1).run(random_resnet20, x, labels[:1])
    with pytest.raises(UserError):
        PGD(steps=1).run(random_resnet20, x * 255, labels)
    random_resnet20.train()
    try:
        with pytest.raises(UserError):
            PGD(steps=1).run(random_resnet20, x, labels)
    finally:
        random_resnet20.eval()
