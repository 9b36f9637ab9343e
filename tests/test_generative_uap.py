"""Generative universal perturbations (GAP, JUAP), JAP, the generators and the pattern baselines (paper 004)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from idls import metrics
from idls.attacks import create_attack
from idls.attacks.generative_uap import generator_from
from idls.attacks.generators import build_generator, scale_to_budget, unet_levels
from idls.attacks.juap_objective import benign_reference, classifier_loss
from idls.attacks.universal import (
    UniversalPerturbation,
    default_epsilon,
    perturbation_norm,
)
from idls.data import LabeledImages
from idls.data.synthetic import TEST_SEED, TRAIN_SEED
from idls.errors import UserError
from idls.interpreters import create_interpreter
from tests.universal_helpers import (
    colour_task,
    fooling_ratio,
    record_progress,
    synthetic,
    tiny_classifier,
)

#: small, fast generative fits for the tiny models
FAST = {"epochs": 2, "batch_size": 16, "width": 8, "lr": 0.01}


@pytest.fixture(scope="module")
def fit() -> LabeledImages:
    return colour_task(256, TRAIN_SEED, "train")


@pytest.fixture(scope="module")
def held_out() -> LabeledImages:
    return colour_task(128, TEST_SEED, "test")


# -- Eq. 6 and the budgets ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(norm=st.sampled_from(["linf", "l2"]), epsilon=st.floats(1e-3, 3.0),
       scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_eq6_scaling_keeps_every_perturbation_inside_its_budget(norm, epsilon, scale, seed):
    raw = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * scale
    scaled = scale_to_budget(raw, epsilon, norm)
    for row, original in zip(scaled, raw, strict=True):
        size = perturbation_norm(row[None], norm)
        assert size <= epsilon * (1 + 1e-5)
        if perturbation_norm(original[None], norm) <= epsilon:  # min(1, .): small patterns are left alone
            assert torch.equal(row, original)
        else:  # larger ones are shrunk onto the boundary, direction kept
            assert size == pytest.approx(epsilon, rel=1e-4)
            assert torch.allclose(row / size, original / perturbation_norm(original[None], norm), atol=1e-5)


def test_default_budgets_follow_the_paper():
    assert default_epsilon("linf", (3, 32, 32)) == pytest.approx(10 / 255)
    assert default_epsilon("l2", (3, 224, 224)) == pytest.approx(2000 / 255)
    assert default_epsilon("l2", (3, 32, 32)) == pytest.approx(1.12, abs=5e-3)


# -- generators -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["resnet", "unet"])
@pytest.mark.parametrize("side", [32, 224])
def test_generators_are_sized_for_the_input(kind, side):
    generator = build_generator(kind, (3, side, side), width=4)
    noise = torch.rand(1, 3, side, side)
    with torch.no_grad():
        out = generator(noise)
    assert out.shape == noise.shape and float(out.abs().max()) <= 1.0
    assert unet_levels(32) == 3 and unet_levels(224) == 5


def test_unsuitable_image_sizes_are_refused():
    with pytest.raises(UserError, match="divisible by 8"):
        build_generator("unet", (3, 36, 36))
    with pytest.raises(UserError, match="unknown generator"):
        build_generator("vae", (3, 32, 32))


@pytest.mark.parametrize("kind", ["resnet", "unet"])
def test_a_grouped_generator_is_independent_generators(kind):
    """JAP's batched generators: group g computes exactly what a single generator with its weights computes."""
    from idls.attacks.jap import JAP

    attack = create_attack("jap", interpreter="cam", width=4, generator=kind)
    assert isinstance(attack, JAP)
    grouped = attack._generators((3, 32, 32), 3)
    noise = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in grouped.parameters():  # make the groups differ
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
        together = grouped(noise.repeat(1, 3, 1, 1)).view(3, 3, 32, 32)
        for g in range(3):
            single = build_generator(kind, (3, 32, 32), width=4)
            state = {}
            pairs = zip(grouped.state_dict().items(), single.state_dict().values(), strict=True)
            for (name, value), _reference in pairs:
                per_group = value.shape[0] // 3 if value.dim() else None
                state[name] = value[g * per_group:(g + 1) * per_group] if per_group else value
            single.load_state_dict(state)
            assert torch.allclose(single(noise)[0], together[g], atol=1e-5)


# -- the objective ----------------------------------------------------------------------------------------
def test_classifier_losses_follow_eqs_7_to_9():
    logits = torch.tensor([[3.0, 1.0, -2.0]])
    ref = benign_reference_from(pred=[0], least=[2])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    assert classifier_loss(logits, "ce", ref) == pytest.approx(-float(ce.log()))
    ce_min = torch.nn.functional.cross_entropy(logits, torch.tensor([2]))
    assert classifier_loss(logits, "cmin", ref) == pytest.approx(float(ce_min.log()))
    with pytest.raises(UserError, match="target class"):
        classifier_loss(logits, "target", ref)


def benign_reference_from(pred: list[int], least: list[int]):
    from idls.attacks.juap_objective import Reference

    return Reference(torch.tensor(pred), torch.tensor(least))


def test_benign_reference_holds_the_real_benign_maps(colour_model, held_out):
    cam = create_interpreter("cam", colour_model)
    ref = benign_reference(colour_model, cam, held_out.images[:10], chunk=4)
    assert torch.equal(ref.pred, colour_model.predict(held_out.images[:10]))
    assert torch.allclose(ref.maps, cam.attribute(held_out.images[:10], ref.pred), atol=1e-6)


# -- GAP and JUAP -----------------------------------------------------------------------------------------
def test_gap_fits_within_seconds_and_beats_the_random_baseline(colour_model, fit, held_out):
    perturbation = create_attack("gap", **FAST).fit(colour_model, fit)
    assert perturbation_norm(perturbation.delta, "linf") <= 10 / 255 + 1e-6
    fooled = fooling_ratio(colour_model, held_out.images, perturbation.apply(held_out.images))
    baseline = create_attack("random-sign").fit(colour_model, fit)
    noise = fooling_ratio(colour_model, held_out.images, baseline.apply(held_out.images))
    assert fooled > noise + 0.1, (fooled, noise)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_juap_stays_inside_its_budget(colour_model, fit, norm):
    perturbation = create_attack("juap", interpreter="cam", norm=norm, **FAST).fit(colour_model, fit)
    assert perturbation.epsilon == pytest.approx(default_epsilon(norm, (3, 32, 32)))
    assert perturbation_norm(perturbation.delta, norm) <= perturbation.epsilon * (1 + 1e-5)


def test_juap_keeps_the_maps_closer_than_the_same_generator_without_the_map_term(colour_model, fit, held_out):
    cam = create_interpreter("cam", colour_model)
    x = held_out.images
    benign = cam.attribute(x)
    shifts = {}
    for lam in (0.0, 10.0):
        perturbation = create_attack("juap", interpreter="cam", lam=lam, **FAST).fit(colour_model, fit)
        shifts[lam] = float(metrics.map_l1(cam.attribute(perturbation.apply(x)), benign).mean())
    assert shifts[10.0] < 0.8 * shifts[0.0], shifts


def test_progress_bar_shows_the_running_fooling_ratio_and_map_shift(colour_model, fit, monkeypatch):
    from idls.attacks import generative_uap

    postfixes = record_progress(generative_uap, monkeypatch)
    create_attack("juap", interpreter="cam", **FAST).fit(colour_model, fit, progress=True)
    assert len(postfixes) == 2 * 16  # one per minibatch: 256 images in batches of 16, two epochs
    assert all(0 <= float(p["fooling"]) <= 1 and float(p["map_shift"]) >= 0 for p in postfixes)


def test_a_fitted_generator_perturbation_reloads_identically(colour_model, fit, held_out, tmp_path):
    attack = create_attack("juap", interpreter="cam", **FAST)
    fitted = attack.fit(colour_model, fit)
    path = fitted.save(tmp_path / "juap.safetensors")
    loaded = UniversalPerturbation.load(path)
    assert torch.equal(loaded.delta, fitted.delta) and loaded.metadata["attack"] == "juap"
    reused = create_attack("juap", interpreter="cam", perturbation=str(path))
    assert torch.equal(reused.run(colour_model, held_out.images, held_out.labels).x_adv,
                       attack.run(colour_model, held_out.images, held_out.labels).x_adv)
    generator, noise = generator_from(loaded)  # the generator travels with the perturbation
    with torch.no_grad():
        again = scale_to_budget(generator(noise), loaded.epsilon, loaded.norm)
    assert torch.allclose(again, loaded.delta, atol=1e-6)


def test_a_killed_fit_resumes_from_its_checkpoint(colour_model, fit, tmp_path, monkeypatch):
    from idls.attacks import fit_checkpoint

    options = {**FAST, "epochs": 3}
    uninterrupted = create_attack("gap", **options).fit(colour_model, fit)
    path = tmp_path / "fit.checkpoint.safetensors"
    original = fit_checkpoint.FitCheckpoint.save

    def killed_after_the_first_epoch(self, epochs_done, tensors, counters=None):
        original(self, epochs_done, tensors, counters)
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_checkpoint.FitCheckpoint, "save", killed_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        create_attack("gap", **options).fit(colour_model, fit, checkpoint=path)
    monkeypatch.setattr(fit_checkpoint.FitCheckpoint, "save", original)
    assert path.is_file()
    epochs_run = []
    monkeypatch.setattr(fit_checkpoint.FitCheckpoint, "save",
                        lambda self, done, tensors, counters=None: (epochs_run.append(done),
                                                                    original(self, done, tensors, counters)))
    resumed = create_attack("gap", **options).fit(colour_model, fit, checkpoint=path)
    assert epochs_run == [2, 3]  # epoch 1 was not repeated
    assert torch.equal(resumed.delta, uninterrupted.delta)
    assert not path.exists()  # removed once the fit completed


def test_a_checkpoint_of_another_fit_is_ignored(colour_model, fit, tmp_path):
    path = tmp_path / "fit.checkpoint.safetensors"
    from idls.attacks.fit_checkpoint import FitCheckpoint

    FitCheckpoint(path, key="another fit").save(1, {"delta": torch.zeros(1, 3, 32, 32)})
    with pytest.warns(UserWarning, match="checkpoint of another fit"):
        fitted = create_attack("sgd-uap", epochs=1).fit(colour_model, fit, checkpoint=path)
    assert torch.equal(fitted.delta, create_attack("sgd-uap", epochs=1).fit(colour_model, fit).delta)


def test_targeted_juap_sends_images_to_its_class(colour_model, fit, held_out):
    perturbation = create_attack("gap", loss="target", target_class=2, epsilon=0.08,
                                 **{**FAST, "epochs": 3}).fit(colour_model, fit)
    attack = create_attack("gap", perturbation=perturbation)
    assert attack.target_class == 2 and attack.mode.value == "targeted"
    result = attack.run(colour_model, held_out.images, held_out.labels)
    reached = float((result.pred == 2).float().mean())
    assert reached > float((colour_model.predict(held_out.images) == 2).float().mean()) + 0.2


@pytest.mark.parametrize(("options", "message"), [
    ({"loss": "target"}, "go together"),
    ({"generator": "vae"}, "unknown generator"),
    ({"loss": "kl"}, "unknown loss"),
    ({"lr": 0}, "lr must be a positive"),
    ({"interpreter": 3}, "interpreter must be"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(UserError, match=message):
        create_attack("juap", **{"interpreter": "cam", **options})


def test_juap_refuses_an_interpreter_whose_map_is_an_optimisation(colour_model, fit):
    with pytest.raises(UserError, match="cannot differentiate interpreter 'mask'"):
        create_attack("juap", interpreter="mask", **FAST).fit(colour_model, fit)


# -- JAP --------------------------------------------------------------------------------------------------
def test_jap_fools_and_keeps_maps_closer_than_pgd(colour_model, held_out):
    x, labels = held_out.images[:24], held_out.labels[:24]
    keep = colour_model.predict(x) == labels
    x, labels = x[keep], labels[keep]
    cam = create_interpreter("cam", colour_model)
    benign = cam.attribute(x)
    # the colour task is robust at 10/255 (PGD fools under half), so both attacks get a larger budget here
    jap = create_attack("jap", interpreter="cam", epsilon=0.08, lam=1.0, steps=100, width=4).run(colour_model, x, labels)
    pgd = create_attack("pgd", mode="untargeted", epsilon=0.08, steps=100).run(colour_model, x, labels)
    assert float(jap.success.float().mean()) >= 0.4
    ok = jap.success & pgd.success
    assert int(ok.sum()) >= 4
    jap_l1 = metrics.map_l1(cam.attribute(jap.x_adv[ok]), benign[ok]).mean()
    pgd_l1 = metrics.map_l1(cam.attribute(pgd.x_adv[ok]), benign[ok]).mean()
    assert jap_l1 < pgd_l1, (float(jap_l1), float(pgd_l1))


# -- pattern baselines ------------------------------------------------------------------------------------
def test_chessboard_and_random_sign_sit_on_the_budget_boundary():
    fit = synthetic(4, TRAIN_SEED, "train")
    model = tiny_classifier()
    board = create_attack("chessboard", cell=2).fit(model, fit).delta[0, 0]
    eps = 10 / 255
    assert torch.allclose(board.abs(), torch.full_like(board, eps))
    assert board[0, 0] == board[1, 1] == -board[0, 2] == -board[2, 0]
    l2 = create_attack("random-sign", norm="l2").fit(model, fit)
    assert perturbation_norm(l2.delta, "l2") == pytest.approx(default_epsilon("l2", (3, 32, 32)), rel=1e-5)
    assert len(set(l2.delta.abs().flatten().tolist())) == 1


def test_experiments_skip_the_interpreters_a_generator_attack_cannot_differentiate():
    from idls.experiments.cells import expand_cells
    from idls.experiments.config import experiment_from_mapping

    experiment = experiment_from_mapping({
        "name": "skip", "models": [{"name": "embedded_cnn", "weights": "random"}],
        "data": {"source": "embedded", "n": 2, "fit_source": "embedded-train"}, "interpreters": ["cam", "mask"],
        "attacks": [{"name": "juap", "options": {"mode": "untargeted"}}, "adv2"], "mode": "targeted",
    }, default_name="skip")
    notes: list[str] = []
    cells = expand_cells(experiment, notes=notes)
    assert {(c.attack, c.attacked_interpreter) for c in cells} == {("juap", "cam"), ("adv2", "cam"), ("adv2", "mask")}
    assert len(notes) == 1 and "skipping juap against mask" in notes[0]


@pytest.mark.parametrize("kind, levels, side", [("resnet", 0, 32), ("resnet", 1, 32), ("unet", 2, 32), ("unet", 1, 8)])
def test_generator_levels_keep_the_image_shape(kind, levels, side):
    """``levels`` sets the stride-2 levels; the output has the noise's shape (0 = full resolution for resnet)."""
    generator = build_generator(kind, (3, side, side), width=4, levels=levels)
    strided = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == levels
    assert generator(torch.rand(1, 3, side, side)).shape == (1, 3, side, side)


def test_generator_levels_are_recorded_and_rebuilt(colour_model, fit):
    perturbation = create_attack("gap", **{**FAST, "epochs": 1}, levels=0).fit(colour_model, fit)
    generator, noise = generator_from(perturbation)
    with torch.no_grad():
        rebuilt = scale_to_budget(generator(noise), 10 / 255, "linf")
    assert torch.allclose(rebuilt, perturbation.delta, atol=1e-6)
    assert "levels0" in create_attack("gap", levels=0).variant()


def test_bad_generator_levels_are_refused():
    with pytest.raises(UserError, match="levels must be >= 0"):
        create_attack("gap", levels=-1)
    with pytest.raises(UserError, match="needs levels >= 1"):
        build_generator("unet", (3, 32, 32), levels=0)
