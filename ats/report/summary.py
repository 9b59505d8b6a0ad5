"""The summary table (``results/summary.tsv``) and the correlation statistics of the report.

One row per defence and attack joins the utility of the trained model (its final test accuracy)
with the privacy it gave (how well the attack reconstructed the test images). Attacks whose loss
became NaN or Inf (``diverged``) produced no reconstruction worth scoring, so they are counted in
``n_diverged`` and left out of every mean; averaging them in would make a numerically fragile attack
look like a strong defence.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from ats.runtime.atomic import read_tsv, write_tsv

PER_IMAGE_METRICS: tuple[str, ...] = ("psnr", "ssim", "mse", "feature_mse")
"""Per-image reconstruction metrics the attack stage stores, besides the ``diverged`` flag."""

SUMMARY_COLUMNS: dict[str, Callable[[Any], Any]] = {
    "defence": str,
    "attack": str,
    "accuracy": float,
    "psnr_mean": float,
    "psnr_std": float,
    "psnr_median": float,
    "ssim_mean": float,
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
    defences: Sequence[str],
    attacks: Sequence[str],
    accuracy: Mapping[str, float],
    per_image: Mapping[tuple[str, str], Mapping[str, np.ndarray]],
) -> list[dict[str, Any]]:
    """One row per defence and attack (defence-major, in the given orders).

    ``accuracy[defence]`` is the final test accuracy as a fraction in [0, 1], as the training stage
    writes it; it is kept as a fraction so that no precision is lost (figures show percent).
    ``per_image[(defence, attack)]`` holds equally long arrays ``psnr``, ``ssim``, ``mse``,
    ``feature_mse`` and the boolean ``diverged``. ``n_images`` counts every attacked image,
    ``n_diverged`` those whose attack diverged; the statistics use the other images, and of those
    only finite values (a perfect reconstruction has PSNR = inf, which would swamp any mean).
    ``psnr_std`` is the spread of the measured images (``ddof=0``), so one image gives 0, not NaN.
    A statistic over no values is NaN.
    """
    rows = []
    for defence in defences:
        for attack in attacks:
            metrics = per_image[(defence, attack)]
            diverged = np.asarray(metrics["diverged"], dtype=bool).ravel()
            kept = {
                name: _finite_kept(metrics[name], ~diverged, f"{defence}/{attack}: {name}")
                for name in PER_IMAGE_METRICS
            }
            row = {
                "defence": defence,
                "attack": attack,
                "accuracy": accuracy[defence],
                "psnr_mean": _statistic(np.mean, kept["psnr"]),
                "psnr_std": _statistic(np.std, kept["psnr"]),
                "psnr_median": _statistic(np.median, kept["psnr"]),
                "ssim_mean": _statistic(np.mean, kept["ssim"]),
                "mse_mean": _statistic(np.mean, kept["mse"]),
                "feature_mse_mean": _statistic(np.mean, kept["feature_mse"]),
                "n_images": diverged.size,
                "n_diverged": int(diverged.sum()),
            }
            rows.append(_typed(row))
    return rows


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


def write_summary(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the summary table atomically as TSV (floats at full precision, NaN as ``nan``)."""
    typed = [_typed(row) for row in rows]
    write_tsv(path, list(SUMMARY_COLUMNS), [[row[column] for column in SUMMARY_COLUMNS] for row in typed])


def read_summary(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a table written by :func:`write_summary`, with numbers as ``float`` and ``int``."""
    try:
        return [_typed(row) for row in read_tsv(path)]
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
