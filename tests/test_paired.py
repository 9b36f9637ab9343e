"""Paired per-image differences: the one-sided bound against scipy's paired t-test, and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from idls.analysis.paired import paired_difference


def test_lower_bound_matches_scipy_paired_t_test():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.1, 0.4, size=12)
    cand = base + rng.normal(0.02, 0.03, size=12)
    diff = paired_difference(dict(enumerate(cand)), dict(enumerate(base)))
    oracle = stats.ttest_rel(cand, base, alternative="greater").confidence_interval(0.95)
    assert diff.n == 12
    assert diff.mean == pytest.approx(float(np.mean(cand - base)))
    assert diff.lower_bound() == pytest.approx(oracle.low)
    assert diff.half_width() == pytest.approx(diff.mean - oracle.low)


def test_only_keys_both_sides_have_count_and_nans_are_skipped():
    diff = paired_difference({"a": 0.3, "b": 0.5, "c": math.nan, "d": 9.0}, {"a": 0.1, "b": 0.2, "c": 0.1})
    assert diff.n == 2
    assert diff.mean == pytest.approx(0.25)


def test_fewer_than_two_pairs_give_no_bound():
    assert math.isnan(paired_difference({"a": 0.3}, {"a": 0.1}).lower_bound())
    empty = paired_difference({}, {"a": 0.1})
    assert empty.n == 0 and math.isnan(empty.mean)


def test_identical_gaps_have_no_sampling_error():
    diff = paired_difference({i: 0.5 for i in range(5)}, {i: 0.3 for i in range(5)})
    assert diff.standard_error == pytest.approx(0.0, abs=1e-12)
    assert diff.lower_bound() == pytest.approx(0.2)


UNIT = st.floats(0, 1, allow_subnormal=False)  # the suite flushes subnormals to zero


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(UNIT, UNIT), min_size=2, max_size=30), st.floats(-0.5, 0.5, allow_subnormal=False))
def test_bound_lies_below_the_mean_and_moves_with_a_shift(pairs, shift):
    cand = {i: c for i, (c, _) in enumerate(pairs)}
    base = {i: b for i, (_, b) in enumerate(pairs)}
    diff = paired_difference(cand, base)
    assert diff.lower_bound() <= diff.mean + 1e-12
    shifted = paired_difference({i: c + shift for i, c in cand.items()}, base)
    assert shifted.mean == pytest.approx(diff.mean + shift, abs=1e-9)
    assert shifted.half_width() == pytest.approx(diff.half_width(), abs=1e-9)
