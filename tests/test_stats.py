"""Tests of ats.stats: the bootstrap intervals behind every interval of the report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ats.stats import mean_interval, paired_difference


def test_interval_equals_scipy_bca_on_the_same_resamples():
    values = np.random.default_rng(3).normal(12.0, 2.0, size=9)
    ours = mean_interval(values, seed=5, resamples=2000)
    reference = scipy_stats.bootstrap((values,), np.mean, n_resamples=2000, method="BCa",
                                      rng=np.random.default_rng(5)).confidence_interval
    assert ours.mean == pytest.approx(values.mean())
    assert (ours.low, ours.high) == pytest.approx((reference.low, reference.high), rel=1e-12)
    assert ours.n == 9


def test_interval_is_reproducible_under_its_seed_and_changes_with_it():
    values = np.random.default_rng(0).exponential(size=12)
    assert mean_interval(values, seed=1) == mean_interval(values, seed=1)
    assert mean_interval(values, seed=1) != mean_interval(values, seed=2)


def test_coverage_of_the_mean_on_synthetic_samples():
    """About 95 % of intervals from samples of 30 normal values contain the true mean."""
    rng = np.random.default_rng(11)
    trials = 200
    covered = sum(
        interval.low <= 5.0 <= interval.high
        for interval in (mean_interval(rng.normal(5.0, 3.0, size=30), seed=trial, resamples=999)
                         for trial in range(trials))
    )
    # Binomial(200, 0.95) stays within [0.89, 0.99] with probability > 0.999; BCa undercovers slightly at n = 30.
    assert 0.89 * trials <= covered <= 0.99 * trials


def test_edge_cases_no_values_one_value_constant_values_and_non_finite_values():
    empty = mean_interval(np.array([]), seed=0)
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.low)
    single = mean_interval(np.array([4.0, np.inf, np.nan]), seed=0)
    assert (single.mean, single.n) == (4.0, 1) and math.isnan(single.low) and math.isnan(single.high)
    constant = mean_interval(np.full(5, 2.5), seed=0)
    assert (constant.mean, constant.low, constant.high, constant.n) == (2.5, 2.5, 2.5, 5)
    assert constant.excludes_zero and not single.excludes_zero and not empty.excludes_zero


def test_paired_difference_uses_the_items_finite_in_both_and_removes_their_shared_spread():
    base = np.array([5.0, 10.0, 15.0, 20.0, 25.0, np.nan])
    shifted = base + np.array([1.0, 1.1, 0.9, 1.0, 1.05, 3.0])
    estimate = paired_difference(shifted, base, seed=0)
    assert estimate.n == 5
    assert estimate.mean == pytest.approx(1.01)
    assert 0.9 <= estimate.low <= estimate.mean <= estimate.high <= 1.1
    assert estimate.excludes_zero
    # Unpaired, the same values could not tell the two apart.
    assert mean_interval(shifted[:5], seed=0).low < base[:5].mean()
    with pytest.raises(ValueError, match="same items"):
        paired_difference(np.ones(3), np.ones(4), seed=0)
