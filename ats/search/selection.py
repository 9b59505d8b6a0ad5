"""Ranking the scored policies and choosing the ones to train (docs/original-code.md §7). Torch-free.

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

How certain the choice is (a ranking of means over a few images and one draw each is an estimate):

* **Repeats.** When the scoring was repeated under independent draws (``search.repeats``), the
  ranking uses each policy's per-image S_pri averaged over the repeats and its S_acc over every run
  of every repeat; with one repeat that is exactly the single scoring. Each repeat is also ranked
  alone, and Kendall's τ between those rankings says how much the order owes to the draws.
* **Intervals.** Each policy's mean S_pri gets a BCa bootstrap interval over its images
  (:func:`ats.stats.mean_interval`).
* **Against the reference.** Each chosen policy (the top-k and the hybrid's members) is compared
  with the no-transform reference on the same images: the paired difference of per-image S_pri and
  its interval (:func:`ats.stats.paired_difference`); it is *significantly below* the reference
  when the whole interval lies below zero.

Every bootstrap is seeded from the master seed and the policy's name, so the files are reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from ats.policies import describe_policy, parse_policy
from ats.runtime.atomic import write_json, write_tsv
from ats.runtime.provenance import write_with_provenance
from ats.runtime.seeding import derive_seed
from ats.search.scoring import STATUS_NONFINITE, STATUS_OK, PolicyScores, read_scores
from ats.settings import SelectionSettings
from ats.stats import CONFIDENCE_LEVEL, Estimate, mean_interval, paired_difference

_log = logging.getLogger(__name__)

SELECTION_RULES: tuple[str, ...] = ("cvpr", "variance")
PAPER_ACCURACY_THRESHOLD = -85.0
PAPER_NUM_CLASSES = 100
ACCURACY_WINDOW = 100
RANKING_COLUMNS = ("policy", "s_pri_mean", "s_pri_ci_low", "s_pri_ci_high", "s_pri_var", "s_acc_mean", "score",
                   "passed_threshold", "rank", "status", "description")
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
    ``s_pri_ci_low``/``s_pri_ci_high``: the interval of ``s_pri_mean`` over the images, NaN until
    :func:`with_spri_intervals` fills it (and for non-finite policies).
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
    s_pri_ci_low: float = math.nan
    s_pri_ci_high: float = math.nan

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and self.passed_threshold

    def row(self) -> list[Any]:
        return [self.policy, self.s_pri_mean, self.s_pri_ci_low, self.s_pri_ci_high, self.s_pri_var, self.s_acc_mean,
                self.score, self.passed_threshold, self.rank, self.status, self.description]


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


def split_repeats(scores: Sequence[PolicyScores]) -> list[list[PolicyScores]]:
    """``scores`` grouped by repeat, repeats 0, 1, … in order.

    Raises ``ValueError`` when a repeat is missing or the repeats did not score the same policies:
    averaging or comparing them would then mix different candidate sets.
    """
    by_repeat: dict[int, list[PolicyScores]] = {}
    for entry in scores:
        by_repeat.setdefault(int(entry.repeat), []).append(entry)
    repeats = sorted(by_repeat)
    if repeats != list(range(len(repeats))):
        raise ValueError(f"score shards of repeats {repeats}: expected every repeat from 0 to {repeats[-1]}")
    groups = [by_repeat[repeat] for repeat in repeats]
    first = {entry.policy for entry in groups[0]} if groups else set()
    for repeat, group in enumerate(groups[1:], start=1):
        policies = {entry.policy for entry in group}
        if policies != first:
            differing = sorted(policies ^ first)
            raise ValueError(f"repeat {repeat} scored other policies than repeat 0 (differing: {differing[:5]})")
    return groups


def average_repeats(groups: Sequence[Sequence[PolicyScores]]) -> list[PolicyScores]:
    """One entry per policy (in repeat 0's order) that pools its repeats.

    Per-image S_pri, curves and per-class means are averaged over the repeats; S_acc keeps every run
    of every repeat, in repeat order. A policy non-finite in any repeat is non-finite. One repeat
    gives back exactly its own values, so a single scoring ranks as it always did.
    """
    if not groups:
        return []
    by_policy = [{entry.policy: entry for entry in group} for group in groups]
    pooled = []
    for first in groups[0]:
        entries = [scores[first.policy] for scores in by_policy]
        if len({entry.spri.shape for entry in entries}) > 1:
            raise ValueError(f"policy {first.policy!r}: the repeats scored different numbers of images")
        status = STATUS_OK if all(entry.status == STATUS_OK for entry in entries) else STATUS_NONFINITE
        pooled.append(PolicyScores(
            policy=first.policy, status=status, spri=np.mean([entry.spri for entry in entries], axis=0),
            curves=np.mean([entry.curves for entry in entries], axis=0), classes=first.classes,
            spri_class_means=np.mean([entry.spri_class_means for entry in entries], axis=0),
            sacc=np.concatenate([entry.sacc for entry in entries]), repeat=None,
        ))
    return pooled


def kendall_tau_matrix(rankings: Sequence[Sequence[RankedPolicy]]) -> np.ndarray:
    """Kendall's τ-b between every pair of ``rankings``: a symmetric matrix with ones on its diagonal.

    A pair is compared on the ranking keys (``score``) of the policies that are finite in both, so
    tied keys count as ties rather than as the name order that breaks them in ``rank``. NaN where
    fewer than two policies are shared or a ranking's keys are all equal.
    """
    keys = [{entry.policy: entry.score for entry in ranked if math.isfinite(entry.score)} for ranked in rankings]
    matrix = np.eye(len(keys))
    for first in range(len(keys)):
        for second in range(first + 1, len(keys)):
            shared = sorted(keys[first].keys() & keys[second].keys())
            tau = math.nan
            if len(shared) >= 2:
                tau = float(scipy_stats.kendalltau([keys[first][policy] for policy in shared],
                                                   [keys[second][policy] for policy in shared]).statistic)
            matrix[first, second] = matrix[second, first] = tau
    return matrix


def ranking_agreement(rankings: Sequence[Sequence[RankedPolicy]], top_k: int) -> dict[str, Any]:
    """How far the rankings of the single repeats agree: τ matrix, its mean and minimum over pairs,
    and each repeat's own top-k; the τ entries are ``None`` with a ``reason`` when they cannot be had."""
    summary: dict[str, Any] = {
        "kendall_tau": None, "kendall_tau_mean": None, "kendall_tau_min": None, "reason": None,
        "top_k_by_repeat": [choose_policies(ranked, top_k)["top_k"] for ranked in rankings],
    }
    if len(rankings) < 2:
        summary["reason"] = "one scoring (search.repeats = 1): there is no second ranking to compare it with"
        return summary
    matrix = kendall_tau_matrix(rankings)
    pairs = matrix[np.triu_indices(len(rankings), k=1)]
    summary["kendall_tau"] = [[_json_number(float(value)) for value in row] for row in matrix]
    if np.isfinite(pairs).all():
        summary["kendall_tau_mean"], summary["kendall_tau_min"] = float(pairs.mean()), float(pairs.min())
    else:
        summary["reason"] = "some pair of repeats shares fewer than two finite policies or has all keys equal"
    return summary


def with_spri_intervals(ranked: Sequence[RankedPolicy], scores: Sequence[PolicyScores], *,
                        seed: int) -> list[RankedPolicy]:
    """``ranked`` with the bootstrap interval of each finite policy's mean S_pri over its images.

    ``scores`` holds the per-image values behind ``ranked`` (averaged over repeats); the seed of a
    policy's bootstrap depends only on ``seed`` and the policy.
    """
    spri = {entry.policy: entry.spri for entry in scores}
    with_intervals = []
    for entry in ranked:
        if entry.status != STATUS_NONFINITE:
            policy_seed = derive_seed(seed, "selection", "s_pri interval", entry.policy)
            estimate = mean_interval(spri[entry.policy], seed=policy_seed)
            entry = dataclasses.replace(entry, s_pri_ci_low=estimate.low, s_pri_ci_high=estimate.high)
        with_intervals.append(entry)
    return with_intervals


def compare_with_reference(policies: Sequence[str], ranked: Sequence[RankedPolicy],
                           scores: Sequence[PolicyScores], *, seed: int) -> dict[str, Any]:
    """Each of ``policies`` against the no-transform reference on the same images (module docstring).

    Returns ``{"reason": None, "policies": [...]}`` with, per policy, its S_pri with interval (from
    ``ranked``), the paired difference from the reference with its interval, the number of images
    compared and ``significantly_below``; ``policies`` is ``None`` with a ``reason`` when the
    reference was not scored or has non-finite scores.
    """
    rows = {entry.policy: entry for entry in ranked}
    spri = {entry.policy: entry.spri for entry in scores}
    reference = rows.get(REFERENCE_POLICY)
    if reference is None:
        return {"reason": "the no-transform reference '' was not scored", "policies": None}
    if reference.status == STATUS_NONFINITE:
        return {"reason": "the no-transform reference '' has non-finite scores", "policies": None}
    compared = []
    for policy in dict.fromkeys(policies):
        difference: Estimate = paired_difference(spri[policy], spri[REFERENCE_POLICY],
                                                 seed=derive_seed(seed, "selection", "s_pri difference", policy))
        compared.append({
            "policy": policy,
            "s_pri_mean": _json_number(rows[policy].s_pri_mean),
            "s_pri_ci_low": _json_number(rows[policy].s_pri_ci_low),
            "s_pri_ci_high": _json_number(rows[policy].s_pri_ci_high),
            "difference_mean": _json_number(difference.mean),
            "difference_ci_low": _json_number(difference.low),
            "difference_ci_high": _json_number(difference.high),
            "n_images": difference.n,
            "significantly_below": bool(difference.high < 0),
        })
    return {"reason": None, "policies": compared}


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def describe_uncertainty(selection: Mapping[str, Any]) -> list[str]:
    """In words, from a ``selection.json``: how well the repeated rankings agree, and whether each
    chosen policy's S_pri is significantly below the no-transform reference's (the log and the
    report's S_pri–S_acc figure say the same sentences)."""
    agreement = selection["ranking_agreement"]
    if agreement["kendall_tau_mean"] is not None:
        mean, lowest = _number(agreement["kendall_tau_mean"], 2), _number(agreement["kendall_tau_min"], 2)
        lines = [f"Kendall's τ between the rankings of the {selection['repeats']} repeats of the scoring: "
                 + f"mean {mean}, lowest {lowest}."]
    else:
        lines = [f"Kendall's τ between repeated rankings: none, {agreement['reason']}."]
    versus = selection["versus_reference"]
    if versus["policies"] is None:
        return [*lines, f"No comparison with the no-transform reference: {versus['reason']}."]
    reference = _number(selection["reference"]["s_pri_mean"])
    confidence = f"{selection['confidence']:.0%}"
    for row in versus["policies"]:
        verdict = "significantly below" if row["significantly_below"] else "not significantly below"
        lines.append(f"{row['policy']}: S_pri {_number(row['s_pri_mean'])} [{_number(row['s_pri_ci_low'])}, "
                     f"{_number(row['s_pri_ci_high'])}], {verdict} the reference's {reference} (paired difference "
                     f"{_number(row['difference_mean'])} [{_number(row['difference_ci_low'])}, "
                     f"{_number(row['difference_ci_high'])}], {confidence} intervals over {row['n_images']} images).")
    return lines


class NothingChosenError(ValueError):
    """No scored policy passes the S_acc threshold, and the config does not allow an empty selection."""


def _nothing_chosen(ranked: Sequence[RankedPolicy], threshold: float, source: str) -> str:
    """Why nothing was chosen, naming the config keys that change it."""
    candidates = [entry for entry in ranked if entry.status == STATUS_OK]
    finite = [entry.s_acc_mean for entry in candidates if math.isfinite(entry.s_acc_mean)]
    best = f"the best mean S_acc of the {len(candidates)} finite candidates is {max(finite):.3f}" if finite \
        else f"none of the {len(ranked)} scored policies is a candidate with finite scores"
    return (f"no policy passes the S_acc threshold {threshold:.3f} (search.selection.accuracy_threshold, "
            f"{source}): {best}. Lower the threshold, score more candidates (search.candidates.count), or set "
            "search.selection.allow_empty: true to train only the baselines")


def select_policies(
    *,
    shard_paths: Sequence[str | os.PathLike],
    shard_fingerprints: Sequence[str],
    ranking_tsv: str | os.PathLike,
    selection_json: str | os.PathLike,
    settings: SelectionSettings,
    num_classes: int,
    seed: int,
    fingerprint: str,
) -> None:
    """Stage function: gather the shards of every repeat, write ``ranking.tsv`` and ``selection.json`` atomically.

    ``settings.accuracy_threshold`` ``None`` means :func:`default_accuracy_threshold` of
    ``num_classes``. ``seed`` (the master seed) seeds the bootstrap intervals. Each shard must carry
    its entry of ``shard_fingerprints``; both outputs get a provenance record under ``fingerprint``
    (:mod:`ats.runtime.provenance`), which their readers check. When no policy is eligible it raises
    :class:`NothingChosenError` and writes nothing, unless ``settings.allow_empty`` (the config's
    ``search.selection.allow_empty``): a run must not end green having chosen nothing.
    """
    rule, alpha, top_k = settings.rule, settings.alpha, settings.top_k
    threshold = settings.accuracy_threshold
    threshold_source = "config" if threshold is not None else "default"
    threshold = float(threshold) if threshold is not None else default_accuracy_threshold(num_classes)
    repeats = split_repeats(read_scores(shard_paths, shard_fingerprints))
    scores = average_repeats(repeats)
    ranked = with_spri_intervals(rank_policies(scores, rule, alpha, threshold=threshold), scores, seed=seed)
    choice = choose_policies(ranked, top_k)
    if not choice["top_k"] and not settings.allow_empty:
        raise NothingChosenError(_nothing_chosen(ranked, threshold, threshold_source))
    agreement = ranking_agreement([rank_policies(group, rule, alpha, threshold=threshold) for group in repeats],
                                  top_k)
    versus_reference = compare_with_reference([*choice["top_k"], *choice["hybrid_members"]], ranked, scores,
                                              seed=seed)
    write_with_provenance(ranking_tsv, lambda path: write_tsv(path, RANKING_COLUMNS, [entry.row() for entry in ranked]),
                          fingerprint=fingerprint)
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
            "s_pri_mean": _json_number(reference.s_pri_mean), "s_pri_ci_low": _json_number(reference.s_pri_ci_low),
            "s_pri_ci_high": _json_number(reference.s_pri_ci_high), "s_acc_mean": _json_number(reference.s_acc_mean),
            "rank": reference.rank},
        "repeats": len(repeats),
        "confidence": CONFIDENCE_LEVEL,
        "ranking_agreement": agreement,
        "versus_reference": versus_reference,
    }
    write_with_provenance(selection_json, lambda path: write_json(path, summary), fingerprint=fingerprint)
    if len(choice["top_k"]) < top_k:
        _log.warning("only %d of the requested top_k=%d policies pass the S_acc threshold %.3f",
                     len(choice["top_k"]), top_k, threshold)
    if top_k >= 2 and choice["hybrid"] is None:
        _log.warning("no hybrid: fewer than %d eligible policies with disjoint op indices", top_k)
    _log.info("ranked %d policies by rule %r (S_acc threshold %.3f, %s): top %s, hybrid %r",
              len(ranked), rule, threshold, threshold_source, choice["top_k"], choice["hybrid"])
    for line in describe_uncertainty(summary):
        _log.info("%s", line)
