"""C&W L2 and StAdv: shared Adam loop, binary search, warping, flow loss, hooks, attacks on ResNet-20."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from idls import metrics
from idls.attacks import ATTACKS, create_attack, random_targets
from idls.attacks.cw import (
    CarliniWagnerL2,
    PerSampleAdam,
    box_bounds,
    carlini_wagner_l2,
    classifier_evaluation,
    from_tanh_space,
    margin,
    margin_loss,
    margin_success,
    to_tanh_space,
    update_constants,
)
from idls.attacks.stadv import StAdv, default_tau, flow_loss, spatial_transform_attack, warp
from idls.data import load_images
from idls.errors import UserError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests are short sequential loops: on a shared 2-core machine a second intra-op
    thread made them 4-7x slower (oversubscription), so run them on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cifar(cifar_lossless_dir):
    data = load_images(str(cifar_lossless_dir), input_size=32, num_classes=10)
    return data.images, data.labels


def _half_mask(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``B x channels x H x W`` weights: 0 in the top half of the image, 1 below."""
    weights = torch.ones(x.shape[0], channels, *x.shape[2:])
    weights[:, :, : x.shape[2] // 2] = 0.0
    return weights


# -- shared pieces ----------------------------------------------------------------------------
def test_margin_loss_and_success_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0], [2.0, 2.0, 0.0]])
    classes = torch.tensor([0, 2, 0])
    assert margin(logits, classes, targeted=True).tolist() == [2.0, -5.0, 0.0]
    assert margin(logits, classes, targeted=False).tolist() == [-2.0, 5.0, 0.0]
    assert margin_loss(logits, classes, targeted=True, kappa=1.0).tolist() == [2.0, -1.0, 0.0]
    assert margin_success(logits, classes, targeted=True).tolist() == [False, True, False]  # a tie is no success
    assert margin_success(logits, classes, targeted=True, kappa=6.0).tolist() == [False, False, False]
    assert margin_success(logits, classes, targeted=False).tolist() == [True, False, False]


def test_per_sample_adam_matches_torch_adam_and_touches_only_given_rows():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, 5, generator=g)
    grads = [torch.randn(4, 3, 5, generator=g) for _ in range(6)]
    param = start.clone().requires_grad_(True)
    reference = torch.optim.Adam([param], lr=0.05)
    ours, adam = start.clone(), PerSampleAdam(start, lr=0.05)
    everyone = torch.arange(4)
    for grad in grads:
        param.grad = grad.clone()
        reference.step()
        ours = ours - adam.step(everyone, grad)
    assert torch.allclose(ours, param.detach(), atol=1e-5)  # float rounding; a different rule errs by ~1e-2

    partial, adam = start.clone(), PerSampleAdam(start, lr=0.05)
    rows = torch.tensor([1, 3])
    for grad in grads[:3]:
        partial[rows] = partial[rows] - adam.step(rows, grad[rows])
    assert torch.equal(partial[[0, 2]], start[[0, 2]]) and adam.count.tolist() == [0, 3, 0, 3]
    first = adam.step(torch.tensor([0]), grads[3][[0]])  # a fresh row's first step is ~lr * sign(grad)
    assert torch.allclose(first, 0.05 * grads[3][[0]].sign(), atol=1e-5)


def test_binary_search_raises_c_after_failures_and_lowers_it_after_successes():
    const = torch.tensor([1.0, 1.0, 1.0, 4.0])
    lower = torch.tensor([0.0, 0.0, 0.5, 2.0])
    upper = torch.tensor([math.inf, 2.0, math.inf, 8.0])
    succeeded = torch.tensor([False, False, True, True])
    const, lower, upper = update_constants(const, lower, upper, succeeded)
    assert const.tolist() == [10.0, 1.5, 0.75, 3.0]
    assert lower.tolist() == [1.0, 1.0, 0.5, 2.0] and upper.tolist() == [math.inf, 2.0, 1.0, 4.0]


@pytest.mark.parametrize("epsilon", [None, 4 / 255])
def test_tanh_box_round_trip_and_range(epsilon):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 6, generator=g)
    x[0, 0] = 0.0
    x[1, 0] = 1.0
    lo, hi = box_bounds(x, epsilon)
    assert torch.allclose(from_tanh_space(to_tanh_space(x, lo, hi), lo, hi), x, atol=1e-6)
    wild = from_tanh_space(torch.randn(x.shape, generator=g) * 50, lo, hi)
    assert torch.all(wild >= lo) and torch.all(wild <= hi) and wild.min() >= 0 and wild.max() <= 1
    if epsilon is not None:
        assert torch.all((wild - x).abs() <= epsilon + 1e-7)


# -- C&W ----------------------------------------------------------------------------------------
def test_cw_targeted_on_pretrained_resnet20(resnet20, cifar):
    x, labels = cifar
    result = CarliniWagnerL2(steps=30, search_steps=3).run(resnet20, x, labels)
    assert result.success_rate >= 0.95  # measured 1.0 (20 images)
    assert torch.equal(result.target, random_targets(labels, 10, seed=0))
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(result.success, torch.isfinite(result.extras["score"]))
    l2 = metrics.l2_norm(x, result.x_adv)
    ok = result.success
    assert torch.allclose(result.extras["score"][ok], l2[ok], atol=1e-4)  # the score of the chosen iterate is its L2
    assert float(l2[ok].mean()) < 0.5  # measured 0.20; an 8/255 L_inf PGD perturbation has L2 up to 1.74
    c, round_success = result.extras["c"].T, result.extras["round_success"].T  # rounds x images
    assert c.shape == round_success.shape == (3, len(labels))
    assert torch.all(torch.where(round_success[:-1], c[1:] < c[:-1], c[1:] > c[:-1]))
    assert bool(round_success[0].all()) and not bool(round_success[-1].all())  # the search reached failing c
    reached = result.iterations_to_success
    assert torch.all((reached >= 1) & (reached <= result.iterations_run))


def test_cw_obeys_the_linf_cap(resnet20, cifar):
    x, labels = cifar
    eps = 2 / 255  # below the ~5/255 that uncapped C&W uses here, so the cap binds
    result = CarliniWagnerL2(steps=30, search_steps=2, epsilon=eps).run(resnet20, x, labels)
    linf = metrics.linf_norm(x, result.x_adv)
    assert torch.all(linf <= eps + 1e-6) and float(linf.max()) > 0.9 * eps
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.success_rate >= 0.7  # measured 0.90


def test_cw_untargeted(resnet20, cifar):
    x, labels = cifar
    attack = create_attack("cw", steps=20, search_steps=2, mode="untargeted", progress=True)
    result = attack.run(resnet20, x[:10], labels[:10])
    assert not result.targeted and torch.equal(result.target, labels[:10])
    assert result.success_rate >= 0.9 and torch.equal(result.success, result.pred != labels[:10])


def test_cw_best_iterate_is_the_lowest_extra_score_among_recorded_successes(resnet20, cifar):
    x, labels = cifar
    x, labels = x[:4], labels[:4]
    targets = (labels + 3) % 10
    reference = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    plain = classifier_evaluation(resnet20)

    def evaluate(it):
        evaluation = plain(it)
        seen.append((it.index.clone(), it.x.detach().clone(), evaluation.logits.detach().clone()))
        return evaluation

    def score_fn(it, evaluation):  # an arbitrary score: distance to an unrelated image
        return (it.x - it.select(reference)).flatten(1).norm(dim=1)

    out = carlini_wagner_l2(x, evaluate, targets, targeted=True, steps=12, search_steps=2, initial_const=1.0,
                            score_fn=score_fn)
    for i in range(4):  # independent oracle: scan every recorded iterate of sample i
        best, best_score, last = None, math.inf, None
        for index, xs, logits in seen:
            row = (index == i).nonzero().flatten()
            if row.numel() == 0:
                continue
            xi, li = xs[row[0]], logits[row[0]]
            last = xi
            ok = bool(li.argmax() == targets[i]) and bool(li.topk(2).values.diff().abs() > 0)
            score = float((xi - reference[i]).norm())
            if ok and score < best_score:
                best, best_score = xi, score
        expected = best if best is not None else last
        assert torch.equal(out.x_adv[i], expected)
        assert out.score[i] == pytest.approx(best_score, rel=1e-5)
    assert bool(out.success.any())


def test_cw_hooks_zero_weights_and_extra_loss(resnet20, cifar):
    x, labels = cifar
    x, labels = x[:8], labels[:8]
    targets = (labels + 1) % 10
    attack = CarliniWagnerL2(steps=20, search_steps=1, initial_const=0.1)
    plain = attack.optimise(x, classifier_evaluation(resnet20), targets, targeted=True)

    frozen = attack.optimise(x, classifier_evaluation(resnet20), targets, targeted=True,
                             perturbation_weights=torch.zeros(8, 1, 32, 32))
    assert torch.equal(frozen.x_adv, x) and not bool(frozen.success.any())
    half = attack.optimise(x, classifier_evaluation(resnet20), targets, targeted=True,
                           perturbation_weights=_half_mask(x, 3))
    delta = half.x_adv - x
    assert torch.all(delta[:, :, :16] == 0) and float(delta[:, :, 16:].abs().amax()) > 0

    goal = (x + 0.2).clamp(0, 1)  # a known image to pull towards

    def pull(it):  # the joint attacks' pattern: an extra loss and the same quantity as the score
        return 50.0 * (it.x - it.select(goal)).flatten(1).pow(2).sum(1)

    pulled = attack.optimise(x, classifier_evaluation(resnet20, pull), targets, targeted=True,
                             score_fn=lambda it, evaluation: evaluation.loss)
    distance = lambda z: (z - goal).flatten(1).norm(dim=1)  # noqa: E731
    assert torch.all(distance(pulled.x_adv) < 0.8 * distance(plain.x_adv))  # measured 0.58-0.71 after 20 steps


# -- StAdv: warping and flow loss ---------------------------------------------------------------
def test_warp_zero_flow_is_exactly_the_identity():
    x = torch.rand(2, 3, 7, 9)
    assert torch.equal(warp(x, torch.zeros(2, 2, 7, 9)), x)
    big = torch.rand(1, 3, 224, 224)
    assert torch.equal(warp(big, torch.zeros(1, 2, 224, 224)), big)


def test_warp_constant_shift_matches_roll_away_from_the_border():
    x = torch.rand(2, 3, 8, 10)
    right = torch.zeros(2, 2, 8, 10)
    right[:, 0] = 1.0  # read one pixel to the right
    out = warp(x, right)
    assert torch.allclose(out[..., :-1], torch.roll(x, -1, dims=3)[..., :-1], atol=1e-6)
    assert torch.allclose(out[..., -1], x[..., -1], atol=1e-6)  # border padding repeats the edge
    up = torch.zeros(2, 2, 8, 10)
    up[:, 1] = -1.0  # read one pixel above
    out = warp(x, up)
    assert torch.allclose(out[..., 1:, :], torch.roll(x, 1, dims=2)[..., 1:, :], atol=1e-6)
    assert torch.allclose(out[..., 0, :], x[..., 0, :], atol=1e-6)


def test_warp_matches_grid_sample_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 6, 8, generator=g).requires_grad_(True)
    flow = (torch.randn(2, 2, 6, 8, generator=g) * 2).requires_grad_(True)
    ours = warp(x, flow)
    height, width = 6, 8
    base_x = torch.linspace(-1, 1, width).view(1, 1, width).expand(2, height, width)
    base_y = torch.linspace(-1, 1, height).view(1, height, 1).expand(2, height, width)
    grid = torch.stack([base_x + flow[:, 0] * 2 / (width - 1), base_y + flow[:, 1] * 2 / (height - 1)], dim=-1)
    theirs = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    assert torch.allclose(ours, theirs, atol=1e-5)
    weights = torch.randn(ours.shape, generator=g)
    grads_ours = torch.autograd.grad((ours * weights).sum(), (x, flow))
    grads_theirs = torch.autograd.grad((theirs * weights).sum(), (x, flow))
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_flow_loss_zero_for_constant_flow_and_matches_a_pixel_loop():
    constant = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(0)).expand(3, 2, 5, 6).contiguous()
    # neighbours are equal, so each term is sqrt(0 + eps) - sqrt(eps) up to float rounding of the two roots
    assert torch.allclose(flow_loss(constant), torch.zeros(3), atol=1e-6)
    flow = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(1))
    eps = 1e-8
    expected = torch.zeros(2, dtype=torch.float64)
    f = flow.double()
    for b in range(2):
        for i in range(4):
            for j in range(5):
                for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                    a, c = i + di, j + dj
                    if 0 <= a < 4 and 0 <= c < 5:
                        expected[b] += torch.sqrt(((f[b, :, i, j] - f[b, :, a, c]) ** 2).sum() + eps) - eps**0.5
    assert torch.allclose(flow_loss(flow).double(), expected, rtol=1e-5)
    one = torch.zeros(1, 2, 3, 3)
    one[0, 0, 1, 1] = 1.0  # a single displaced pixel: 4 neighbours, each pair counted twice
    assert flow_loss(one).item() == pytest.approx(8 * (math.sqrt(1 + eps) - math.sqrt(eps)), rel=1e-6)


# -- StAdv: the attack ------------------------------------------------------------------------
def test_stadv_targeted_on_pretrained_resnet20(resnet20, cifar):
    x, labels = cifar
    result = StAdv(steps=30).run(resnet20, x, labels)
    assert result.success_rate >= 0.9  # measured 1.0 (20 images)
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    flow = result.extras["flow"]
    assert flow.shape == (20, 2, 32, 32)
    assert torch.allclose(warp(x, flow).clamp(0, 1), result.x_adv, atol=1e-6)  # the flow reproduces the image
    ok = result.success
    assert torch.allclose(result.extras["score"][ok], flow_loss(flow)[ok], rtol=1e-4)
    assert float(flow.abs().amax()) < 1.0  # sub-pixel deformations suffice


def test_stadv_hooks_zero_weights_extra_loss_and_early_stop(resnet20, cifar):
    x, labels = cifar
    x, labels = x[:6], labels[:6]
    targets = (labels + 1) % 10
    attack = StAdv(steps=15)
    frozen = attack.optimise(x, classifier_evaluation(resnet20), targets, targeted=True,
                             flow_weights=torch.zeros(6, 1, 32, 32))
    assert torch.equal(frozen.x_adv, x) and not bool(frozen.success.any())
    half = attack.optimise(x, classifier_evaluation(resnet20), targets, targeted=True, flow_weights=_half_mask(x, 2))
    assert torch.all(half.extras["flow"][:, :, :16] == 0) and float(half.extras["flow"][:, :, 16:].abs().amax()) > 0

    shift = torch.zeros(6, 2, 32, 32)
    shift[:, 0] = 1.0
    goal = warp(x, shift)  # a reachable image: everything one pixel to the left

    def pull(it):
        return 1e4 * (it.x - it.select(goal)).flatten(1).pow(2).mean(1)

    plain = attack.optimise(x, classifier_evaluation(resnet20), targets, targeted=True)
    pulled = attack.optimise(x, classifier_evaluation(resnet20, pull), targets, targeted=True,
                             score_fn=lambda it, evaluation: evaluation.loss)
    distance = lambda z: (z - goal).flatten(1).norm(dim=1)  # noqa: E731
    assert torch.all(distance(pulled.x_adv) < distance(plain.x_adv))
    # mean horizontal flow measured 0.05 vs 0.011 (15 steps of 0.01 px; tau's TV-like penalty keeps flat areas still)
    assert float(pulled.extras["flow"][:, 0].mean()) > 3 * float(plain.extras["flow"][:, 0].mean().abs())

    quick = StAdv(steps=50, early_stop=True).optimise(x, classifier_evaluation(resnet20), targets, targeted=True)
    assert bool(quick.success.all())
    assert quick.iterations_run == int(quick.iterations_to_success.max())  # stopped at the last first success


# -- registry and user errors ------------------------------------------------------------------
def test_registry_defaults_and_user_errors(random_resnet20):
    assert "cw" in ATTACKS and "stadv" in ATTACKS
    cw = create_attack("cw", epsilon=8 / 255)
    assert isinstance(cw, CarliniWagnerL2) and cw.epsilon == pytest.approx(8 / 255) and cw.lr == 0.01
    assert create_attack("cw").epsilon is None
    stadv = create_attack("stadv")
    assert isinstance(stadv, StAdv) and stadv.tau is None and stadv.lr == 0.01
    assert default_tau(224, 224) == pytest.approx(0.0005) and default_tau(32, 32) == pytest.approx(0.0245)
    for name, options in [("cw", {"search_steps": 0}), ("cw", {"epsilon": 0.0}), ("cw", {"lr": -1.0}),
                          ("cw", {"initial_const": 0.0}), ("stadv", {"loss": "l1"}), ("stadv", {"tau": -1.0}),
                          ("stadv", {"stepz": 3})]:
        with pytest.raises(UserError):
            create_attack(name, **options)
    x = torch.rand(2, 3, 32, 32)
    targets = torch.tensor([1, 2])
    evaluate = classifier_evaluation(random_resnet20)
    with pytest.raises(UserError):
        carlini_wagner_l2(x, evaluate, targets, targeted=True, steps=1, perturbation_weights=torch.ones(2, 2, 32, 32))
    with pytest.raises(UserError):
        carlini_wagner_l2(x, evaluate, targets, targeted=True, steps=1, perturbation_weights=-torch.ones(2, 1, 32, 32))
    with pytest.raises(UserError):
        spatial_transform_attack(x, evaluate, targets, targeted=True, steps=1, flow_init=torch.zeros(2, 2, 16, 16))
    with pytest.raises(UserError):
        warp(torch.rand(1, 3, 1, 5), torch.zeros(1, 2, 1, 5))


@pytest.mark.parametrize("name", ["cw", "stadv"])
def test_attacks_run_on_a_random_network_and_respect_the_box(random_resnet20, name):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = create_attack(name, steps=4, **({"search_steps": 2} if name == "cw" else {})).run(
        random_resnet20, x, torch.tensor([0, 1, 2])
    )
    assert result.x_adv.shape == x.shape and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.iterations_run <= 8 and result.extras["score"].shape == (3,)
