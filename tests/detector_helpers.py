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


def register_brightness() -> str:
    """Register the test detector (idempotent) and return its name."""
    if BRIGHTNESS not in DETECTORS:
        DETECTORS.register(BRIGHTNESS, BrightnessDetector)
    return BRIGHTNESS
