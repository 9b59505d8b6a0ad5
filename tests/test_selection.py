"""Ranking rules, the S_acc threshold, top-k and hybrid choice, and the selection stage's files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ats.runtime.atomic import read_tsv
from ats.search.scoring import PolicyScores, make_policy_scores, write_scores
from ats.search.selection import (
    RANKING_COLUMNS,
    choose_policies,
    default_accuracy_threshold,
    rank_policies,
    select_policies,
)

LABELS = np.array([0, 0, 1, 1])


def scored(policy: str, spri: list[float], sacc: float = -10.0) -> PolicyScores:
    """A policy with per-image S_pri ``spri`` (images of classes 0, 0, 1, 1) and two S_acc runs."""
    values = np.array(spri, dtype=np.float64)
    return make_policy_scores(policy, values, np.tile(values[:, None], (1, 3)), LABELS, np.array([sacc, sacc]))


def test_default_threshold_is_the_papers_for_100_classes_and_scaled_otherwise() -> None:
    assert default_accuracy_threshold(100) == -85.0
    assert default_accuracy_threshold(10) == pytest.approx(-85 * 9.99973 / 63.3968, rel=1e-4)
    assert default_accuracy_threshold(10) == pytest.approx(-13.4, abs=0.05)
    assert default_accuracy_threshold(2) > default_accuracy_threshold(10) > default_accuracy_threshold(1000)
    with pytest.raises(ValueError, match="num_classes"):
        default_accuracy_threshold(1)


def test_cvpr_rule_sorts_by_mean_spri_with_nan_last_and_the_reference_flagged() -> None:
    scores = [scored("3-1-7", [0.4, 0.4, 0.4, 0.4]), scored("", [0.6] * 4),
              scored("5", [0.2, math.nan, 0.2, 0.2]), scored("7-9", [0.3, 0.1, 0.3, 0.1], sacc=-20.0)]
    ranked = rank_policies(scores, "cvpr", threshold=-15.0)
    assert [r.policy for r in ranked] == ["7-9", "3-1-7", "", "5"]
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert [r.status for r in ranked] == ["ok", "ok", "reference", "nonfinite"]
    assert [r.passed_threshold for r in ranked] == [False, True, True, True]
    assert math.isnan(ranked[-1].score) and ranked[0].score == pytest.approx(0.2)
    assert ranked[2].description == "no transformation"


def test_variance_rule_weights_normalised_mean_and_variance_of_class_means() -> None:
    scores = [scored("1", [0.2, 0.2, 0.6, 0.6]),   # class means 0.2, 0.6: mean 0.4, var 0.04
              scored("2", [0.5, 0.5, 0.5, 0.5]),   # mean 0.5, var 0
              scored("3", [0.3, 0.3, 0.3, 0.3])]   # mean 0.3, var 0
    ranked = {r.policy: r for r in rank_policies(scores, "variance", alpha=0.7, threshold=-100.0)}
    assert ranked["1"].score == pytest.approx(0.7 * 0.5 + 0.3 * 1.0)
    assert ranked["2"].score == pytest.approx(0.7 * 1.0)
    assert ranked["3"].score == pytest.approx(0.0)
    assert ranked["1"].s_pri_var == pytest.approx(0.04)
    assert [r.policy for r in rank_policies(scores, "variance", alpha=1.0, threshold=-100.0)] == ["3", "1", "2"]


def test_variance_rule_does_not_divide_by_zero_when_all_policies_are_equal() -> None:
    ranked = rank_policies([scored("1", [0.3] * 4), scored("2", [0.3] * 4)], "variance", threshold=-100.0)
    assert [r.score for r in ranked] == [0.0, 0.0] and [r.policy for r in ranked] == ["1", "2"]


def test_bad_rule_alpha_and_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="cvpr, variance"):
        rank_policies([scored("1", [0.3] * 4)], "best", threshold=0.0)
    with pytest.raises(ValueError, match="alpha"):
        rank_policies([scored("1", [0.3] * 4)], "variance", alpha=1.5, threshold=0.0)
    with pytest.raises(ValueError, match="more than once"):
        rank_policies([scored("1", [0.3] * 4), scored("1", [0.2] * 4)], threshold=0.0)


def test_choice_skips_the_reference_failed_and_nonfinite_policies_and_builds_a_disjoint_hybrid() -> None:
    scores = [scored("", [0.05] * 4), scored("3-1-7", [0.1] * 4, sacc=-50.0), scored("3-2", [0.2] * 4),
              scored("2-8", [0.3] * 4), scored("9", [math.nan] * 4), scored("4-5-6", [0.4] * 4),
              scored("10", [0.5] * 4)]
    ranked = rank_policies(scores, threshold=-15.0)
    assert choose_policies(ranked, 2) == {"top_k": ["3-2", "2-8"], "hybrid": "3-2+4-5-6",
                                          "hybrid_members": ["3-2", "4-5-6"]}
    assert choose_policies(ranked, 3)["hybrid"] == "3-2+4-5-6+10"
    assert choose_policies(ranked, 1) == {"top_k": ["3-2"], "hybrid": None, "hybrid_members": []}
    assert choose_policies(ranked, 5) == {"top_k": ["3-2", "2-8", "4-5-6", "10"], "hybrid": None,
                                          "hybrid_members": []}
    with pytest.raises(ValueError, match="top_k"):
        choose_policies(ranked, 0)


def test_select_policies_writes_the_ranking_and_the_selection(tmp_path) -> None:
    shards = []
    for number, group in enumerate([[scored("", [0.6] * 4), scored("3-1-7", [0.2] * 4)],
                                    [scored("43-18-18", [0.3] * 4), scored("1", [math.nan] * 4)]]):
        shards.append(tmp_path / f"shard-{number}.h5")
        write_scores(shards[-1], group, privacy_indices=np.arange(4), privacy_labels=LABELS, run_sizes=[2, 2],
                     attrs={}, fingerprint="f")
    ranking, selection = tmp_path / "ranking.tsv", tmp_path / "selection.json"
    select_policies(shard_paths=shards, ranking_tsv=ranking, selection_json=selection, rule="cvpr", alpha=0.7,
                    threshold=None, top_k=2, num_classes=10)
    rows = read_tsv(ranking)
    assert list(rows[0]) == list(RANKING_COLUMNS)
    assert [row["policy"] for row in rows] == ["3-1-7", "43-18-18", "", "1"]
    assert [row["status"] for row in rows] == ["ok", "ok", "reference", "nonfinite"]
    chosen = json.loads(selection.read_text())
    assert chosen["top_k"] == ["3-1-7", "43-18-18"] and chosen["hybrid"] == "3-1-7+43-18-18"
    assert chosen["accuracy_threshold"] == pytest.approx(default_accuracy_threshold(10))
    assert chosen["reference"]["rank"] == 3 and chosen["num_nonfinite"] == 1
    with pytest.raises(ValueError, match="both"):
        select_policies(shard_paths=[shards[0], shards[0]], ranking_tsv=ranking, selection_json=selection,
                        rule="cvpr", alpha=0.7, threshold=-5.0, top_k=2, num_classes=10)
