"""The embedded classifier: augmentation, training, the atomic cache, ``create_model(..., 'pretrained')``."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import idls.embedded as embedded
from idls.data.synthetic import CLASS_NAMES, TEST_SEED, make_synthetic
from idls.embedded import (
    TrainConfig,
    augment,
    cache_paths,
    embedded_metrics,
    train_embedded,
    trained_embedded_state_dict,
)
from idls.models import create_model
from idls.system import upsample_maps

TINY = TrainConfig(train_size=96, test_size=96, epochs=1, batch_size=32)


# ---------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------
def _candidates(image: torch.Tensor) -> list[torch.Tensor]:
    """All 96 label-preserving variants: 8 symmetries of the square x 6 channel orders x inversion."""
    variants = []
    for k, flip in itertools.product(range(4), (False, True)):
        spatial = torch.rot90(image.flip(-1) if flip else image, k, dims=(-2, -1))
        for perm in itertools.permutations(range(3)):
            variants += [spatial[list(perm)], 1 - spatial[list(perm)]]
    return variants


def test_augment_applies_one_label_preserving_symmetry_per_sample():
    x = torch.rand(24, 3, 10, 10)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for original, augmented in zip(x, out, strict=True):
        assert any(torch.equal(augmented, c) for c in _candidates(original))
    assert (out - x).abs().flatten(1).amax(1).gt(0).sum() >= 18  # most samples actually change
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------------------------
# Cache (training stubbed: these test the bookkeeping, not the learning)
# ---------------------------------------------------------------------------------
@pytest.fixture
def stub_training(monkeypatch, tmp_path):
    """A private cache; training replaced by a random initialisation; count the calls."""
    monkeypatch.setenv("IDLS_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_train(config, *, progress=True):
        calls.append(config)
        torch.manual_seed(len(calls))
        state = {k: v.clone() for k, v in create_model("embedded_cnn").net.state_dict().items()}
        return state, {"test_accuracy": 0.5, "epochs": config.epochs, "seconds": 0.0, "seed": config.seed}

    monkeypatch.setattr(embedded, "train_embedded", fake_train)
    return calls


def test_cache_trains_once_then_loads(stub_training):
    first = trained_embedded_state_dict(TINY, progress=False)
    weights_path, json_path = cache_paths(TINY)
    assert weights_path.is_file() and json_path.is_file()
    assert not list(weights_path.parent.glob("*.tmp"))
    second = trained_embedded_state_dict(TINY, progress=False)
    assert len(stub_training) == 1
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert json.loads(json_path.read_text())["test_accuracy"] == 0.5
    assert embedded_metrics(TINY)["test_accuracy"] == 0.5
    json_path.unlink()  # the metrics also live inside the weights file
    assert embedded_metrics(TINY)["epochs"] == TINY.epochs and len(stub_training) == 1


def test_cache_key_follows_the_recipe():
    assert cache_paths(TINY)[0] != cache_paths(TrainConfig(train_size=192, test_size=96, epochs=1, batch_size=32))[0]
    assert cache_paths(TINY)[0] == cache_paths(TrainConfig(train_size=96, test_size=96, epochs=1, batch_size=32))[0]


def test_corrupt_cache_is_retrained(stub_training):
    weights_path, _ = cache_paths(TINY)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    weights_path.write_bytes(b"\x00" * 100)
    state = trained_embedded_state_dict(TINY, progress=False)
    assert len(stub_training) == 1 and "fc.weight" in state
    assert trained_embedded_state_dict(TINY, progress=False)["fc.weight"].shape == (len(CLASS_NAMES), 64)


def test_killed_write_leaves_no_cache_entry(stub_training, monkeypatch):
    import safetensors.torch

    def dying_save(state, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trained_embedded_state_dict(TINY, progress=False)
    weights_path, json_path = cache_paths(TINY)
    assert not weights_path.exists() and not json_path.exists()
    assert not list(weights_path.parent.iterdir())


def test_create_model_pretrained_uses_the_cached_weights(stub_training, monkeypatch):
    monkeypatch.setattr(embedded, "DEFAULT_CONFIG", TINY)
    state = trained_embedded_state_dict(TINY, progress=False)
    model = create_model("embedded_cnn", weights="pretrained")
    assert all(torch.equal(model.net.state_dict()[k], v) for k, v in state.items())
    assert len(stub_training) == 1


# ---------------------------------------------------------------------------------
# Real training
# ---------------------------------------------------------------------------------
def test_training_is_deterministic_and_restores_the_global_rng():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    state_a, metrics = train_embedded(TINY, progress=False)
    assert torch.equal(torch.rand(3), before), "training must not consume the caller's RNG"
    state_b, _ = train_embedded(TINY, progress=False)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 1 and metrics["seconds"] > 0


def _cam_iou(model, images: torch.Tensor, masks: torch.Tensor, top: float = 0.2) -> tuple[float, float]:
    """Mean IoU of the top-``top`` region of the upsampled CAM (and of a random map) with the masks."""
    with torch.no_grad():
        features, logits = model.features_and_logits(images)
        weights = model.linear.weight[logits.argmax(1)]
        cam = torch.einsum("bk,bkhw->bhw", weights, features)
    random_map = torch.rand(cam.shape, generator=torch.Generator().manual_seed(0))

    def iou(maps):
        up = upsample_maps(maps, images.shape[-1]).flatten(1)
        k = int(top * up.shape[1])
        region = up >= up.topk(k, dim=1).values[:, -1:]
        truth = masks.flatten(1)
        return float(((region & truth).sum(1) / (region | truth).sum(1)).mean())

    return iou(cam), iou(random_map)


def test_pretrained_embedded_reaches_target_accuracy_by_shape_and_localises():
    """The shipped weights (idls.pretrained): accurate, colour-blind, and CAM localises the shapes."""
    model = create_model("embedded_cnn", weights="pretrained")
    metrics = embedded_metrics()
    assert metrics["test_accuracy"] >= 0.9
    test = make_synthetic(600, TEST_SEED)
    accuracy = float((model.predict(test.images) == test.labels).float().mean())
    assert accuracy >= 0.9
    # Colour is irrelevant: permuted / inverted colours keep the accuracy.
    recoloured = 1 - test.images[:, [2, 0, 1]]
    assert float((model.predict(recoloured) == test.labels).float().mean()) >= 0.85
    cam_iou, random_iou = _cam_iou(model, test.images, test.masks)
    assert cam_iou > 3 * random_iou and cam_iou > 0.25
