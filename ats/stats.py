"""Uncertainty of the means the report compares: bootstrap intervals, torch-free.

A PSNR averaged over eight attacked images, or an S_pri averaged over ten evaluation images, is an
estimate; comparing two of them without an interval mistakes noise for a ranking. Every mean that
the summary, the ranking and the selection report is therefore paired with a bias-corrected and
accelerated (BCa) bootstrap interval (Efron 1987), computed by :func:`scipy.stats.bootstrap` from a
generator seeded by the caller, so the same values always give the same interval.

Differences between two defences on the same targets, or two policies on the same images, are
*paired*: the interval of the mean per-item difference, which removes the spread that the items
themselves contribute (:func:`paired_difference`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE_LEVEL = 0.95
"""Coverage of every interval the project reports."""

BOOTSTRAP_RESAMPLES = 9999
"""Resamples per interval: enough for stable 2.5 % and 97.5 % quantiles, cheap for tens of values."""


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval; ``n`` counts the finite values it was computed from.

    The interval is NaN when it cannot be estimated (fewer than two values); a sample of equal
    values has the zero-width interval at its value.
    """

    mean: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or entirely below zero (NaN intervals never do)."""
        return bool(self.low > 0 or self.high < 0)


def mean_interval(values: np.ndarray, *, seed: int, confidence: float = CONFIDENCE_LEVEL,
                  resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """The mean of the finite ``values`` and its BCa bootstrap interval.

    Non-finite values (a diverged attack, a perfect reconstruction's infinite PSNR) are dropped, as
    in every mean of the summary. ``seed`` makes the resampling reproducible.
    """
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    n = int(data.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(data.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    if np.ptp(data) == 0:
        return Estimate(mean, mean, mean, n)
    with warnings.catch_warnings():
        # A sample with few distinct values can make BCa's bias correction infinite; scipy then
        # warns and returns NaN, which is what the caller should see.
        warnings.simplefilter("ignore", category=stats.DegenerateDataWarning)
        result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=resamples,
                                 method="BCa", vectorized=True, rng=np.random.default_rng(seed))
    return Estimate(mean, float(result.confidence_interval.low), float(result.confidence_interval.high), n)


def paired_difference(values: np.ndarray, reference: np.ndarray, *, seed: int,
                      confidence: float = CONFIDENCE_LEVEL) -> Estimate:
    """Mean of ``values − reference`` over the items where both are finite, with its interval.

    Both arrays hold one value per item, in the same order (the same targets, the same images).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    reference = np.asarray(reference, dtype=np.float64).ravel()
    if values.shape != reference.shape:
        raise ValueError(f"paired values need the same items: {values.size} values, {reference.size} references")
    both = np.isfinite(values) & np.isfinite(reference)
    return mean_interval(values[both] - reference[both], seed=seed, confidence=confidence)
