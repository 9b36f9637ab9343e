"""The fit/apply seam: artifacts, digests, universal perturbations and ``sgd-uap``."""

from __future__ import annotations

import json

import pytest
import torch

from idls.attacks import create_attack
from idls.attacks.universal import UniversalPerturbation, perturbation_norm
from idls.core import (
    dataset_digest,
    image_fingerprints,
    load_artifact,
    save_artifact,
    sha256_file,
    short_hex,
    sidecar_path,
    tensor_digest,
)
from idls.data import LabeledImages
from idls.data.synthetic import TEST_SEED, TRAIN_SEED
from idls.errors import UserError
from idls.system import ModelInfo
from tests.universal_helpers import (
    colour_task,
    fooling_ratio,
    random_patterns,
    record_progress,
    shared_cifar_split,
    synthetic,
    tiny_classifier,
)


@pytest.fixture(scope="module")
def held_out() -> LabeledImages:
    return synthetic(16, TEST_SEED, "test")


@pytest.fixture(scope="module")
def fitted(tiny, fit_data) -> UniversalPerturbation:
    return create_attack("sgd-uap", epochs=2, batch_size=16).fit(tiny, fit_data)


# -- core: digests and artifacts -----------------------------------------------------------------
def test_digests_identify_content(fit_data, tmp_path):
    images, labels = fit_data.images, fit_data.labels
    assert dataset_digest(images, labels) == dataset_digest(images.clone(), labels.clone().int())
    changed = labels.clone()
    changed[0] = (changed[0] + 1) % 6
    assert dataset_digest(images, changed) != dataset_digest(images, labels)
    assert tensor_digest(images) != tensor_digest(images.double())  # dtype is part of the digest
    fingerprints = image_fingerprints(images)
    assert fingerprints.shape == (len(fit_data),) and fingerprints.dtype == torch.long
    assert len(set(fingerprints.tolist())) == len(fit_data)
    assert torch.equal(image_fingerprints(images.double()), fingerprints)
    file = tmp_path / "blob.bin"
    file.write_bytes(b"abc")
    assert sha256_file(file) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert short_hex(sha256_file(file)) == "ba7816bf8f01" and short_hex(None) == "none"


def test_artifact_round_trip_and_sidecar(tmp_path):
    tensors = {"a": torch.randn(2, 3, generator=torch.Generator().manual_seed(0)), "ids": torch.arange(4)}
    metadata = {"kind": "demo", "options": {"x": 1.5, "names": ["p", "q"]}, "none": None}
    path = save_artifact(tmp_path / "sub" / "demo.safetensors", tensors, metadata)
    artifact = load_artifact(path, kind="demo")
    assert artifact.metadata == metadata
    assert set(artifact.tensors) == {"a", "ids"}
    assert all(torch.equal(artifact.tensors[k], tensors[k]) for k in tensors)
    assert json.loads(sidecar_path(path).read_text()) == metadata
    with pytest.raises(UserError, match="holds a demo artifact, not a universal-perturbation"):
        load_artifact(path, kind="universal-perturbation")


def test_artifact_missing_or_corrupt_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_artifact(tmp_path / "absent.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_artifact(broken)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="without idls metadata"):
        load_artifact(plain)


# -- fitting -------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perturbation_stays_inside_its_budget(tiny, fit_data, held_out, norm, seed):
    epsilon = {"linf": 6 / 255, "l2": 0.75}[norm]
    attack = create_attack("sgd-uap", norm=norm, epsilon=epsilon, epochs=2, batch_size=16,
                           step_size=epsilon / 2, seed=seed)
    perturbation = attack.fit(tiny, fit_data)
    assert perturbation.delta.shape == (1, 3, 32, 32)
    assert perturbation.norm == norm and perturbation.epsilon == pytest.approx(epsilon)
    assert perturbation_norm(perturbation.delta, norm) <= epsilon * (1 + 1e-6)
    assert perturbation_norm(perturbation.delta, norm) > epsilon / 2  # it did move
    applied = perturbation.apply(held_out.images)
    assert applied.shape == held_out.images.shape
    assert float(applied.min()) >= 0 and float(applied.max()) <= 1
    assert perturbation_norm(applied - held_out.images, "linf") <= perturbation_norm(perturbation.delta, "linf") + 1e-6


def test_fit_is_seeded_and_deterministic(tiny, fit_data):
    first = create_attack("sgd-uap", epochs=2, batch_size=16, seed=3).fit(tiny, fit_data)
    again = create_attack("sgd-uap", epochs=2, batch_size=16, seed=3).fit(tiny, fit_data)
    assert torch.equal(first.delta, again.delta)
    assert first.metadata == again.metadata


def test_metadata_records_the_fit(fitted, tiny, fit_data):
    meta = fitted.metadata
    assert meta["attack"] == "sgd-uap" and meta["model"] == tiny.info.name
    assert meta["options"]["epochs"] == 2 and meta["options"]["batch_size"] == 16 and meta["options"]["norm"] == "linf"
    assert meta["fit_digest"] == dataset_digest(fit_data.images, fit_data.labels)
    assert meta["fit_size"] == len(fit_data) and meta["image_size"] == [3, 32, 32]
    assert 0.0 <= meta["fit_fooling_ratio"] <= 1.0
    assert meta["weights"] is None and meta["weights_sha256"] is None and meta["defense"] is None
    assert torch.equal(fitted.fit_fingerprints, image_fingerprints(fit_data.images))


def test_weights_digest_is_recorded_for_a_weights_file(fit_data, tmp_path):
    from safetensors.torch import save_file

    classifier = tiny_classifier()
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.net.state_dict().items()}, str(weights))
    classifier.info = ModelInfo(**{**classifier.info.__dict__, "weights": str(weights)})
    perturbation = create_attack("sgd-uap", epochs=1, batch_size=48).fit(classifier, fit_data)
    assert perturbation.metadata["weights_sha256"] == sha256_file(weights)


# -- saving and reusing -------------------------------------------------------------------------------
def test_save_load_is_bit_identical(fitted, held_out, tmp_path):
    path = fitted.save(tmp_path / "uap.safetensors")
    loaded = UniversalPerturbation.load(path)
    assert loaded.delta.dtype == fitted.delta.dtype and torch.equal(loaded.delta, fitted.delta)
    assert torch.equal(loaded.apply(held_out.images), fitted.apply(held_out.images))
    assert loaded.norm == fitted.norm and loaded.epsilon == fitted.epsilon
    assert {k: loaded.metadata[k] for k in fitted.metadata} == fitted.metadata
    assert loaded.metadata["image_size"] == [3, 32, 32] and loaded.metadata["kind"] == "universal-perturbation"
    assert torch.equal(loaded.fit_fingerprints, fitted.fit_fingerprints)
    assert json.loads(sidecar_path(path).read_text()) == loaded.metadata


def test_attack_built_from_a_saved_perturbation_applies_it(fitted, tiny, held_out, tmp_path):
    path = fitted.save(tmp_path / "uap.safetensors")
    reused = create_attack("sgd-uap", perturbation=str(path))
    assert reused.epsilon == fitted.epsilon and reused.norm == fitted.norm
    result = reused.run(tiny, held_out.images, held_out.labels)
    assert torch.equal(result.x_adv, fitted.apply(held_out.images))
    with torch.no_grad():
        pred = tiny(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred != held_out.labels) and not result.targeted
    assert torch.equal(result.iterations_to_success, torch.where(result.success, 0, -1))
    with pytest.raises(UserError, match="disagrees with the loaded perturbation"):
        create_attack("sgd-uap", perturbation=str(path), epsilon=1 / 255)


def test_run_before_fit_is_a_user_error(tiny, held_out):
    with pytest.raises(UserError, match="no fitted perturbation; call attack.fit"):
        create_attack("sgd-uap").run(tiny, held_out.images, held_out.labels)


def test_targeted_mode_needs_one_target_class():
    with pytest.raises(UserError, match="pass target_class=C"):
        create_attack("sgd-uap", mode="targeted")
    with pytest.raises(UserError, match="mode='untargeted'"):
        create_attack("sgd-uap", mode="least_likely")
    assert create_attack("sgd-uap", target_class=3).mode.value == "targeted"


def test_tampered_budget_is_refused(fitted, tmp_path):
    path = save_artifact(tmp_path / "bad.safetensors", {"delta": fitted.delta * 3},
                         {**fitted.metadata, "kind": "universal-perturbation", "format": 1, "norm": "linf",
                          "epsilon": fitted.epsilon, "image_size": [3, 32, 32]})
    with pytest.raises(UserError, match="exceeds its budget"):
        UniversalPerturbation.load(path)


# -- the held-out rule and mismatches ----------------------------------------------------------------
def test_evaluating_on_fit_images_is_refused(fitted, tiny, fit_data, held_out):
    attack = create_attack("sgd-uap", perturbation=fitted)
    mixed = torch.cat([held_out.images[:3], fit_data.images[5:6]])
    with pytest.raises(UserError, match="evaluation images overlap the fit data .*1 of 4, e.g. batch position 3"):
        attack.run(tiny, mixed, torch.cat([held_out.labels[:3], fit_data.labels[5:6]]))
    with pytest.raises(UserError, match="evaluation images overlap the fit data"):
        fitted.check_held_out(fit_data.images.double())
    fitted.check_held_out(held_out.images)  # disjoint: no error
    without_fingerprints = UniversalPerturbation(fitted.delta, fitted.norm, fitted.epsilon, dict(fitted.metadata))
    with pytest.raises(UserError, match="evaluation images overlap the fit data .*48 of 48"):
        without_fingerprints.check_held_out(fit_data.images, fit_data.labels)
    without_fingerprints.check_held_out(held_out.images, held_out.labels)


def test_other_image_size_is_an_error(fitted):
    with pytest.raises(UserError, match=r"fitted on \(3, 32, 32\)"):
        fitted.apply(torch.rand(2, 3, 16, 16))
    with pytest.raises(UserError, match="expects 48 x 48"):
        fitted.check_classifier(tiny_classifier(input_size=48))


def test_other_model_is_a_warning(fitted, held_out):
    attack = create_attack("sgd-uap", perturbation=fitted)
    with pytest.warns(UserWarning, match="fitted on model 'tiny_cnn' and is applied to 'other_cnn'"):
        result = attack.run(tiny_classifier(name="other_cnn", seed=5), held_out.images, held_out.labels)
    assert torch.equal(result.x_adv, fitted.apply(held_out.images))


# -- it works: fitted on one split, it fools more on another than noise of the same budget -------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fitted_perturbation_beats_random_noise_on_held_out_images(colour_model, norm):
    fit = colour_task(256, TRAIN_SEED, "train")
    test = colour_task(256, TEST_SEED, "test")
    perturbation = create_attack("sgd-uap", norm=norm).fit(colour_model, fit)
    fooled = fooling_ratio(colour_model, test.images, perturbation.apply(test.images))
    noise = max(fooling_ratio(colour_model, test.images, (test.images + p).clamp(0, 1))
                for p in random_patterns(perturbation))
    assert fooled > noise + 0.05, (fooled, noise)


@pytest.mark.shared
def test_uap_on_pretrained_resnet20_beats_random_signs(resnet20, resnet20_path):
    fit, test = shared_cifar_split(resnet20_path)
    perturbation = create_attack("sgd-uap", epochs=3, step_size=2.5 / 255).fit(resnet20, fit)
    fooled = fooling_ratio(resnet20, test.images, perturbation.apply(test.images))
    noise = max(fooling_ratio(resnet20, test.images, (test.images + p).clamp(0, 1))
                for p in random_patterns(perturbation))
    print(f"resnet20 fooling ratio: universal {fooled:.3f}, random signs {noise:.3f}")
    assert fooled > noise + 0.1, (fooled, noise)


def test_progress_bar_shows_the_running_fooling_ratio(tiny, fit_data, monkeypatch):
    from idls.attacks import sgd_uap

    postfixes = record_progress(sgd_uap, monkeypatch)
    create_attack("sgd-uap", epochs=2, batch_size=16).fit(tiny, fit_data, progress=True)
    assert len(postfixes) == 2 * 3  # one per minibatch: 48 images in batches of 16, two epochs
    assert all(0 <= float(p["fooling"]) <= 1 for p in postfixes)
