"""The summary table (``results/summary.tsv``) and the correlation statistics of the report.

One row per defence, training stage and attack joins the utility of the trained model (its final
test accuracy) with the privacy it gave at that stage (how well the attack reconstructed the test
images). Attacks whose loss became NaN or Inf (``diverged``) produced no reconstruction worth
scoring, so they are counted in ``n_diverged`` and left out of every mean; averaging them in would
make a numerically fragile attack look like a strong defence.

A mean PSNR means something only beside what an uninformed guess scores on the same targets
(:mod:`ats.attack.chance`) and beside its uncertainty, so every row also carries:

* ``psnr_chance``/``ssim_chance``: the best uninformed guess's mean (``chance_guess`` names the
  PSNR one), over the same images as ``psnr_mean``;
* ``psnr_gain``: ``psnr_mean − psnr_chance``, with the interval of the per-image gain over that
  guess, and ``vs_chance`` saying in words whether the attack is above, below or
  indistinguishable from chance (the gain's interval excludes 0 or not);
* BCa bootstrap 95 % intervals of the means (:mod:`ats.stats`);
* ``psnr_diff_none``: the paired difference in PSNR from the ``none`` defence on the same
  targets, at the same stage and with the same attack (NaN for ``none`` itself, or without it).

The shared image is the *transformed* one, but the client's secret is the untransformed image, and
a reconstruction that is right up to a shift still leaks it; the ``*_original`` columns score each
attack against the untransformed image at its best alignment (:mod:`ats.attack.registration`),
with their own chance level and gain.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from ats.attack.chance import CHANCE_GUESSES
from ats.runtime.atomic import write_tsv
from ats.runtime.provenance import read_verified_tsv, write_with_provenance
from ats.runtime.seeding import derive_seed
from ats.stats import Estimate, mean_interval, paired_difference

PER_IMAGE_METRICS: tuple[str, ...] = ("psnr", "ssim", "mse", "feature_mse")
"""Per-image reconstruction metrics the attack stage stores, besides the ``diverged`` flag."""

REFERENCE_DEFENCE = "none"
"""The defence every other one is compared with: no augmentation, no gradient defence."""

ABOVE_CHANCE, AT_CHANCE, BELOW_CHANCE = "above chance", "indistinguishable from chance", "below chance"

SUMMARY_COLUMNS: dict[str, Callable[[Any], Any]] = {
    "defence": str,
    "attack": str,
    "stage": str,
    "training_step": int,
    "accuracy": float,
    "psnr_mean": float,
    "psnr_ci_low": float,
    "psnr_ci_high": float,
    "psnr_std": float,
    "psnr_median": float,
    "psnr_chance": float,
    "chance_guess": str,
    "psnr_gain": float,
    "psnr_gain_ci_low": float,
    "psnr_gain_ci_high": float,
    "vs_chance": str,
    "ssim_mean": float,
    "ssim_ci_low": float,
    "ssim_ci_high": float,
    "ssim_chance": float,
    "lpips_mean": float,
    "lpips_ci_low": float,
    "lpips_ci_high": float,
    "psnr_diff_none": float,
    "psnr_diff_none_ci_low": float,
    "psnr_diff_none_ci_high": float,
    "psnr_original": float,
    "psnr_original_ci_low": float,
    "psnr_original_ci_high": float,
    "psnr_original_chance": float,
    "psnr_original_gain": float,
    "psnr_original_gain_ci_low": float,
    "psnr_original_gain_ci_high": float,
    "vs_chance_original": str,
    "ssim_original": float,
    "ssim_original_ci_low": float,
    "ssim_original_ci_high": float,
    "ssim_original_chance": float,
    "mse_mean": float,
    "feature_mse_mean": float,
    "n_images": int,
    "n_diverged": int,
}
"""The columns of the summary table, in order, with the type each cell is written and read as.

Converting through these types on both write and read keeps numpy scalars out of the TSV (their
``repr`` is ``np.float64(…)`` under numpy 2) and gives readers numbers, not text.
"""

MIN_CORRELATION_POINTS = 3
"""Fewer points always give |r| = 1 (two points) or nothing, which says nothing about a link."""


def summary_rows(
    records: Sequence[Mapping[str, Any]],
    accuracy: Mapping[str, float],
    *,
    seed: int,
) -> list[dict[str, Any]]:
    """One row per attack record, in the given order.

    Each record holds ``defence``, ``stage``, ``attack``, ``training_step``, ``target_indices`` and
    equally long per-image arrays ``psnr``, ``ssim``, ``mse``, ``feature_mse``, optionally ``lpips``
    (:mod:`ats.attack.lpips`; without it the LPIPS columns are NaN), the boolean ``diverged`` and,
    per guess of :data:`ats.attack.chance.CHANCE_GUESSES`, ``chance/{guess}/psnr`` and
    ``chance/{guess}/ssim`` (as :func:`ats.report.loaders.load_attack_metrics` reads them).
    ``accuracy[defence]`` is the final test accuracy as a fraction in [0, 1], kept as a fraction so
    that no precision is lost (figures show percent).

    ``n_images`` counts every attacked image, ``n_diverged`` those whose attack diverged; the
    statistics use the other images, and of those only finite values (a perfect reconstruction has
    PSNR = inf, which would swamp any mean). ``psnr_std`` is the spread of the measured images
    (``ddof=0``), so one image gives 0, not NaN. A statistic over no values is NaN. ``seed`` seeds
    the bootstrap of every interval (each row and metric its own stream).
    """
    by_key = {(r["defence"], r["stage"], r["attack"]): r for r in records}
    rows = []
    for record in records:
        defence, stage, attack = record["defence"], record["stage"], record["attack"]
        name = f"{defence}/{stage}/{attack}"
        diverged = np.asarray(record["diverged"], dtype=bool).ravel()
        kept = {metric: _finite_kept(record[metric], ~diverged, f"{name}: {metric}") for metric in PER_IMAGE_METRICS}

        def interval(values: np.ndarray, what: str) -> Estimate:
            return mean_interval(values, seed=derive_seed(seed, "summary", defence, stage, attack, what))

        psnr, ssim = interval(kept["psnr"], "psnr"), interval(kept["ssim"], "ssim")
        lpips = (interval(_finite_kept(record["lpips"], ~diverged, f"{name}: lpips"), "lpips") if "lpips" in record
                 else Estimate(math.nan, math.nan, math.nan, 0))
        guess, gain = _gain_over_chance(record, diverged, name, interval, "psnr", "chance")
        original = _against_original(record, diverged, name, interval)
        reference = by_key.get((REFERENCE_DEFENCE, stage, attack))
        difference = _paired_with_reference(record, reference, name, seed)
        row = {
            "defence": defence,
            "attack": attack,
            "stage": stage,
            "training_step": record["training_step"],
            "accuracy": accuracy[defence],
            "psnr_mean": psnr.mean,
            "psnr_ci_low": psnr.low,
            "psnr_ci_high": psnr.high,
            "psnr_std": _statistic(np.std, kept["psnr"]),
            "psnr_median": _statistic(np.median, kept["psnr"]),
            "psnr_chance": psnr.mean - gain.mean if guess else math.nan,
            "chance_guess": guess,
            "psnr_gain": gain.mean,
            "psnr_gain_ci_low": gain.low,
            "psnr_gain_ci_high": gain.high,
            "vs_chance": _versus_chance(gain),
            "ssim_mean": ssim.mean,
            "ssim_ci_low": ssim.low,
            "ssim_ci_high": ssim.high,
            "ssim_chance": _best_chance_mean(record, diverged, "ssim", "chance"),
            "lpips_mean": lpips.mean,
            "lpips_ci_low": lpips.low,
            "lpips_ci_high": lpips.high,
            "psnr_diff_none": difference.mean,
            "psnr_diff_none_ci_low": difference.low,
            "psnr_diff_none_ci_high": difference.high,
            **original,
            "mse_mean": _statistic(np.mean, kept["mse"]),
            "feature_mse_mean": _statistic(np.mean, kept["feature_mse"]),
            "n_images": diverged.size,
            "n_diverged": int(diverged.sum()),
        }
        rows.append(_typed(row))
    return rows


def _usable(record: Mapping[str, Any], diverged: np.ndarray, metric: str) -> np.ndarray:
    """Images whose attack did not diverge and whose ``metric`` is finite."""
    values = np.asarray(record[metric], dtype=np.float64).ravel()
    return ~diverged & np.isfinite(values)


def _chance_means(record: Mapping[str, Any], keep: np.ndarray, prefix: str, metric: str) -> dict[str, float]:
    """Mean of each stored guess's ``{prefix}/{guess}/{metric}`` over the ``keep`` images."""
    means = {}
    for guess in CHANCE_GUESSES:
        key = f"{prefix}/{guess}/{metric}"
        if key in record and keep.any():
            means[guess] = float(np.mean(np.asarray(record[key], dtype=np.float64).ravel()[keep]))
    return means


def _best_chance_mean(record: Mapping[str, Any], diverged: np.ndarray, metric: str, prefix: str,
                      scored: str | None = None) -> float:
    """The best guess's mean ``metric`` over the images where ``scored`` (default ``metric``) is usable."""
    means = _chance_means(record, _usable(record, diverged, scored or metric), prefix, metric)
    return max(means.values()) if means else math.nan


def _gain_over_chance(record: Mapping[str, Any], diverged: np.ndarray, name: str,
                      interval: Callable[[np.ndarray, str], Estimate], metric: str,
                      prefix: str) -> tuple[str, Estimate]:
    """The best PSNR guess (by its mean over the measured images) and the per-image gain over it.

    ``metric`` is the record's per-image PSNR (``psnr`` or ``psnr_original``), ``prefix`` the group of
    its guesses (``chance`` or ``chance_original``).
    """
    keep = _usable(record, diverged, metric)
    means = _chance_means(record, keep, prefix, "psnr")
    if not means:
        return "", Estimate(math.nan, math.nan, math.nan, 0)
    guess = max(means, key=lambda g: (means[g], -CHANCE_GUESSES.index(g)))
    values = np.asarray(record[metric], dtype=np.float64).ravel()
    chance = np.asarray(record[f"{prefix}/{guess}/psnr"], dtype=np.float64).ravel()
    if chance.shape != values.shape:
        raise ValueError(f"{name}: {prefix}/{guess}/psnr has {chance.size} values for {values.size} attacked images")
    return guess, interval(values[keep] - chance[keep], f"{metric} gain")


def _against_original(record: Mapping[str, Any], diverged: np.ndarray, name: str,
                      interval: Callable[[np.ndarray, str], Estimate]) -> dict[str, Any]:
    """The ``*_original`` columns: registered scores against the untransformed image (NaN without them)."""
    if "psnr_original" not in record:
        return {column: "" if SUMMARY_COLUMNS[column] is str else math.nan
                for column in SUMMARY_COLUMNS if "_original" in column}
    psnr = interval(_finite_kept(record["psnr_original"], ~diverged, f"{name}: psnr_original"), "psnr_original")
    ssim = interval(_finite_kept(record["ssim_original"], ~diverged, f"{name}: ssim_original"), "ssim_original")
    guess, gain = _gain_over_chance(record, diverged, name, interval, "psnr_original", "chance_original")
    return {
        "psnr_original": psnr.mean,
        "psnr_original_ci_low": psnr.low,
        "psnr_original_ci_high": psnr.high,
        "psnr_original_chance": psnr.mean - gain.mean if guess else math.nan,
        "psnr_original_gain": gain.mean,
        "psnr_original_gain_ci_low": gain.low,
        "psnr_original_gain_ci_high": gain.high,
        "vs_chance_original": _versus_chance(gain),
        "ssim_original": ssim.mean,
        "ssim_original_ci_low": ssim.low,
        "ssim_original_ci_high": ssim.high,
        "ssim_original_chance": _best_chance_mean(record, diverged, "ssim", "chance_original", "ssim_original"),
    }


def _versus_chance(gain: Estimate) -> str:
    if gain.low > 0:
        return ABOVE_CHANCE
    if gain.high < 0:
        return BELOW_CHANCE
    return AT_CHANCE


def _paired_with_reference(record: Mapping[str, Any], reference: Mapping[str, Any] | None, name: str,
                           seed: int) -> Estimate:
    """PSNR of ``record`` minus the reference defence's on the same targets (images usable in both)."""
    if reference is None or record is reference:
        return Estimate(math.nan, math.nan, math.nan, 0)
    targets = np.asarray(record["target_indices"]).ravel()
    if not np.array_equal(targets, np.asarray(reference["target_indices"]).ravel()):
        raise ValueError(f"{name}: attacked other targets than {REFERENCE_DEFENCE} at the same stage; "
                         f"a paired comparison needs the same test images")
    values = np.where(_usable(record, np.asarray(record["diverged"], bool).ravel(), "psnr"),
                      np.asarray(record["psnr"], dtype=np.float64).ravel(), np.nan)
    base = np.where(_usable(reference, np.asarray(reference["diverged"], bool).ravel(), "psnr"),
                    np.asarray(reference["psnr"], dtype=np.float64).ravel(), np.nan)
    return paired_difference(values, base, seed=derive_seed(seed, "summary", name, "difference"))


def _finite_kept(values: np.ndarray, keep: np.ndarray, what: str) -> np.ndarray:
    """The finite ``values`` where ``keep`` holds; a length mismatch is a bug upstream, so it raises."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.shape != keep.shape:
        raise ValueError(f"{what} has {values.size} values for {keep.size} attacked images")
    selected = values[keep]
    return selected[np.isfinite(selected)]


def _statistic(function: Callable[[np.ndarray], Any], values: np.ndarray) -> float:
    """``function(values)`` as a float, or NaN (without numpy's empty-slice warning) for no values."""
    return float(function(values)) if values.size else math.nan


def _typed(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` restricted to the summary columns, each cell converted to its column type."""
    missing = [column for column in SUMMARY_COLUMNS if column not in row]
    if missing:
        raise ValueError(f"summary row lacks the columns {missing}")
    return {column: convert(row[column]) for column, convert in SUMMARY_COLUMNS.items()}


def write_summary(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, fingerprint: str) -> None:
    """Write the summary table atomically as TSV (floats at full precision, NaN as ``nan``), with
    its provenance record (:mod:`ats.runtime.provenance`): ``fingerprint`` is that of everything
    it summarises."""
    typed = [_typed(row) for row in rows]
    cells = [[row[column] for column in SUMMARY_COLUMNS] for row in typed]
    write_with_provenance(path, lambda target: write_tsv(target, list(SUMMARY_COLUMNS), cells), fingerprint=fingerprint)


def read_summary(path: str | os.PathLike, *, expected_fingerprint: str) -> list[dict[str, Any]]:
    """Read a table written by :func:`write_summary` once its provenance is verified, with numbers
    as ``float`` and ``int``; :class:`ats.runtime.hdf5.CacheError` for a table of other results."""
    rows = read_verified_tsv(path, expected_fingerprint=expected_fingerprint)
    try:
        return [_typed(row) for row in rows]
    except ValueError as error:
        raise ValueError(f"{path}: not a summary table: {error}") from None


def correlations(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Pearson and Spearman correlations of the pairs where both ``x`` and ``y`` are finite.

    Returns ``{"pearson", "spearman", "n"}`` with ``n`` the number of finite pairs. Both
    correlations are NaN when ``n`` is below :data:`MIN_CORRELATION_POINTS` or either side is
    constant: a number would then be an artefact, not a measurement.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlations need paired values, got {x.size} x and {y.size} y")
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    n = int(x.size)
    if n < MIN_CORRELATION_POINTS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": math.nan, "spearman": math.nan, "n": n}
    return {
        "pearson": float(stats.pearsonr(x, y).statistic),
        "spearman": float(stats.spearmanr(x, y).statistic),
        "n": n,
    }
