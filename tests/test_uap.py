"""``uap``: Moosavi-Dezfooli's universal perturbation with a batched DeepFool step."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from idls.attacks import create_attack
from idls.attacks.uap import DeepFoolUAP, deepfool, update_delta
from idls.attacks.universal import perturbation_norm, project_delta
from idls.data.synthetic import TEST_SEED, TRAIN_SEED
from idls.errors import UserError
from idls.system import Classifier
from tests.universal_helpers import (
    colour_task,
    fooling_ratio,
    noise_fooling,
    record_progress,
    shared_cifar_split,
)


# -- the batched DeepFool step -------------------------------------------------------------------
def _reference_deepfool(classifier: Classifier, x: torch.Tensor, candidates: int, steps: int,
                        overshoot: float) -> tuple[torch.Tensor, bool]:
    """DeepFool on one image ``1 x C x H x W``, written after the authors' reference code."""
    with torch.no_grad():
        order = classifier(x)[0].argsort(descending=True)[:candidates]
    original = int(order[0])
    r_total = torch.zeros_like(x)
    for _ in range(steps):
        point = (x + (1 + overshoot) * r_total).clamp(0, 1).requires_grad_(True)
        logits = classifier(point)[0]
        if int(logits.argmax()) != original:
            break
        grad_original = torch.autograd.grad(logits[original], point, retain_graph=True)[0]
        best, step = math.inf, None
        for k in order[1:].tolist():
            grad_k = torch.autograd.grad(logits[k], point, retain_graph=True)[0]
            w = grad_k - grad_original
            gap = float((logits[k] - logits[original]).detach())
            distance = abs(gap) / float(w.norm())
            if distance < best:
                best, step = distance, (abs(gap) + 1e-4) / float(w.norm()) ** 2 * w
        r_total = r_total + step
    with torch.no_grad():
        adversarial = (x + (1 + overshoot) * r_total).clamp(0, 1)
        flipped = int(classifier(adversarial).argmax(1)) != original
    return adversarial - x, flipped


@pytest.mark.parametrize("candidates", [6, 3])
def test_batched_deepfool_agrees_with_one_image_at_a_time(tiny, fit_data, candidates):
    # in float64: over several DeepFool steps, float32 rounding (the gradient of a logit difference vs the
    # difference of two gradients) moved one image's perturbation by 0.3%, in float64 by 1e-16
    model, x = copy.deepcopy(tiny).double(), fit_data.images[:12].double()
    found = deepfool(model, x, candidates=candidates, steps=10, overshoot=0.02)
    assert found.r.shape == x.shape and found.flipped.shape == (12,) and found.iterations.shape == (12,)
    references = [_reference_deepfool(model, x[i:i + 1], candidates, 10, 0.02) for i in range(12)]
    assert found.flipped.tolist() == [flipped for _, flipped in references]
    ours = found.r.flatten(1).norm(dim=1)
    theirs = torch.stack([r.flatten().norm() for r, _ in references])
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    for i, (r, _) in enumerate(references):
        cosine = F.cosine_similarity(found.r[i].flatten(), r.flatten(), dim=0)
        assert float(cosine) > 0.999


def test_deepfool_flips_labels_with_small_perturbations(tiny, fit_data):
    x = fit_data.images
    found = deepfool(tiny, x)
    assert float(found.flipped.float().mean()) > 0.9
    with torch.no_grad():
        before, after = tiny(x).argmax(1), tiny(x + found.r).argmax(1)
    assert torch.equal(after != before, found.flipped)
    assert float((x + found.r).min()) >= 0 and float((x + found.r).max()) <= 1
    assert bool((found.iterations[found.flipped] >= 1).all()) and int(found.iterations.max()) <= 10
    # minimal: a quarter of the DeepFool step does not flip most images
    with torch.no_grad():
        shy = tiny((x + 0.25 * found.r).clamp(0, 1)).argmax(1) != before
    assert float(shy.float().mean()) < 0.2


# -- the update ----------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,epsilon", [("linf", 0.05), ("l2", 1.0)])
def test_update_delta_folds_perturbations_inside_the_budget(norm, epsilon):
    generator = torch.Generator().manual_seed(0)
    delta = torch.zeros(1, 3, 8, 8)
    r = torch.randn(5, 3, 8, 8, generator=generator) * 0.2
    sequential = delta
    for r_i in r:
        sequential = project_delta(sequential + r_i[None], epsilon, norm)
    assert torch.equal(update_delta(delta, r, epsilon, norm, "sequential"), sequential)
    assert torch.allclose(update_delta(delta, r, epsilon, norm, "mean"),
                          project_delta(r.mean(0, keepdim=True), epsilon, norm))
    for update in ("sequential", "mean", "sum"):
        assert perturbation_norm(update_delta(delta, r, epsilon, norm, update), norm) <= epsilon * (1 + 1e-6)
    assert torch.equal(update_delta(delta, r[:0], epsilon, norm, "sum"), delta)


# -- fitting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fitted_delta_lies_inside_its_budget(tiny, fit_data, norm):
    epsilon = {"linf": 6 / 255, "l2": 0.75}[norm]
    perturbation = create_attack("uap", norm=norm, epsilon=epsilon, max_passes=2, batch_size=16).fit(tiny, fit_data)
    assert isinstance(create_attack("uap"), DeepFoolUAP)
    assert perturbation.delta.shape == (1, 3, 32, 32) and perturbation.norm == norm
    size = perturbation_norm(perturbation.delta, norm)
    assert epsilon / 2 < size <= epsilon * (1 + 1e-6)
    meta = perturbation.metadata
    assert meta["attack"] == "uap" and meta["options"]["update"] == "sequential"
    assert 1 <= meta["passes"] <= 2 and 0 <= meta["fit_fooling_ratio"] <= 1
    fooled = fooling_ratio(tiny, fit_data.images, perturbation.apply(fit_data.images))
    assert meta["fit_fooling_ratio"] == pytest.approx(fooled)


def test_fit_stops_at_the_targetfooling_ratio(tiny, fit_data):
    attack = create_attack("uap", epsilon=0.5, target_fooling=0.5, max_passes=5, batch_size=16)
    perturbation = attack.fit(tiny, fit_data)
    assert perturbation.metadata["passes"] == 1 and perturbation.metadata["fit_fooling_ratio"] >= 0.5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fitted_perturbation_beats_random_noise_on_held_out_images(colour_model, norm):
    fit = colour_task(128, TRAIN_SEED, "train")
    test = colour_task(256, TEST_SEED, "test")
    perturbation = create_attack("uap", norm=norm, max_passes=5).fit(colour_model, fit)
    fooled = fooling_ratio(colour_model, test.images, perturbation.apply(test.images))
    noise = noise_fooling(colour_model, perturbation, test.images)
    # the colour task has three symmetric classes, so one pattern fools few images; noise fools almost none
    assert fooled > max(2 * noise, noise + 0.03), (fooled, noise)


def test_resume_after_a_kill_gives_the_uninterrupted_result(tiny, fit_data, tmp_path, monkeypatch):
    options = {"max_passes": 3, "target_fooling": 1.0, "batch_size": 16, "epsilon": 4 / 255, "seed": 2}
    uninterrupted = create_attack("uap", **options).fit(tiny, fit_data)
    assert uninterrupted.metadata["passes"] == 3

    checkpoint = tmp_path / "uap.checkpoint.safetensors"
    original = DeepFoolUAP._pass

    def killed_after_one_pass(self, classifier, images, clean, delta, pass_, bar):
        if pass_ >= 1:
            raise KeyboardInterrupt("killed")
        return original(self, classifier, images, clean, delta, pass_, bar)

    monkeypatch.setattr(DeepFoolUAP, "_pass", killed_after_one_pass)
    with pytest.raises(KeyboardInterrupt):
        create_attack("uap", **options).fit(tiny, fit_data, checkpoint=checkpoint)
    assert checkpoint.is_file()
    monkeypatch.setattr(DeepFoolUAP, "_pass", original)

    passes_run: list[int] = []

    def counting(self, classifier, images, clean, delta, pass_, bar):
        passes_run.append(pass_)
        return original(self, classifier, images, clean, delta, pass_, bar)

    monkeypatch.setattr(DeepFoolUAP, "_pass", counting)
    resumed = create_attack("uap", **options).fit(tiny, fit_data, checkpoint=checkpoint)
    assert passes_run == [1, 2]  # the first pass came from the checkpoint
    assert torch.equal(resumed.delta, uninterrupted.delta)
    assert resumed.metadata == uninterrupted.metadata
    assert not checkpoint.exists()


def test_options_are_checked():
    with pytest.raises(UserError, match="uap is untargeted"):
        create_attack("uap", target_class=1)
    with pytest.raises(UserError, match="unknown update 'median'"):
        create_attack("uap", update="median")
    with pytest.raises(UserError, match="target_fooling must be in"):
        create_attack("uap", target_fooling=1.5)
    with pytest.raises(UserError, match="candidates must be >= 2"):
        create_attack("uap", candidates=1)


def test_progress_bar_shows_the_running_fooling_ratio(tiny, fit_data, monkeypatch):
    from idls.attacks import uap

    postfixes = record_progress(uap, monkeypatch)
    create_attack("uap", max_passes=2, target_fooling=1.0, batch_size=16).fit(tiny, fit_data, progress=True)
    assert len(postfixes) == 2 * 3  # one per minibatch: 48 images in batches of 16, two passes
    assert all(0 <= float(p["fooling"]) <= 1 for p in postfixes)


@pytest.mark.shared
def test_uap_on_pretrained_resnet20_beats_random_signs(resnet20, resnet20_path):
    fit, test = shared_cifar_split(resnet20_path, fit_n=512)  # 256 fit images are too few for 4 passes to fill the ball
    perturbation = create_attack("uap", max_passes=4).fit(resnet20, fit)
    fooled = fooling_ratio(resnet20, test.images, perturbation.apply(test.images))
    noise = noise_fooling(resnet20, perturbation, test.images)
    print(f"resnet20 fooling ratio: uap {fooled:.3f}, random signs {noise:.3f}")
    # random signs at 10/255 already fool this model often; DeepFool-UAP needs passes to fill the L_inf ball
    assert fooled > noise + 0.08, (fooled, noise)
