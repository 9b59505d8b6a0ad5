"""Read the workflow's result files into the plain structures that the figures and tables take.

The figure and summary functions of :mod:`ats.report` work on numpy arrays and dicts so they can be
tested without files; this module is the one place that knows the result files' layouts (attack
files from :mod:`ats.attack.run`, shard files from :mod:`ats.search.scoring`, the training
history and metrics from :mod:`ats.training.loop`). Files are verified on reading.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ats.runtime.atomic import read_tsv
from ats.runtime.hdf5 import read_h5
from ats.training.stages import FINAL

ATTACK_METRICS = ("psnr", "ssim", "mse", "feature_mse")
ORIGINAL_METRICS = ("psnr_original", "ssim_original")
"""Registered scores against the untransformed image, in attack files that have them."""

PathLike = str | os.PathLike


def load_accuracy(metrics_json: PathLike) -> float:
    """The final test accuracy (a fraction) recorded by a training job."""
    with open(metrics_json) as handle:
        return float(json.load(handle)["test_accuracy"])


def load_attack_metrics(attack_h5: PathLike) -> dict[str, Any]:
    """The per-image scores of one attack file, as :func:`ats.report.summary.summary_rows` takes them.

    ``psnr``, ``ssim``, ``mse``, ``feature_mse``, ``diverged``, ``target_indices``, every stored
    ``chance/{guess}/{metric}`` and the ``training_step`` of the attacked model; where the file has
    them, ``psnr_original``, ``ssim_original`` and ``chance_original/{guess}/{metric}``.
    """
    arrays, attrs = read_h5(attack_h5)
    metrics: dict[str, Any] = {name: arrays[f"metrics/{name}"] for name in ATTACK_METRICS}
    metrics.update({name: arrays[f"metrics/{name}"] for name in ORIGINAL_METRICS if f"metrics/{name}" in arrays})
    metrics.update({name: values for name, values in arrays.items() if name.startswith(("chance/", "chance_original/"))})
    metrics["diverged"] = arrays["diverged"].astype(bool)
    metrics["target_indices"] = arrays["target_indices"]
    metrics["training_step"] = int(attrs.get("training_step", -1))
    return metrics


def load_reconstructions(attack_h5: PathLike, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``count`` shared images, their reconstructions (both in [0, 1]) and PSNRs."""
    arrays, _ = read_h5(attack_h5)
    return (
        arrays["ground_truth"][:count],
        np.clip(arrays["reconstructions"][:count], 0.0, 1.0),
        arrays["metrics/psnr"][:count],
    )


def load_history(history_tsv: PathLike) -> dict[str, np.ndarray]:
    """A training history as one float array per column (empty cells become NaN)."""
    rows = read_tsv(history_tsv)
    return {
        column: np.array([float(row[column]) if row[column] not in ("", "nan") else math.nan for row in rows])
        for column in rows[0]
    }


def load_curves(shard_paths: Sequence[PathLike], policies: Sequence[str]) -> dict[str, np.ndarray]:
    """The (images × points) gradient-similarity curves of ``policies``, from the score shards.

    Policies absent from the shards are left out (the figure says which are missing).
    """
    from ats.search.scoring import read_scores

    wanted = set(policies)
    found = {score.policy: score.curves for score in read_scores(shard_paths) if score.policy in wanted}
    return {policy: found[policy] for policy in policies if policy in found}


def spri_psnr_points(
    summary: Sequence[Mapping[str, Any]], ranking_tsv: PathLike, attack: str | None = None
) -> list[tuple[str, float, float]]:
    """``(policy, S_pri, PSNR)`` for every trained defence that has an S_pri from the search.

    The ``none`` defence (no augmentation) is the empty policy of the search. ``attack`` picks the
    attack whose PSNR is used (default: the first attack in the summary). The PSNR is that of the
    trained model (stage ``final``), which is what the search claims to predict.
    """
    s_pri = {row["policy"]: float(row["s_pri_mean"]) for row in read_tsv(ranking_tsv)}
    attack = attack or summary[0]["attack"]
    points = []
    for row in summary:
        policy = "" if row["defence"] == "none" else row["defence"]
        if row["attack"] == attack and row.get("stage", FINAL) == FINAL and policy in s_pri:
            points.append((row["defence"], s_pri[policy], float(row["psnr_mean"])))
    return points
