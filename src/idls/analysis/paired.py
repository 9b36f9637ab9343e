"""Paired per-image differences between two attacks, with their sampling error.

Two attacks run on the same images (same experiment, data and seed) can be compared image by
image: the difference ``candidate - baseline`` of one image's metric removes the image's own
difficulty, which is most of the spread between images. The mean of those differences and its
standard error say whether a gap between the two means is larger than what the choice of images
alone would produce; a claim of the form "at least as good as, within a tolerance" then fails
only when the gap exceeds the tolerance with the stated confidence (a one-sided bound from
Student's t distribution, as in a non-inferiority test).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from scipy import stats

#: confidence of the one-sided bound used by claims that allow for sampling error
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``candidate - baseline`` over ``n`` paired images and its standard error (NaN when ``n < 2``)."""

    mean: float
    standard_error: float
    n: int

    def lower_bound(self, confidence: float = DEFAULT_CONFIDENCE) -> float:
        """One-sided lower confidence bound of the mean difference (NaN with fewer than two pairs).

        With ``confidence`` 0.95 the true mean difference lies above this bound in 95% of draws of
        ``n`` images; a difference whose lower bound exceeds a tolerance is larger than sampling noise.
        """
        if self.n < 2 or math.isnan(self.standard_error):
            return math.nan
        if self.standard_error == 0:
            return self.mean
        return self.mean - float(stats.t.ppf(confidence, self.n - 1)) * self.standard_error

    def half_width(self, confidence: float = DEFAULT_CONFIDENCE) -> float:
        """``mean - lower_bound``: how far sampling alone may push the mean upward at ``confidence``."""
        return self.mean - self.lower_bound(confidence)


def paired_difference(candidate: Mapping[Hashable, float], baseline: Mapping[Hashable, float]) -> PairedDifference:
    """Differences ``candidate[k] - baseline[k]`` over the keys both have (NaN values skipped).

    Args:
        candidate, baseline: one value per image key (e.g. ``(image_id, seed)``).
    """
    diffs = [float(candidate[k]) - float(baseline[k]) for k in candidate.keys() & baseline.keys()
             if not (math.isnan(float(candidate[k])) or math.isnan(float(baseline[k])))]
    if not diffs:
        return PairedDifference(math.nan, math.nan, 0)
    mean = statistics.fmean(diffs)
    error = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return PairedDifference(mean, error, len(diffs))


__all__ = ["DEFAULT_CONFIDENCE", "PairedDifference", "paired_difference"]
