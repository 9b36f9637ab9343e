"""Detectors: decide whether an input to a classifier is adversarial (registered in ``DETECTORS``).

The contract is in :mod:`idls.defenses.detectors.base`: options declared once,
``fit(classifier, benign, adversarial=None)``, ``score(x)`` per image, a threshold set
at a false-positive rate on benign images, ``flag(x)``, artifacts. Registered: ``feature-squeezing``
(:mod:`idls.defenses.detectors.squeezing`). Example::

    from idls.defenses.detectors import create_detector, load_detector

    detector = create_detector("feature-squeezing").fit(classifier, benign_fit_images)
    detector.save("runs/fs.safetensors")
    same = load_detector("runs/fs.safetensors", classifier)
    same.flag(x_adv)                                  # B booleans
"""

from __future__ import annotations

from idls.defenses.detectors.base import (
    DETECTOR_KIND,
    DETECTORS,
    DetectionSummary,
    Detector,
    DetectorOptions,
    create_detector,
    load_detector,
    roc_auc,
    summarize_scores,
    threshold_at_fpr,
)
from idls.defenses.detectors.ensemble import (
    InterpreterEnsembleDetector,
    map_disagreement,
)
from idls.defenses.detectors.extractors import (
    EXTRACTORS,
    Extractor,
    extractor_from_spec,
    list_extractors,
)
from idls.defenses.detectors.lid import LIDDetector, LIDOptions, lid_mle
from idls.defenses.detectors.multi_interpreter import MultiInterpreterDetector
from idls.defenses.detectors.squeezing import FeatureSqueezing, SqueezingOptions


def list_detectors() -> list[str]:
    """Names of the registered detectors."""
    return DETECTORS.names()


__all__ = [
    "DETECTORS",
    "DETECTOR_KIND",
    "EXTRACTORS",
    "DetectionSummary",
    "Detector",
    "DetectorOptions",
    "Extractor",
    "FeatureSqueezing",
    "InterpreterEnsembleDetector",
    "LIDDetector",
    "LIDOptions",
    "MultiInterpreterDetector",
    "SqueezingOptions",
    "create_detector",
    "extractor_from_spec",
    "lid_mle",
    "list_detectors",
    "list_extractors",
    "load_detector",
    "map_disagreement",
    "roc_auc",
    "summarize_scores",
    "threshold_at_fpr",
]
