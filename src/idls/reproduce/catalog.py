"""Every claim the scorecard tests: papers 001 and 000 (joint attacks), then 004 (universal perturbations), detection and training defences."""

from __future__ import annotations

from idls.reproduce.claims import JOINT_CLAIMS, Claim
from idls.reproduce.claims_detection import DETECTION_CLAIMS
from idls.reproduce.claims_training import TRAINING_CLAIMS
from idls.reproduce.claims_universal import UNIVERSAL_CLAIMS

CLAIMS: tuple[Claim, ...] = JOINT_CLAIMS + UNIVERSAL_CLAIMS + DETECTION_CLAIMS + TRAINING_CLAIMS

__all__ = ["CLAIMS"]
