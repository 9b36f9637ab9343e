"""ADV², AdvEdge and AdvEdge+ end to end on a classifier trained inside the suite (no ../shared).

The classifier is the registry's ``embedded_cnn`` (GAP + linear head, so CAM applies), seeded and
fitted for a few seconds on the embedded synthetic shapes at 32 x 32 px (``make_synthetic``).
It is deliberately not the shipped ``pretrained`` embedded model: these tests exercise the joint
attacks on a classifier that the suite itself trains, independent of any file shipped with idls.

Against CAM, each joint attack (short schedule) must

* reach the target class on every image (checked with the real model's prediction),
* stay in [0, 1] and inside the L_inf ball (radius 16/255, see EPS),
* leave the map a user sees (CAM of the predicted = target class) closer to the benign map than
  plain PGD does on the same images with the same number of steps: the point of the method;

and AdvEdge(+) must shape the perturbation by the clean image's Sobel edges (scipy as the oracle).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from idls.attacks import create_attack
from idls.data.synthetic import make_synthetic
from idls.embedded import augment
from idls.interpreters import create_interpreter
from idls.models import create_model

#: AdvEdge+ moves only edge pixels and this quickly trained model is far from the cached one: at 8/255 some
#: targets are out of its reach, at 16/255 with 2/255 steps the short schedules reach every one (all three alike)
EPS = 16 / 255
STEP = 2 / 255
SIZE = 32
IMAGES = 6
WARM_START, JOINT_STEPS = 30, 30
JOINT_ATTACKS = ["adv2", "advedge", "advedge+"]
MIN_EDGE_SHARE = 0.25


def _train(seed: int = 0, n: int = 7680, epochs: int = 3, batch: int = 32, lr: float = 1.5e-2):
    """embedded_cnn fitted on synthetic 32 px shapes (several seconds on one core; ~50% held-out accuracy:
    the textured shapes of generator version 2 need twice the images of the flat ones for it)."""
    data = make_synthetic(n, seed=31, size=SIZE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("embedded_cnn")
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * (n // batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.25)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for step in range(n // batch):
            index = order[step * batch : (step + 1) * batch]
            loss = F.cross_entropy(model(augment(data.images[index], generator)), data.labels[index],
                                   label_smoothing=0.05)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    """The trained classifier, held-out images it classifies correctly, their runner-up classes as targets."""
    model = _train()
    held_out = make_synthetic(240, seed=32, size=SIZE)
    correct = model.predict(held_out.images) == held_out.labels
    # AdvEdge+ can move only pixels with E > 0.1, and a few renderings have few of them: keep images with at
    # least MIN_EDGE_SHARE of them, so every attack is feasible.
    edgy = (_oracle_edges(held_out.images) > 0.1).flatten(1).float().mean(1) >= MIN_EDGE_SHARE
    keep = correct & edgy
    x, labels = held_out.images[keep][:IMAGES], held_out.labels[keep][:IMAGES]
    with torch.no_grad():
        targets = model(x).topk(2, dim=1).indices[:, 1]  # the most plausible wrong class
    cam = create_interpreter("cam", model)
    return {
        "model": model, "x": x, "labels": labels, "targets": targets, "cam": cam,
        "benign": cam.attribute(x, labels), "accuracy": float(correct.float().mean()),
        "edge_share": float(edgy.float().mean()),
    }


@pytest.fixture(scope="module")
def pgd(setup):
    """Plain targeted PGD with as many steps as a joint attack's warm start + joint phase."""
    attack = create_attack("pgd", epsilon=EPS, step_size=STEP, steps=WARM_START + JOINT_STEPS)
    return attack.run(setup["model"], setup["x"], setup["labels"], setup["targets"])


@pytest.fixture(scope="module", params=JOINT_ATTACKS)
def joint(request, setup):
    attack = create_attack(request.param, interpreter=setup["cam"], epsilon=EPS, step_size=STEP,
                           steps=JOINT_STEPS, warm_start=WARM_START)
    return request.param, attack.run(setup["model"], setup["x"], setup["labels"], setup["targets"])


def _distance_to_benign(setup, x_adv):
    """Mean absolute difference between the CAM a user sees (predicted class) and the benign CAM."""
    with torch.no_grad():
        seen = setup["cam"].attribute(x_adv, setup["model"](x_adv).argmax(1))
    return (seen - setup["benign"]).abs().mean(dim=(1, 2))


def _oracle_edges(x):
    """Sobel magnitude of the grey image / 4 (replicate borders), computed by scipy."""
    grey = x.mean(1).double().numpy()
    magnitude = [np.hypot(ndimage.sobel(g, axis=1, mode="nearest"), ndimage.sobel(g, axis=0, mode="nearest"))
                 for g in grey]
    return torch.from_numpy(np.stack(magnitude) / 4)


def test_the_classifier_learned_the_task(setup):
    assert setup["accuracy"] > 0.4  # chance is 1/6
    assert len(setup["x"]) == IMAGES
    assert bool((setup["targets"] != setup["labels"]).all())


def test_pgd_baseline_succeeds(setup, pgd):
    assert bool(pgd.success.all())
    assert torch.equal(setup["model"].predict(pgd.x_adv), setup["targets"])


def test_joint_attack_succeeds_inside_the_ball(setup, joint):
    name, result = joint
    x, targets = setup["x"], setup["targets"]
    assert result.x_adv.shape == x.shape
    assert torch.equal(setup["model"].predict(result.x_adv), targets), name
    assert bool(result.success.all()) and torch.equal(result.pred, targets)
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert float((result.x_adv - x).abs().max()) <= EPS + 1e-6
    assert bool(((result.x_adv - x).abs().flatten(1).amax(1) > 0).all())  # every image was perturbed


def test_joint_attack_keeps_the_map_closer_to_the_benign_map_than_pgd(setup, joint, pgd):
    name, result = joint
    joint_distance = _distance_to_benign(setup, result.x_adv)
    pgd_distance = _distance_to_benign(setup, pgd.x_adv)
    assert float(joint_distance.mean()) < 0.9 * float(pgd_distance.mean()), (name, joint_distance, pgd_distance)
    assert int((joint_distance < pgd_distance).sum()) >= IMAGES // 2 + 1, (name, joint_distance, pgd_distance)
    # the distance the attack reports is the one measured here (benign target map = benign CAM of the label)
    torch.testing.assert_close(result.extras["map_distance"], joint_distance, rtol=0, atol=1e-5)


@pytest.mark.parametrize("joint", ["advedge", "advedge+"], indirect=True)
def test_edge_attacks_follow_the_edges(setup, joint):
    name, result = joint
    x = setup["x"]
    edges = _oracle_edges(x)  # B x H x W
    change = (result.x_adv - x).abs().amax(1).double()  # B x H x W
    if name == "advedge+":  # only pixels with E > 0.1 may change at all
        assert not bool(((change > 0) & (edges <= 0.1 - 1e-6)).any())
        assert bool((change > 0).any())
    else:  # steps scaled by E: the perturbation is larger on the stronger half of the edges
        strong = edges > edges.flatten(1).median(1).values[:, None, None]
        assert bool((change[strong].mean() > 1.5 * change[~strong].mean()).all())
