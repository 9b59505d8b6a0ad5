"""Read the workflow's result files into the plain structures that the figures and tables take.

The figure and summary functions of :mod:`ats.report` work on numpy arrays and dicts so they can be
tested without files; this module is the one place that knows the result files' layouts (attack
files from :mod:`ats.attack.run`, shard files from :mod:`ats.search.scoring`, the training
history and metrics from :mod:`ats.training.loop`). Files are verified on reading against the
fingerprint the workflow expects for them: attack and shard files by their own attributes, the
training history and metrics and ``ranking.tsv`` by their provenance records
(:mod:`ats.runtime.provenance`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ats.defence.names import parse_defence
from ats.policies import format_policy, parse_policy
from ats.runtime.hdf5 import read_h5
from ats.runtime.provenance import read_verified_json, read_verified_tsv
from ats.training.stages import FINAL

ATTACK_METRICS = ("psnr", "ssim", "mse", "feature_mse")
ORIGINAL_METRICS = ("psnr_original", "ssim_original")
"""Registered scores against the untransformed image, in attack files that have them."""

PathLike = str | os.PathLike


def load_accuracy(metrics_json: PathLike, *, expected_fingerprint: str) -> float:
    """The final test accuracy (a fraction) recorded by a training job."""
    return float(read_verified_json(metrics_json, expected_fingerprint=expected_fingerprint)["test_accuracy"])


def load_attack_metrics(attack_h5: PathLike, *, expected_fingerprint: str,
                        lpips: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """The per-image scores of one attack file, as :func:`ats.report.summary.summary_rows` takes them.

    ``psnr``, ``ssim``, ``mse``, ``feature_mse``, ``diverged``, ``target_indices``, every stored
    ``chance/{guess}/{metric}`` and the ``training_step`` of the attacked model; where the file has
    them, ``psnr_original``, ``ssim_original`` and ``chance_original/{guess}/{metric}``; with an
    ``lpips`` scorer (:class:`ats.attack.lpips.LpipsScorer`), ``lpips`` of each reconstruction to
    its shared image.
    """
    arrays, attrs = read_h5(attack_h5, expected_fingerprint=expected_fingerprint)
    metrics: dict[str, Any] = {name: arrays[f"metrics/{name}"] for name in ATTACK_METRICS}
    metrics.update({name: arrays[f"metrics/{name}"] for name in ORIGINAL_METRICS if f"metrics/{name}" in arrays})
    metrics.update({name: values for name, values in arrays.items()
                    if name.startswith(("chance/", "chance_original/"))})
    metrics["diverged"] = arrays["diverged"].astype(bool)
    metrics["target_indices"] = arrays["target_indices"]
    metrics["training_step"] = int(attrs.get("training_step", -1))
    if lpips is not None:
        metrics["lpips"] = lpips(np.clip(arrays["reconstructions"], 0.0, 1.0), arrays["ground_truth"])
    return metrics


def load_reconstructions(attack_h5: PathLike, count: int, *,
                         expected_fingerprint: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``count`` shared images, their reconstructions (both in [0, 1]) and PSNRs."""
    arrays, _ = read_h5(attack_h5, expected_fingerprint=expected_fingerprint)
    return (
        arrays["ground_truth"][:count],
        np.clip(arrays["reconstructions"][:count], 0.0, 1.0),
        arrays["metrics/psnr"][:count],
    )


def load_history(history_tsv: PathLike, *, expected_fingerprint: str) -> dict[str, np.ndarray]:
    """A training history as one float array per column (empty cells become NaN)."""
    rows = read_verified_tsv(history_tsv, expected_fingerprint=expected_fingerprint)
    return {
        column: np.array([float(row[column]) if row[column] not in ("", "nan") else math.nan for row in rows])
        for column in rows[0]
    }


def load_curves(shard_paths: Sequence[PathLike], shard_fingerprints: Sequence[str],
                policies: Sequence[str]) -> dict[str, np.ndarray]:
    """The (images × points) gradient-similarity curves of ``policies``, from the score shards.

    Policies absent from the shards are left out (the figure says which are missing).
    """
    from ats.search.scoring import read_scores

    wanted = set(policies)
    found = {score.policy: score.curves for score in read_scores(shard_paths, shard_fingerprints)
             if score.policy in wanted}
    return {policy: found[policy] for policy in policies if policy in found}


def spri_psnr_points(summary: Sequence[Mapping[str, Any]], ranking_tsv: PathLike, *,
                     ranking_fingerprint: str) -> list[dict[str, Any]]:
    """The S_pri of each trained policy defence, ``none`` and ``crop``, beside its attack PSNR.

    One entry per summary row of such a defence (every attack and stage), with the row's
    ``defence``, ``attack``, ``stage``, ``psnr_mean``, ``psnr_ci_low``, ``psnr_ci_high`` and
    ``psnr_chance``, plus ``s_pri`` and ``s_pri_from``, which says where the S_pri comes from:

    * ``search``: the policy's own score in ``ranking.tsv`` (``none`` is the search's empty policy);
    * ``sub-policies``: a policy the search never scored whose sub-policies it all scored, such as
      the hybrid ``a+b``. The pipeline applies one sub-policy per image, drawn uniformly, so the
      expected S_pri of the policy is the mean of its sub-policies' scores;
    * ``""``: no S_pri (``s_pri`` is NaN): ``crop``, whose crop-and-flip transform alone the search
      does not score, or a policy with an unscored sub-policy.

    ``ranking_tsv`` is verified against ``ranking_fingerprint``.
    """
    ranking = read_verified_tsv(ranking_tsv, expected_fingerprint=ranking_fingerprint)
    scores = {row["policy"]: float(row["s_pri_mean"]) for row in ranking}
    entries = []
    for row in summary:
        defence = str(row["defence"])
        if defence == "none":
            s_pri, source = scores.get("", math.nan), "search" if "" in scores else ""
        elif defence == "crop":
            s_pri, source = math.nan, ""
        elif parse_defence(defence).kind != "policy":
            continue
        elif defence in scores:
            s_pri, source = scores[defence], "search"
        else:
            members = [format_policy((sub_policy,)) for sub_policy in parse_policy(defence)]
            known = len(members) > 1 and all(member in scores for member in members)
            s_pri = float(np.mean([scores[member] for member in members])) if known else math.nan
            source = "sub-policies" if known else ""
        entries.append({"defence": defence, "attack": row["attack"], "stage": row.get("stage", FINAL),
                        "s_pri": s_pri, "s_pri_from": source,
                        **{key: float(row.get(key, math.nan)) for key in
                           ("psnr_mean", "psnr_ci_low", "psnr_ci_high", "psnr_chance")}})
    return entries
