"""The weights shipped in ``idls.pretrained``: made for the current recipes, what they record, reproducible.

When the embedded CNN's recipe, architecture or data generator changes (or the embedded RTS recipe),
the first two tests fail and name the fix: ``make pretrained`` (``python -m idls.pretrained.rebuild``).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import idls.embedded as embedded
from idls.data.synthetic import TEST_SEED, make_synthetic
from idls.interpreters import rts_training
from idls.interpreters.rts_training import read_rts_metadata, sidecar_path
from idls.models import create_model
from idls.pretrained import PACKAGED_DIR
from idls.pretrained.rebuild import rebuild

REBUILD = "the shipped weights are stale: run `make pretrained` (python -m idls.pretrained.rebuild) and commit them"


def _no_training(*args, **kwargs):
    raise AssertionError("trained instead of loading the shipped weights")


@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    """An empty user cache, and any training is a failure: everything must come from the package."""
    monkeypatch.setenv("IDLS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(embedded, "train_embedded", _no_training)
    monkeypatch.setattr(rts_training, "train_embedded_rts", _no_training)
    return tmp_path


def test_shipped_classifier_is_made_for_the_current_recipe():
    weights, metrics = embedded.packaged_paths()
    assert weights.is_file() and metrics.is_file(), REBUILD
    assert sorted(p.name for p in PACKAGED_DIR.glob("embedded_cnn-*")) == sorted([weights.name, metrics.name]), (
        "shipped weights of an older recipe are left over; " + REBUILD)


def test_shipped_classifier_loads_without_training_and_has_the_accuracy_it_records(empty_cache):
    model = create_model("embedded_cnn", weights="pretrained")
    recorded = embedded.embedded_metrics()
    assert recorded == json.loads(embedded.packaged_paths()[1].read_text())
    config = embedded.DEFAULT_CONFIG
    test = make_synthetic(config.test_size, TEST_SEED)
    assert embedded.accuracy(model, test.images, test.labels) == pytest.approx(recorded["test_accuracy"], abs=1e-9)
    assert not any(empty_cache.rglob("*.safetensors"))  # nothing was written to the user cache


def test_shipped_masker_is_made_for_the_shipped_classifier_and_loads_without_training(empty_cache):
    classifier = create_model("embedded_cnn", weights="pretrained")
    shipped = rts_training.packaged_embedded_rts_path()
    meta = read_rts_metadata(shipped)
    assert meta["classifier_fingerprint"] == rts_training.classifier_fingerprint(classifier), REBUILD
    assert meta["extra"] == rts_training._embedded_recipe(rts_training.EMBEDDED_RTS), REBUILD
    masker = rts_training.embedded_rts_masker(classifier)
    expected = load_file(str(shipped))
    assert all(torch.equal(v, expected[k]) for k, v in masker.head.state_dict().items())
    assert not rts_training.embedded_rts_path().exists()


def test_a_damaged_shipped_masker_falls_back_to_training(monkeypatch, tmp_path):
    """A shipped file that no longer matches its sidecar is never loaded: idls trains into the cache instead."""
    monkeypatch.setenv("IDLS_CACHE_DIR", str(tmp_path / "cache"))
    damaged = tmp_path / "embedded_rts.safetensors"
    blob = bytearray(rts_training.packaged_embedded_rts_path().read_bytes())
    blob[-1] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    sidecar_path(damaged).write_bytes(sidecar_path(rts_training.packaged_embedded_rts_path()).read_bytes())
    monkeypatch.setattr(rts_training, "packaged_embedded_rts_path", lambda: damaged)
    trained = []

    def small_training(classifier, settings=rts_training.EMBEDDED_RTS, *, progress=False):
        trained.append(classifier)
        data = make_synthetic(8, seed=0)
        return rts_training.train_rts(classifier, data.images, data.labels, epochs=1, batch_size=8, progress=False)

    monkeypatch.setattr(rts_training, "train_embedded_rts", small_training)
    rts_training.embedded_rts_masker(create_model("embedded_cnn", weights="pretrained"))
    assert len(trained) == 1 and rts_training.embedded_rts_path().is_file()


@pytest.mark.slow
def test_retraining_from_scratch_gives_the_shipped_tensors(tmp_path):
    """Both trainings are bit-reproducible on one thread: a rebuild writes the very tensors shipped."""
    recorded_torch = json.loads(embedded.packaged_paths()[1].read_text()).get("torch")
    if recorded_torch != torch.__version__:
        pytest.skip(f"shipped weights were trained with torch {recorded_torch}, this is {torch.__version__}")
    written = {path.name: path for path in rebuild(tmp_path)}
    for name, path in written.items():
        if name.endswith(".safetensors"):
            fresh, shipped = load_file(str(path)), load_file(str(PACKAGED_DIR / name))
            assert fresh.keys() == shipped.keys()
            assert all(torch.equal(fresh[k], shipped[k]) for k in fresh), name
