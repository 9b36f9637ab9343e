"""Reproduction of the papers' observations: claims as data and the scorecard."""

from idls.reproduce.catalog import CLAIMS
from idls.reproduce.claims import Check, Claim
from idls.reproduce.scorecard import (
    SCORECARD_FILE,
    evaluate_claims,
    print_scorecard,
    read_scorecard,
    scorecard_for_run,
    write_scorecard,
)

__all__ = [
    "CLAIMS",
    "SCORECARD_FILE",
    "Check",
    "Claim",
    "evaluate_claims",
    "print_scorecard",
    "read_scorecard",
    "scorecard_for_run",
    "write_scorecard",
]
