"""Ranking the scored policies and choosing the ones to train (spec §1.5). Torch-free.

Rules:

* ``cvpr`` (the CVPR code): ascending mean S_pri over the S_pri images.
* ``variance`` (the later code, PR #2): ascending alpha·norm(m) + (1 − alpha)·norm(v), where m and
  v are the mean and the population variance of a policy's per-class mean S_pri, and norm is a
  min–max normalisation across the ranked policies (all zeros when they are all equal, where the
  original divided by zero).

A policy is eligible when its mean S_acc over the runs is at least the threshold. The empty policy
``""`` is the no-transform reference: it is ranked and listed, never chosen. Policies with a
non-finite score are listed last with status ``nonfinite`` and never chosen.

The original printed the sorted list and left the choice to a person; here the ``top_k`` best
eligible policies are chosen, and the hybrid joins with ``+`` the best ``top_k`` eligible policies
that share no op index, found by a greedy walk down the ranking (the authors' later notebook).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ats.policies import describe_policy, parse_policy
from ats.runtime.atomic import write_json, write_tsv
from ats.search.scoring import PolicyScores, read_scores

_log = logging.getLogger(__name__)

SELECTION_RULES: tuple[str, ...] = ("cvpr", "variance")
PAPER_ACCURACY_THRESHOLD = -85.0
PAPER_NUM_CLASSES = 100
ACCURACY_WINDOW = 100
RANKING_COLUMNS = ("policy", "s_pri_mean", "s_pri_var", "s_acc_mean", "score", "passed_threshold", "rank",
                   "status", "description")
REFERENCE_POLICY = ""


def expected_distinct_labels(num_classes: int, window: int = ACCURACY_WINDOW) -> float:
    """E[#distinct labels among ``window`` uniform draws from ``num_classes``] = K(1 − (1 − 1/K)^window)."""
    return num_classes * (1.0 - (1.0 - 1.0 / num_classes) ** window)


def default_accuracy_threshold(num_classes: int) -> float:
    """The paper's −85 for 100 classes, scaled to ``num_classes`` by the expected S_acc batch size.

    An S_acc run keeps one image per label of a 100-image window, so its batch has K_batch ≈
    E(num_classes) images, and S_acc ≤ ≈ −K_batch (trace of the correlation matrix = K_batch and
    log λ + 1/λ ≥ 1). The paper's −85 for CIFAR-100 (E(100) ≈ 63.4) therefore means "at most
    ≈ 1.34× the best attainable magnitude"; a fixed −85 would let every Fashion-MNIST policy pass
    (S_acc ≥ ≈ −10 there). Scaling by E(K)/E(100) keeps the same relative bar (≈ −13.4 for 10).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    scale = expected_distinct_labels(num_classes) / expected_distinct_labels(PAPER_NUM_CLASSES)
    return PAPER_ACCURACY_THRESHOLD * scale


@dataclass(frozen=True)
class RankedPolicy:
    """One row of ``ranking.tsv``. ``rank`` is 1-based over all rows (the reference included).

    ``status``: ``ok``; ``reference`` for the empty policy; ``nonfinite`` when a score is NaN/Inf.
    """

    policy: str
    s_pri_mean: float
    s_pri_var: float
    s_acc_mean: float
    score: float
    passed_threshold: bool
    rank: int
    status: str
    description: str

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and self.passed_threshold

    def row(self) -> list[Any]:
        return [self.policy, self.s_pri_mean, self.s_pri_var, self.s_acc_mean, self.score,
                self.passed_threshold, self.rank, self.status, self.description]


def _min_max(values: np.ndarray) -> np.ndarray:
    """(x − min)/(max − min); all zeros when every value is equal (the original divided by zero)."""
    spread = values.max() - values.min() if values.size else 0.0
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


def rank_policies(
    scores: Sequence[PolicyScores], rule: str = "cvpr", alpha: float = 0.7, *, threshold: float
) -> list[RankedPolicy]:
    """Rank ``scores`` best first by ``rule``; non-finite policies last (module docstring)."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"selection rule must be one of {', '.join(SELECTION_RULES)}, got {rule!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    names = [s.policy for s in scores]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"policies scored more than once: {duplicates[:5]}")
    finite = [s for s in scores if s.is_finite]
    if rule == "cvpr":
        keys = np.array([s.spri_mean for s in finite], dtype=np.float64)
    else:
        class_means = np.array([np.mean(s.spri_class_means) for s in finite], dtype=np.float64)
        class_vars = np.array([s.spri_class_var for s in finite], dtype=np.float64)
        keys = alpha * _min_max(class_means) + (1 - alpha) * _min_max(class_vars)
    order = sorted(range(len(finite)), key=lambda i: (keys[i], finite[i].policy))
    ranked_scores = [(finite[i], float(keys[i])) for i in order]
    ranked_scores += [(s, math.nan) for s in sorted((s for s in scores if not s.is_finite), key=lambda s: s.policy)]
    ranked = []
    for rank, (entry, key) in enumerate(ranked_scores, start=1):
        status = "nonfinite" if not entry.is_finite else "reference" if entry.policy == REFERENCE_POLICY else "ok"
        ranked.append(RankedPolicy(
            policy=entry.policy, s_pri_mean=entry.spri_mean, s_pri_var=entry.spri_class_var,
            s_acc_mean=entry.sacc_mean, score=key,
            passed_threshold=bool(math.isfinite(entry.sacc_mean) and entry.sacc_mean >= threshold),
            rank=rank, status=status, description=describe_policy(entry.policy),
        ))
    return ranked


def _op_indices(policy: str) -> set[int]:
    return {index for sub_policy in parse_policy(policy) for index in sub_policy}


def choose_policies(ranked: Sequence[RankedPolicy], top_k: int) -> dict[str, Any]:
    """The ``top_k`` best eligible policies and their non-overlapping hybrid (module docstring).

    Returns ``{"top_k": [...], "hybrid": "a+b" | None, "hybrid_members": [...]}``. The hybrid needs
    ``top_k`` ≥ 2 eligible policies with pairwise disjoint op indices; otherwise it is ``None``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    eligible = [entry.policy for entry in sorted(ranked, key=lambda entry: entry.rank) if entry.eligible]
    members: list[str] = []
    used_ops: set[int] = set()
    for policy in eligible:
        if len(members) == top_k:
            break
        ops = _op_indices(policy)
        if not ops & used_ops:
            members.append(policy)
            used_ops |= ops
    has_hybrid = top_k >= 2 and len(members) == top_k
    return {
        "top_k": eligible[:top_k],
        "hybrid": "+".join(members) if has_hybrid else None,
        "hybrid_members": members if has_hybrid else [],
    }


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def select_policies(
    *,
    shard_paths: Sequence[str | os.PathLike],
    ranking_tsv: str | os.PathLike,
    selection_json: str | os.PathLike,
    rule: str,
    alpha: float,
    threshold: float | None,
    top_k: int,
    num_classes: int,
) -> None:
    """Stage function: gather the shards, write ``ranking.tsv`` and ``selection.json`` atomically.

    ``threshold`` ``None`` means :func:`default_accuracy_threshold` of ``num_classes``.
    """
    threshold_source = "config" if threshold is not None else "default"
    threshold = float(threshold) if threshold is not None else default_accuracy_threshold(num_classes)
    scores = read_scores(shard_paths)
    ranked = rank_policies(scores, rule, alpha, threshold=threshold)
    choice = choose_policies(ranked, top_k)
    write_tsv(ranking_tsv, RANKING_COLUMNS, [entry.row() for entry in ranked])
    reference = next((entry for entry in ranked if entry.policy == REFERENCE_POLICY), None)
    summary = {
        **choice,
        "rule": rule,
        "alpha": alpha,
        "accuracy_threshold": threshold,
        "accuracy_threshold_source": threshold_source,
        "num_scored": len(ranked),
        "num_eligible": sum(entry.eligible for entry in ranked),
        "num_nonfinite": sum(entry.status == "nonfinite" for entry in ranked),
        "reference": None if reference is None else {
            "s_pri_mean": _json_number(reference.s_pri_mean), "s_acc_mean": _json_number(reference.s_acc_mean),
            "rank": reference.rank},
    }
    write_json(selection_json, summary)
    if len(choice["top_k"]) < top_k:
        _log.warning("only %d of the requested top_k=%d policies pass the S_acc threshold %.3f",
                     len(choice["top_k"]), top_k, threshold)
    if top_k >= 2 and choice["hybrid"] is None:
        _log.warning("no hybrid: fewer than %d eligible policies with disjoint op indices", top_k)
    _log.info("ranked %d policies by rule %r (S_acc threshold %.3f, %s): top %s, hybrid %r",
              len(ranked), rule, threshold, threshold_source, choice["top_k"], choice["hybrid"])
