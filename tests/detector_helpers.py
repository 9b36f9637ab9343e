"""A tiny test detector (mean brightness), registered once per process for tests of the detector seams."""

from __future__ import annotations

from idls.defenses.detectors import DETECTORS, Detector

BRIGHTNESS = "test-brightness"


class BrightnessDetector(Detector):
    """Scores the mean pixel minus the fit images' mean (bright = 'adversarial'); learns one number per channel."""

    name = BRIGHTNESS

    def _fit(self, classifier, benign, adversarial, *, progress):
        self.offset = benign.mean(dim=(0, 2, 3))

    def _score(self, x):
        return (x.mean(dim=(2, 3)) - self.offset.to(x.device)).mean(1)

    def state_tensors(self):
        return {"offset": self.offset}

    def load_state_tensors(self, tensors):
        self.offset = tensors["offset"]


SUPERVISED = "test-supervised"


class SupervisedBrightnessDetector(BrightnessDetector):
    """The same score, but fitted with adversarial images too: it records how many it saw."""

    name = SUPERVISED
    needs_adversarial = True

    def _fit(self, classifier, benign, adversarial, *, progress):
        super()._fit(classifier, benign, adversarial, progress=progress)
        self.seen = adversarial.shape[0]


def register_supervised() -> str:
    """Register the supervised test detector (idempotent) and return its name."""
    if SUPERVISED not in DETECTORS:
        DETECTORS.register(SUPERVISED, SupervisedBrightnessDetector)
    return SUPERVISED


DIFFERENTIABLE = "test-differentiable"


class DifferentiableBrightnessDetector(BrightnessDetector):
    """The same score, declared differentiable (it is: a mean of the pixels), for adaptive attacks."""

    name = DIFFERENTIABLE
    differentiable_score = True


def register_differentiable() -> str:
    """Register the differentiable test detector (idempotent) and return its name."""
    if DIFFERENTIABLE not in DETECTORS:
        DETECTORS.register(DIFFERENTIABLE, DifferentiableBrightnessDetector)
    return DIFFERENTIABLE


def register_brightness() -> str:
    """Register the test detector (idempotent) and return its name."""
    if BRIGHTNESS not in DETECTORS:
        DETECTORS.register(BRIGHTNESS, BrightnessDetector)
    return BRIGHTNESS
