"""AdvEdge / AdvEdge+: Sobel edge weights and edge-shaped updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from idls.attacks import create_attack, list_attacks
from idls.attacks.edge import binary_edges, sobel_edges
from idls.errors import UserError
from idls.interpreters import create_interpreter


def _step_image(vertical: bool = True, size: int = 12) -> torch.Tensor:
    image = torch.zeros(1, 3, size, size)
    if vertical:
        image[..., size // 2 :] = 1.0
    else:
        image[..., size // 2 :, :] = 1.0
    return image


@pytest.mark.parametrize("vertical", [True, False])
def test_sobel_of_a_step_edge_is_one_on_the_edge_and_zero_on_flat_regions(vertical):
    edges = sobel_edges(_step_image(vertical))[0, 0]
    if not vertical:
        edges = edges.t()
    half = edges.shape[1] // 2
    assert torch.allclose(edges[:, half - 1 : half + 1], torch.ones(edges.shape[0], 2))
    flat = torch.cat([edges[:, : half - 1], edges[:, half + 1 :]], 1)
    assert torch.equal(flat, torch.zeros_like(flat))  # borders too (replicate padding)


def test_sobel_matches_scipy_on_the_grey_image_and_stays_below_its_bound():
    image = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    grey = image.mean(1).numpy().astype(np.float64)
    oracle = np.stack([np.hypot(ndimage.sobel(g, axis=1, mode="nearest"), ndimage.sobel(g, axis=0, mode="nearest"))
                       for g in grey]) / 4
    edges = sobel_edges(image)
    assert edges.shape == (2, 1, 16, 20)
    assert np.allclose(edges[:, 0].numpy(), oracle, atol=1e-5)
    assert float(edges.max()) <= 5**0.5 / 2 + 1e-6


def test_grey_is_the_channel_mean():
    image = torch.zeros(1, 3, 8, 8)
    image[:, 0, :, 4:] = 1.0  # a step in the red channel only
    assert float(sobel_edges(image).max()) == pytest.approx(1 / 3, abs=1e-6)


def test_binary_edges_threshold():
    image = _step_image() * 0.05  # contrast 0.05: E = 0.05 on the edge
    assert float(binary_edges(image, 0.1).sum()) == 0
    assert float(binary_edges(image, 0.01).sum()) == 2 * image.shape[-2]


def test_registered_names_and_plain_pgd_untouched():
    names = list_attacks()
    assert {"adv2", "advedge", "advedge+", "pgd"} <= set(names)
    assert type(create_attack("pgd")).__name__ == "PGD"


# -- attacks -----------------------------------------------------------------------------------
def _half_flat_images() -> torch.Tensor:
    """Left half constant grey (E = 0 away from the middle), right half random texture."""
    generator = torch.Generator().manual_seed(3)
    x = torch.full((2, 3, 32, 32), 0.5)  # exactly representable: flat Sobel is exactly 0
    x[..., 16:] = torch.rand(2, 3, 32, 16, generator=generator)
    return x


@pytest.fixture(scope="module")
def cam_of_random_net(random_resnet20):
    return create_interpreter("cam", random_resnet20)


def test_advedge_never_changes_zero_weight_pixels(random_resnet20, cam_of_random_net):
    x = _half_flat_images()
    labels = torch.tensor([0, 1])
    zero = (sobel_edges(x) == 0).expand_as(x)
    assert bool(zero.any()) and bool((~zero).any())
    attack = create_attack("advedge", interpreter=cam_of_random_net, steps=4, warm_start=3)
    result = attack.run(random_resnet20, x, labels)
    changed = result.x_adv != x
    assert bool(changed.any())
    assert not bool((changed & zero).any())
    assert float((result.x_adv - x).abs().max()) <= 8 / 255 + 1e-6


def test_advedge_plus_changes_only_pixels_above_the_threshold(random_resnet20, cam_of_random_net):
    x = _half_flat_images()
    labels = torch.tensor([0, 1])
    strong = (sobel_edges(x) > 0.1).expand_as(x)
    attack = create_attack("advedge+", interpreter=cam_of_random_net, steps=4, warm_start=3)
    result = attack.run(random_resnet20, x, labels)
    changed = result.x_adv != x
    assert bool(changed.any())
    assert not bool((changed & ~strong).any())


def test_edge_stage_warm_start_weights_only_the_warm_start(random_resnet20, cam_of_random_net):
    x = _half_flat_images()
    labels = torch.tensor([0, 1])
    zero = (sobel_edges(x) == 0).expand_as(x)
    options = dict(interpreter=cam_of_random_net, edge_stage="warm_start", warm_start=3)
    warm_only = create_attack("advedge+", steps=0, **options).run(random_resnet20, x, labels)
    assert not bool(((warm_only.x_adv != x) & zero).any())
    weights = binary_edges(x)
    warm, joint = create_attack("advedge+", steps=4, **options).stage_weights(x)
    assert torch.equal(warm, weights) and joint is None
    warm, joint = create_attack("advedge+", interpreter=cam_of_random_net).stage_weights(x)
    assert torch.equal(warm, weights) and torch.equal(joint, weights)
    assert create_attack("adv2", interpreter=cam_of_random_net).stage_weights(x) == (None, None)


def test_edge_options_are_checked(cam_of_random_net):
    with pytest.raises(UserError):
        create_attack("advedge", interpreter=cam_of_random_net, edge_stage="sometimes")
    with pytest.raises(UserError):
        create_attack("advedge+", interpreter=cam_of_random_net, threshold=-1)
    with pytest.raises(UserError):
        create_attack("advedge", interpreter=cam_of_random_net, no_such_option=1)


def test_advedge_keeps_the_plain_step_in_the_joint_phase(cam_of_random_net):
    adv2 = create_attack("adv2", interpreter=cam_of_random_net).settings_for(cam_of_random_net, 32)
    assert adv2.joint_step_size is not None and adv2.joint_step_size < 1 / 255
    edge = create_attack("advedge", interpreter=cam_of_random_net)
    assert edge.settings_for(cam_of_random_net, 32).joint_step_size is None
    assert edge.settings_for(cam_of_random_net, 32).max_step == 2 / 255
    plus = create_attack("advedge+", interpreter=cam_of_random_net).settings_for(cam_of_random_net, 32)
    assert plus.joint_step_size == adv2.joint_step_size
    chosen = create_attack("advedge", interpreter=cam_of_random_net, joint_step_size=0.5 / 255)
    assert chosen.settings_for(cam_of_random_net, 32).joint_step_size == 0.5 / 255


def test_advedge_doubles_the_joint_steps_only_where_its_mean_step_is_smaller(cam_of_random_net):
    """Small inputs, PGD, CAM family: twice ADV²'s joint steps; not at 224 px, not on C&W, not when given."""
    adv2 = create_attack("adv2", interpreter=cam_of_random_net).settings_for(cam_of_random_net, 32)
    edge = create_attack("advedge", interpreter=cam_of_random_net)
    assert edge.settings_for(cam_of_random_net, 32).steps == 2 * adv2.steps
    large = create_attack("adv2", interpreter=cam_of_random_net).settings_for(cam_of_random_net, 224)
    assert edge.settings_for(cam_of_random_net, 224).steps == large.steps
    given = create_attack("advedge", interpreter=cam_of_random_net, steps=7)
    assert given.settings_for(cam_of_random_net, 32).steps == 7
    on_cw = create_attack("advedge", interpreter=cam_of_random_net, framework="cw")
    assert on_cw.settings_for(cam_of_random_net, 32).steps == (
        create_attack("adv2", interpreter=cam_of_random_net, framework="cw").settings_for(cam_of_random_net, 32).steps)
