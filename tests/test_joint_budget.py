"""Per-sample stopping of the joint phase and the ``budget`` knob of the joint attacks (no shared data).

The model is a small random-weight GAP + linear CNN (``tiny``, CAM applies) whose last layer is scaled up
(random weights give logits too flat to attack); the targets are the runner-up classes. Its passes are
counted by a forward hook on its first convolution, which every forward pass of the classifier goes through.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from idls.attacks import create_attack
from idls.attacks.budgets import BUDGETS, budget_level
from idls.attacks.cw import margin
from idls.attacks.defaults import joint_defaults
from idls.attacks.joint_stopping import SampleStopper, StopRule
from idls.attacks.pgd import Evaluation, Iterate, projected_gradient_descent
from idls.errors import UserError
from idls.interpreters import create_interpreter

EPS = 32 / 255
IMAGES = 6


class PassCounter:
    """Counts the images that go through the classifier's first convolution (one per image and forward pass)."""

    def __init__(self, classifier) -> None:
        conv = next(m for m in classifier.modules() if isinstance(m, torch.nn.Conv2d))
        self.images = 0
        self.handle = conv.register_forward_hook(self._count)

    def _count(self, module, inputs, output) -> None:
        self.images += int(inputs[0].shape[0])

    def __enter__(self) -> PassCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


LOGIT_SCALE = 50.0


@pytest.fixture(scope="module")
def model(tiny):
    scaled = copy.deepcopy(tiny)
    with torch.no_grad():
        scaled.net.fc.weight.mul_(LOGIT_SCALE)
        scaled.net.fc.bias.mul_(LOGIT_SCALE)
    return scaled


@pytest.fixture(scope="module")
def batch(model):
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(IMAGES, 3, 32, 32, generator=generator)
    with torch.no_grad():
        runner_up = model(x).topk(2, dim=1).indices
    return x, runner_up[:, 0], runner_up[:, 1]


def _adv2(model, **options):
    return create_attack("adv2", interpreter=create_interpreter("cam", model), epsilon=EPS, step_size=2 / 255,
                         warm_start=5, **options)


#: stop once the best iterate leads by half a logit and its map L1 improved by at most half over one check
STOPPING = {"stop_patience": 1, "stop_tolerance": 0.5, "stop_margin": 0.5, "check_every": 2}


# -- the engine -----------------------------------------------------------------------------------------
def test_done_samples_leave_the_batch_and_keep_their_best_iterate():
    x = torch.full((3, 1, 2, 2), 0.5)
    rows_seen: list[int] = []

    def loss_fn(it: Iterate) -> Evaluation:
        rows_seen.append(it.x.shape[0])
        return Evaluation(loss=(it.x - 1).pow(2).flatten(1).sum(1))  # descends towards 1

    def stop_fn(it, evaluation, succeeded, score):
        return (it.index == 0) & (it.iteration == 2)  # sample 0 is done after its third evaluation

    out = projected_gradient_descent(x, loss_fn, success_fn=lambda it, ev: torch.ones_like(it.index, dtype=torch.bool),
                                     epsilon=1.0, step_size=0.1, steps=5, stop_fn=stop_fn)
    assert rows_seen == [3, 3, 3, 2, 2, 2]
    assert out.extras["evaluations"].tolist() == [3, 6, 6]
    # sample 0 kept its best (last, the loss only falls) iterate of iterations 0..2: two steps of 0.1
    assert torch.allclose(out.x_adv[0], torch.full((1, 2, 2), 0.7))
    assert torch.allclose(out.x_adv[1:], torch.full((2, 1, 2, 2), 1.0))


def test_stopper_waits_for_the_margin_and_for_convergence():
    rule = StopRule(check_every=1, patience=2, tolerance=0.1, margin=2.0)
    stopper = SampleStopper(rule, torch.tensor([0, 0]))
    index = torch.arange(2)
    logits = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # leads of 3 (enough) and 1 (not enough)
    evaluation = Evaluation(loss=torch.zeros(2), logits=logits)
    ok = torch.ones(2, dtype=torch.bool)
    done = [stopper(Iterate(torch.zeros(2, 1), index, t), evaluation, ok, torch.tensor([score, score]))
            for t, score in enumerate([1.0, 0.5, 0.48, 0.47])]
    # iteration 2: only two checks so far; iteration 3: 0.5 -> 0.47 over two checks is 6 % < 10 %
    assert [d.tolist() for d in done] == [[False, False], [False, False], [False, False], [True, False]]
    assert math.isinf(float(SampleStopper(rule, torch.tensor([0])).best[0]))


# -- ADV² with per-sample stopping ----------------------------------------------------------------------
def test_stopping_removes_finished_samples_and_counts_their_passes(model, batch):
    x, labels, targets = batch
    runs = {}
    for name, options in (("all", {"stop_patience": 0}), ("stop", STOPPING)):
        with PassCounter(model) as counter:
            result = _adv2(model, steps=40, **options).run(model, x, labels, targets)
        runs[name] = (counter.images, result)
    (all_images, full), (stop_images, stopped) = runs["all"], runs["stop"]
    assert full.extras["joint_evaluations"].tolist() == [41] * IMAGES
    joint = stopped.extras["joint_evaluations"]
    assert bool((joint < 41).any()), "no sample stopped: the test does not test stopping"
    assert torch.equal(stopped.extras["warm_evaluations"], full.extras["warm_evaluations"])
    # every forward pass the stopped samples skipped is missing from the count, and nothing else changed
    assert all_images - stop_images == int(full.extras["joint_evaluations"].sum() - joint.sum())


def test_a_stopped_sample_returns_its_best_iterate_and_is_safely_on_target(model, batch):
    x, labels, targets = batch
    options = {"lam_schedule": "constant", **STOPPING}  # the objective at iteration t does not depend on the total
    stopped = _adv2(model, steps=40, **options).run(model, x, labels, targets)
    evaluations = stopped.extras["joint_evaluations"]
    first = int(evaluations.argmin())
    last_iteration = int(evaluations[first]) - 1
    assert last_iteration < 40
    # the same attack run to that iteration without stopping: the batch is the same up to there
    plain = _adv2(model, steps=last_iteration, **{**options, "stop_patience": 0}).run(model, x, labels, targets)
    assert torch.equal(stopped.x_adv[first], plain.x_adv[first])
    assert float(stopped.extras["score"][first]) == float(plain.extras["score"][first])
    # the final re-check (the real classifier on the returned images) agrees, with the margin the rule asked for
    done = evaluations < 41
    assert bool(stopped.success[done].all())
    with torch.no_grad():
        lead = -margin(model(stopped.x_adv[done]), targets[done], targeted=True)
    assert bool((lead >= STOPPING["stop_margin"] - 1e-4).all())


# -- the budget knob ------------------------------------------------------------------------------------
def test_budget_levels_order_the_cost(model, batch):
    x, labels, targets = (part[:3] for part in batch)
    passes = {}
    for level in BUDGETS:
        attack = create_attack("adv2", interpreter=create_interpreter("cam", model), epsilon=EPS, budget=level)
        with PassCounter(model) as counter:
            result = attack.run(model, x, labels, targets)
        passes[level] = counter.images
        assert bool(result.success.all()), level
    assert passes["fast"] < passes["paper"] <= passes["best"]


def test_levels_are_declared_once_and_user_options_win(tiny):
    paper = joint_defaults("cam", "pgd", 32)
    assert joint_defaults("cam", "pgd", 32, "paper") == paper
    best = joint_defaults("cam", "pgd", 32, "best")
    assert best.steps == 2 * paper.steps and best.stop_patience == 0
    assert joint_defaults("cam", "pgd", 32, "fast").steps < paper.steps
    # an untuned row (MASK; ImageNet sizes) is scaled by the level
    for family, size in (("mask", 32), ("cam", 224)):
        row = joint_defaults(family, "pgd", size)
        assert joint_defaults(family, "pgd", size, "fast").steps == round(row.steps * budget_level("fast").scale)
        assert joint_defaults(family, "pgd", size, "best").steps == 2 * row.steps
    cam = create_interpreter("cam", tiny)
    attack = create_attack("adv2", interpreter=cam, budget="fast", steps=7, stop_patience=0)
    settings = attack.settings_for(cam, 32)
    assert (settings.steps, settings.stop_patience) == (7, 0)
    # AdvEdge and MASK take the knob too
    edge = create_attack("advedge", interpreter=cam, budget="fast").settings_for(cam, 32)
    assert edge.steps < create_attack("advedge", interpreter=cam).settings_for(cam, 32).steps
    mask = create_interpreter("mask", tiny, iterations=2)
    assert create_attack("adv2", interpreter=mask, budget="best").settings_for(mask, 32).steps == \
        2 * joint_defaults("mask", "pgd", 32).steps


@pytest.mark.parametrize("options, expected", [
    ({"budget": "cheap"}, "unknown budget 'cheap'; choose one of: fast, paper, best"),
    ({"stop_tolerance": 1.5}, "stop_tolerance must be in [0, 1)"),
    ({"stop_patience": -1}, "stop_patience must be >= 0"),
    ({"check_every": 0}, "check_every must be >= 1"),
])
def test_bad_budget_options_are_one_line_user_errors(tiny, options, expected):
    with pytest.raises(UserError) as error:
        create_attack("adv2", interpreter=create_interpreter("cam", tiny), **options)
    assert expected in str(error.value) and "\n" not in str(error.value)
