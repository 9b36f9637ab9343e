"""The detector contract: threshold at a false-positive rate, fit / flag / evaluate, artifacts, registry-wide checks."""

from __future__ import annotations

import math

import pytest
import torch

from idls.defenses.detectors import (
    DETECTORS,
    Detector,
    create_detector,
    list_detectors,
    load_detector,
    summarize_scores,
    threshold_at_fpr,
)
from idls.errors import UserError
from tests.detector_helpers import register_brightness
from tests.universal_helpers import synthetic, tiny_classifier


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("n", [1, 7, 100, 1001])
def test_threshold_flags_the_requested_share_of_distinct_scores(fpr, n):
    scores = torch.randperm(n).double() / n  # distinct
    threshold = threshold_at_fpr(scores, fpr)
    flagged = int((scores > threshold).sum())
    assert flagged == min(math.floor(fpr * n + 1e-9), n - 1)


def test_threshold_with_ties_never_exceeds_the_rate():
    scores = torch.tensor([0.0] * 50 + [1.0] * 50)
    threshold = threshold_at_fpr(scores, 0.05)
    assert float((scores > threshold).float().mean()) <= 0.05


def test_summary_counts_rates_and_auc():
    benign = torch.tensor([0.1, 0.2, 0.3, 0.9])
    adversarial = torch.tensor([0.8, 0.95, 0.05])
    summary = summarize_scores(benign, adversarial, threshold=0.5)
    assert summary.false_positive_rate == pytest.approx(0.25)
    assert summary.detection_rate == pytest.approx(2 / 3)
    # 12 pairs: adversarial 0.8 beats 3, 0.95 beats 4, 0.05 beats 0
    assert summary.auc == pytest.approx(7 / 12)
    assert summary.accuracy == pytest.approx((2 / 3 + 0.75) / 2)


def test_every_registered_detector_declares_its_options():
    for name in list_detectors():
        cls = DETECTORS.get(name)
        assert issubclass(cls, Detector) and cls.name == name
        assert "fpr" in cls.Options.names()
        with pytest.raises(UserError, match="unexpected"):
            create_detector(name, not_an_option=1)


@pytest.fixture(scope="module")
def brightness_registered():
    return register_brightness()


def test_fit_sets_the_threshold_flag_and_artifact_round_trip(tmp_path, brightness_registered):
    classifier = tiny_classifier()
    benign = synthetic(200, 1, "fit").images
    detector = create_detector("test-brightness", fpr=0.1).fit(classifier, benign)
    assert float(detector.flag(benign).float().mean()) == pytest.approx(0.1)
    path = detector.save(tmp_path / "d.safetensors")
    again = load_detector(path, classifier)
    assert again.threshold == detector.threshold
    assert torch.equal(again.score(benign), detector.score(benign))
    with pytest.raises(UserError, match="fitted on model"):
        load_detector(path, tiny_classifier(name="other"))


def test_errors_are_one_line_user_errors(brightness_registered):
    with pytest.raises(UserError, match="not fitted"):
        create_detector("test-brightness").flag(torch.rand(1, 3, 32, 32))
    with pytest.raises(UserError, match="fpr"):
        create_detector("test-brightness", fpr=1.5)
    with pytest.raises(UserError, match="decision threshold"):
        create_detector("test-brightness", fpr=None)
    with pytest.raises(UserError, match="differentiable"):
        create_detector("test-brightness").fit(tiny_classifier(), torch.rand(4, 3, 32, 32)).score(
            torch.rand(1, 3, 32, 32), create_graph=True)
