"""Ranking rules, the S_acc threshold, top-k and hybrid choice, repeats, intervals, and the selection stage's files."""

from __future__ import annotations

import json
import math
from xml.etree import ElementTree

import numpy as np
import pytest

from ats.report.figures import plot_spri_vs_sacc
from ats.runtime.atomic import read_tsv
from ats.runtime.seeding import derive_seed
from ats.search.scoring import (
    PolicyScores,
    make_policy_scores,
    read_scores,
    write_scores,
)
from ats.search.selection import (
    RANKING_COLUMNS,
    average_repeats,
    choose_policies,
    default_accuracy_threshold,
    describe_uncertainty,
    kendall_tau_matrix,
    rank_policies,
    select_policies,
    split_repeats,
)
from ats.settings import SelectionSettings
from ats.stats import mean_interval


def labels_of(num_images: int) -> np.ndarray:
    """Two classes, the first half of the images in class 0: 0, 0, 1, 1 for four images."""
    return np.arange(num_images) * 2 // num_images


def scored(policy: str, spri: list[float], sacc: float = -10.0, repeat: int = 0) -> PolicyScores:
    """A policy with per-image S_pri ``spri`` (classes as :func:`labels_of`) and two S_acc runs."""
    values = np.array(spri, dtype=np.float64)
    return make_policy_scores(policy, values, np.tile(values[:, None], (1, 3)), labels_of(len(values)),
                              np.array([sacc, sacc]), repeat=repeat)


def write_shards(folder, groups: list[list[PolicyScores]]) -> list:
    """One shard file per group of scores (of one repeat), named like the workflow's."""
    paths = []
    for number, group in enumerate(groups):
        paths.append(folder / f"repeat-{group[0].repeat}" / f"shard-{number:04d}.h5")
        num_images = len(group[0].spri)
        write_scores(paths[-1], group, privacy_indices=np.arange(num_images), privacy_labels=labels_of(num_images),
                     run_sizes=[2, 2], attrs={}, fingerprint="f")
    return paths


def select(shards: list, folder, top_k: int = 2, threshold: float | None = None) -> tuple[list[dict], dict]:
    ranking, selection = folder / "ranking.tsv", folder / "selection.json"
    settings = SelectionSettings.from_config({"accuracy_threshold": threshold, "top_k": top_k})
    select_policies(shard_paths=shards, shard_fingerprints=["f"] * len(shards), ranking_tsv=ranking,
                    selection_json=selection, settings=settings, num_classes=10, seed=7, fingerprint="selection")
    return read_tsv(ranking), json.loads(selection.read_text())


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
    shards = write_shards(tmp_path, [[scored("", [0.6] * 4), scored("3-1-7", [0.2] * 4)],
                                     [scored("43-18-18", [0.3] * 4), scored("1", [math.nan] * 4)]])
    rows, chosen = select(shards, tmp_path)
    assert list(rows[0]) == list(RANKING_COLUMNS)
    assert [row["policy"] for row in rows] == ["3-1-7", "43-18-18", "", "1"]
    assert [row["status"] for row in rows] == ["ok", "ok", "reference", "nonfinite"]
    assert chosen["top_k"] == ["3-1-7", "43-18-18"] and chosen["hybrid"] == "3-1-7+43-18-18"
    assert chosen["accuracy_threshold"] == pytest.approx(default_accuracy_threshold(10))
    assert chosen["reference"]["rank"] == 3 and chosen["num_nonfinite"] == 1
    with pytest.raises(ValueError, match="both"):
        select([shards[0], shards[0]], tmp_path, threshold=-5.0)


def test_kendall_tau_matches_hand_counted_pairs() -> None:
    def ranking(values: list[float]) -> list:
        return rank_policies([scored(str(number), [value] * 4) for number, value in enumerate(values, start=1)],
                             threshold=-100.0)

    first = ranking([1, 2, 3, 4, 5, 6])
    # Of the 10 pairs of policies 1-5, 7 keep their order and 3 swap: τ = (7 − 3)/10. Policy 6 is
    # non-finite here, so it is left out of every pair with this ranking.
    swapped = ranking([3, 1, 2, 5, 4, math.nan])
    reversed_ = ranking([5, 4, 3, 2, 1, math.nan])
    # Two tied pairs, the 8 other pairs concordant: τ-b = 8/√(10·8) (ties stay ties, not name order).
    tied = ranking([1, 1, 2, 2, 3, math.nan])
    matrix = kendall_tau_matrix([first, swapped, reversed_, tied])
    assert matrix.shape == (4, 4) and np.array_equal(matrix, matrix.T) and np.all(np.diag(matrix) == 1)
    assert matrix[0, 1] == pytest.approx(0.4)
    assert matrix[0, 2] == pytest.approx(-1.0)
    assert matrix[1, 2] == pytest.approx(-0.4)
    assert matrix[0, 3] == pytest.approx(8 / math.sqrt(80))
    assert math.isnan(kendall_tau_matrix([first, ranking([1, math.nan, math.nan, math.nan, math.nan, 2])[:1]])[0, 1])


def test_repeats_are_grouped_checked_and_pooled() -> None:
    repeat_0 = [scored("", [0.6] * 4), scored("3", [0.2, 0.4, 0.2, 0.4], sacc=-10.0)]
    repeat_1 = [scored("3", [0.4, 0.2, 0.4, 0.6], sacc=-12.0, repeat=1), scored("", [0.5] * 4, repeat=1)]
    groups = split_repeats(repeat_1 + repeat_0)
    assert [[entry.repeat for entry in group] for group in groups] == [[0, 0], [1, 1]]
    pooled = {entry.policy: entry for entry in average_repeats(groups)}
    np.testing.assert_allclose(pooled["3"].spri, [0.3, 0.3, 0.3, 0.5])
    np.testing.assert_allclose(pooled["3"].spri_class_means, [0.3, 0.4])  # the class means of the pooled images
    np.testing.assert_array_equal(pooled["3"].sacc, [-10.0, -10.0, -12.0, -12.0])  # every run of every repeat
    assert pooled["3"].repeat is None and pooled["3"].status == "ok"
    with pytest.raises(ValueError, match="expected every repeat from 0 to 1"):
        split_repeats(repeat_1)
    with pytest.raises(ValueError, match=r"repeat 1 scored other policies than repeat 0 \(differing: \['7'\]\)"):
        split_repeats(repeat_0 + [*repeat_1, scored("7", [0.1] * 4, repeat=1)])
    broken = average_repeats(split_repeats([*repeat_0, scored("", [0.5] * 4, repeat=1),
                                            scored("3", [math.nan] * 4, repeat=1)]))
    assert [entry.status for entry in broken] == ["ok", "nonfinite"]


def test_one_repeat_ranks_exactly_as_the_single_scoring_did(tmp_path) -> None:
    """Today's selection ranked the shards' scores as read; one repeat must give the same rows, bit for bit."""
    rng = np.random.default_rng(3)
    scores = [scored(policy, rng.uniform(0.1, 0.9, 4).tolist(), sacc=float(rng.uniform(-16, -10)))
              for policy in ["", "1", "2-3", "4-5-6", "7", "8-9", "10"]]
    shards = write_shards(tmp_path, [scores[:4], scores[4:]])
    rows, chosen = select(shards, tmp_path)
    single = read_scores(shards)
    for pooled, alone in zip(average_repeats(split_repeats(single)), single, strict=True):
        for field in ("spri", "curves", "spri_class_means", "sacc"):
            assert np.array_equal(getattr(pooled, field), getattr(alone, field)), field
    today = rank_policies(single, "cvpr", 0.7, threshold=default_accuracy_threshold(10))
    unchanged = [column for column in RANKING_COLUMNS if column not in ("s_pri_ci_low", "s_pri_ci_high")]
    assert [[row[column] for column in unchanged] for row in rows] == [
        [repr(value) if isinstance(value, float) else str(value) for value in (
            entry.policy, entry.s_pri_mean, entry.s_pri_var, entry.s_acc_mean, entry.score, entry.passed_threshold,
            entry.rank, entry.status, entry.description)] for entry in today]
    assert {key: chosen[key] for key in ("top_k", "hybrid", "hybrid_members")} == choose_policies(today, 2)
    assert chosen["repeats"] == 1 and chosen["ranking_agreement"]["top_k_by_repeat"] == [chosen["top_k"]]
    agreement = chosen["ranking_agreement"]
    assert agreement["kendall_tau"] is None and agreement["kendall_tau_mean"] is None
    assert "search.repeats = 1" in agreement["reason"]
    assert describe_uncertainty(chosen)[0].startswith("Kendall's τ between repeated rankings: none, one scoring")


def test_spri_intervals_hold_each_mean_and_are_reproducible(tmp_path) -> None:
    shards = write_shards(tmp_path, [[scored("", [0.5, 0.7, 0.6, 0.9]), scored("3", [0.1, 0.3, 0.2, 0.6]),
                                      scored("4", [0.4] * 4), scored("5", [0.2, math.nan, 0.2, 0.2])]])
    rows = {row["policy"]: row for row in select(shards, tmp_path / "first")[0]}
    for policy in ("", "3"):
        low, mean, high = (float(rows[policy][column]) for column in ("s_pri_ci_low", "s_pri_mean", "s_pri_ci_high"))
        assert 0.1 <= low < mean < high <= 0.9, policy
    assert rows["4"]["s_pri_ci_low"] == rows["4"]["s_pri_ci_high"] == rows["4"]["s_pri_mean"]  # no spread
    assert rows["5"]["s_pri_ci_low"] == rows["5"]["s_pri_ci_high"] == "nan"  # non-finite: no interval
    # The interval is the project's bootstrap of the policy's images, seeded from the master seed and the policy.
    expected = mean_interval(np.array([0.1, 0.3, 0.2, 0.6]), seed=derive_seed(7, "selection", "s_pri interval", "3"))
    assert (float(rows["3"]["s_pri_ci_low"]), float(rows["3"]["s_pri_ci_high"])) == (expected.low, expected.high)
    select(shards, tmp_path / "second")
    for output in ("ranking.tsv", "selection.json"):
        assert (tmp_path / "first" / output).read_bytes() == (tmp_path / "second" / output).read_bytes()


def test_chosen_policies_are_tested_against_the_reference_on_the_same_images(tmp_path) -> None:
    reference = np.array([0.50, 0.60, 0.70, 0.80, 0.55, 0.65, 0.75, 0.85])
    steady = reference - np.array([0.12, 0.09, 0.10, 0.11, 0.10, 0.12, 0.08, 0.11])  # always about 0.1 lower
    erratic = reference + np.array([-0.3, 0.25, -0.2, 0.12, -0.25, 0.1, -0.2, 0.3])  # lower on average, not reliably
    shards = write_shards(tmp_path, [[scored("", reference.tolist()), scored("3", steady.tolist()),
                                      scored("4-5", erratic.tolist()), scored("6", [0.95] * 8)]])
    rows, chosen = select(shards, tmp_path, top_k=2)
    assert chosen["top_k"] == ["3", "4-5"] and chosen["hybrid_members"] == ["3", "4-5"]
    compared = {row["policy"]: row for row in chosen["versus_reference"]["policies"]}
    assert list(compared) == ["3", "4-5"] and chosen["versus_reference"]["reason"] is None
    assert compared["3"]["difference_mean"] == pytest.approx(np.mean(steady - reference))
    assert compared["3"]["difference_ci_high"] < 0 and compared["3"]["significantly_below"] is True
    assert compared["4-5"]["difference_ci_low"] < 0 < compared["4-5"]["difference_ci_high"]
    assert compared["4-5"]["significantly_below"] is False
    assert compared["3"]["n_images"] == 8 and compared["3"]["s_pri_mean"] == pytest.approx(steady.mean())
    assert compared["3"]["s_pri_ci_low"] == float(rows[0]["s_pri_ci_low"])  # the ranking's own interval
    reference_row = chosen["reference"]
    assert reference_row["s_pri_ci_low"] < reference_row["s_pri_mean"] < reference_row["s_pri_ci_high"]
    words = describe_uncertainty(chosen)
    assert words[1].startswith(f"3: S_pri {steady.mean():.3f} [")
    assert "], significantly below the reference's 0.675" in words[1]
    assert words[2].startswith("4-5: S_pri ") and "not significantly below the reference's 0.675" in words[2]
    assert "95% intervals over 8 images" in words[1]

    # The S_pri-S_acc figure draws the intervals as error bars and prints the same sentences.
    figure = tmp_path / "spri_vs_sacc.svg"
    plot_spri_vs_sacc(figure, rows, chosen["top_k"], chosen["hybrid"], chosen["accuracy_threshold"],
                      uncertainty=words)
    text = " ".join(ElementTree.parse(figure).getroot().itertext())
    assert "Kendall's τ between repeated rankings: none" in text and "significantly below the reference's" in text
    assert "LineCollection" in figure.read_text()  # the error bars


def test_without_a_scored_reference_nothing_is_compared(tmp_path) -> None:
    shards = write_shards(tmp_path, [[scored("3", [0.2] * 4), scored("4", [0.3] * 4)]])
    _, chosen = select(shards, tmp_path)
    assert chosen["versus_reference"] == {"reason": "the no-transform reference '' was not scored", "policies": None}
    assert describe_uncertainty(chosen)[-1] == ("No comparison with the no-transform reference: the no-transform "
                                                "reference '' was not scored.")


def test_two_repeats_pool_their_scores_and_report_how_well_their_rankings_agree(tmp_path) -> None:
    repeat_0 = [scored("", [0.6] * 4), scored("1", [0.2] * 4), scored("2", [0.3] * 4), scored("3", [0.4] * 4)]
    repeat_1 = [scored("", [0.55] * 4, repeat=1), scored("1", [0.33] * 4, repeat=1), scored("2", [0.25] * 4, repeat=1),
                scored("3", [0.45] * 4, sacc=-20.0, repeat=1)]
    shards = write_shards(tmp_path, [repeat_1[2:], repeat_0[:2], repeat_1[:2], repeat_0[2:]])
    rows, chosen = select(shards, tmp_path)
    by_policy = {row["policy"]: row for row in rows}
    assert [row["policy"] for row in rows] == ["1", "2", "3", ""]
    assert float(by_policy["1"]["s_pri_mean"]) == pytest.approx(0.265)
    assert float(by_policy["3"]["s_acc_mean"]) == pytest.approx(-15.0)  # runs of both repeats: -10, -10, -20, -20
    assert by_policy["3"]["passed_threshold"] == "False"
    assert chosen["repeats"] == 2
    agreement = chosen["ranking_agreement"]
    # Repeat 1 swaps policies 1 and 2; the other 5 of the 6 pairs keep their order: τ = (5 − 1)/6.
    assert agreement["kendall_tau"] == [[1.0, pytest.approx(4 / 6)], [pytest.approx(4 / 6), 1.0]]
    assert agreement["kendall_tau_mean"] == agreement["kendall_tau_min"] == pytest.approx(4 / 6)
    assert agreement["top_k_by_repeat"] == [["1", "2"], ["2", "1"]] and agreement["reason"] is None
    assert describe_uncertainty(chosen)[0] == ("Kendall's τ between the rankings of the 2 repeats of the scoring: "
                                               "mean 0.67, lowest 0.67.")
