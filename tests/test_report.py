"""Tests of ats.report: summary statistics, correlations, and every figure on normal and edge-case data.

Figures are checked for what a report reader relies on: the file exists, is a valid SVG or PNG,
carries the labels its caption promises (SVG text stays text, see ``figures.STYLE``), shows a note
instead of crashing on degenerate input, and is written atomically.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text

from ats.report import figures
from ats.report.summary import SUMMARY_COLUMNS, correlations, read_summary, summary_rows, write_summary
from ats.runtime.hdf5 import CacheError
from ats.runtime.provenance import write_with_provenance

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def svg_text(path: Path) -> str:
    """All text of an SVG file, after checking that it parses as XML and that nothing else was left."""
    assert path.stat().st_size > 0
    root = ElementTree.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "temporary files left behind"
    return " ".join(root.itertext())


def per_image_metrics(psnr: list[float], diverged: list[bool]) -> dict[str, np.ndarray]:
    """Per-image metrics where SSIM, MSE and feature MSE are simple functions of the PSNR."""
    values = np.array(psnr)
    return {
        "psnr": values,
        "ssim": values / 100,
        "mse": values / 10,
        "feature_mse": values * 2,
        "diverged": np.array(diverged),
        "target_indices": np.arange(len(psnr)),
        "training_step": 100,
    }


def without_nan(row: dict) -> dict:
    """``row`` with every NaN replaced by None, so that equal rows compare equal."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}


def summarise(per_image: dict[tuple[str, str], dict], accuracy: dict[str, float]) -> list[dict]:
    """Summary rows of final-stage records keyed (defence, attack), in the dict's order."""
    records = [{**metrics, "defence": defence, "stage": "final", "attack": attack}
               for (defence, attack), metrics in per_image.items()]
    return summary_rows(records, accuracy, seed=0)


# ---------------------------------------------------------------------------------------------
# Summary table


def test_summary_rows_exclude_diverged_images_from_the_statistics():
    per_image = {
        ("crop", "ig"): per_image_metrics([10.0, 20.0, 30.0, 1000.0], [False, False, False, True]),
        ("3-1-7", "ig"): per_image_metrics([12.0, np.inf, 14.0], [False, False, False]),
    }
    rows = summarise(per_image, {"crop": 0.9, "3-1-7": 0.85})

    assert [(row["defence"], row["attack"]) for row in rows] == [("crop", "ig"), ("3-1-7", "ig")]
    crop, policy = rows
    assert list(crop) == list(SUMMARY_COLUMNS)
    assert crop["accuracy"] == 0.9
    assert crop["psnr_mean"] == pytest.approx(20.0)
    assert crop["psnr_std"] == pytest.approx(math.sqrt(200 / 3))  # ddof=0 over 10, 20, 30
    assert crop["psnr_median"] == pytest.approx(20.0)
    assert crop["ssim_mean"] == pytest.approx(0.2)
    assert crop["mse_mean"] == pytest.approx(2.0)
    assert crop["feature_mse_mean"] == pytest.approx(40.0)
    assert (crop["n_images"], crop["n_diverged"]) == (4, 1)
    # A non-finite value of an image that did not diverge is dropped from that statistic only.
    assert policy["psnr_mean"] == pytest.approx(13.0)
    assert policy["psnr_std"] == pytest.approx(1.0)
    assert (policy["n_images"], policy["n_diverged"]) == (3, 0)
    assert all(type(row["psnr_mean"]) is float and type(row["n_images"]) is int for row in rows)


def test_summary_rows_when_every_attack_diverged_or_one_image_is_left():
    per_image = {
        ("none", "ig"): per_image_metrics([5.0, 6.0], [True, True]),
        ("none", "gs"): per_image_metrics([7.0, 8.0], [False, True]),
    }
    all_diverged, one_left = summarise(per_image, {"none": 0.5})
    assert math.isnan(all_diverged["psnr_mean"]) and math.isnan(all_diverged["psnr_std"])
    assert (all_diverged["n_images"], all_diverged["n_diverged"]) == (2, 2)
    assert (one_left["psnr_mean"], one_left["psnr_std"], one_left["psnr_median"]) == (7.0, 0.0, 7.0)


def test_summary_rows_reject_metric_arrays_of_the_wrong_length():
    metrics = per_image_metrics([10.0, 20.0], [False, False])
    metrics["ssim"] = np.array([0.5])
    with pytest.raises(ValueError, match="crop/final/ig: ssim has 1 values for 2"):
        summarise({("crop", "ig"): metrics}, {"crop": 0.9})


def test_summary_round_trips_through_tsv_with_types_and_nan(tmp_path: Path):
    per_image = {("crop", "ig"): per_image_metrics([10.0, 20.0], [False, False]),
                 ("prune-70", "ig"): per_image_metrics([1.0], [True])}
    rows = summarise(per_image, {"crop": np.float64(0.9123), "prune-70": 0.5})
    path = tmp_path / "summary.tsv"
    write_summary(path, rows, fingerprint="these-results")

    assert path.read_text().splitlines()[0].split("\t") == list(SUMMARY_COLUMNS)
    assert "np.float64" not in path.read_text()
    back = read_summary(path, expected_fingerprint="these-results")
    assert without_nan(back[0]) == without_nan(rows[0])
    assert math.isnan(back[1]["psnr_mean"]) and back[1]["n_diverged"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.tsv", "summary.tsv.provenance.json"]


def test_read_summary_names_the_file_of_a_foreign_table(tmp_path: Path):
    path = tmp_path / "other.tsv"
    write_with_provenance(path, lambda target: target.write_text("policy\tscore\n3-1-7\t0.5\n"), fingerprint="f")
    with pytest.raises(ValueError, match="other.tsv: not a summary table"):
        read_summary(path, expected_fingerprint="f")


def test_a_summary_of_other_results_or_edited_is_refused(tmp_path: Path):
    """The figures and the findings read only the summary of the results they are planned for."""
    path = tmp_path / "summary.tsv"
    write_summary(path, summarise({("crop", "ig"): per_image_metrics([10.0, 20.0], [False, False])},
                                  {"crop": 0.9}), fingerprint="these-results")
    with pytest.raises(CacheError, match="different configuration"):
        read_summary(path, expected_fingerprint="other-results")
    path.write_text(path.read_text().replace("crop", "none"))
    with pytest.raises(CacheError, match="checksum mismatch"):
        read_summary(path, expected_fingerprint="these-results")


# ---------------------------------------------------------------------------------------------
# Correlations


def test_correlations_of_lines_and_monotone_curves():
    line = correlations([1, 2, 3, 4], [3, 5, 7, 9])
    assert line == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0), "n": 4}
    falling = correlations([1, 2, 3], [3, 2, 1])
    assert falling["pearson"] == pytest.approx(-1.0) and falling["spearman"] == pytest.approx(-1.0)
    # y = 1, 2, 4: Pearson r = 3 / sqrt(2 * 42/9) = 9 / sqrt(84); monotone, so Spearman = 1.
    curve = correlations([1, 2, 3], [1, 2, 4])
    assert curve["pearson"] == pytest.approx(9 / math.sqrt(84))
    assert curve["spearman"] == pytest.approx(1.0)


def test_correlations_drop_non_finite_pairs_and_refuse_too_few_or_constant_points():
    dropped = correlations([1, 2, np.nan, 3, 4], [2, 4, 5, np.inf, 8])
    assert dropped["n"] == 3 and dropped["pearson"] == pytest.approx(1.0)
    two = correlations([1, 2], [3, 4])
    assert two["n"] == 2 and math.isnan(two["pearson"]) and math.isnan(two["spearman"])
    constant = correlations([1, 2, 3], [5, 5, 5])
    assert constant["n"] == 3 and math.isnan(constant["pearson"]) and math.isnan(constant["spearman"])
    assert correlations([], [])["n"] == 0
    with pytest.raises(ValueError, match="paired"):
        correlations([1, 2, 3], [1, 2])


# ---------------------------------------------------------------------------------------------
# Figures: fixtures


def ranking(count: int, seed: int = 0) -> list[dict]:
    """Ranking rows as ``read_tsv`` returns them (all text), the no-transform reference first."""
    rng = np.random.default_rng(seed)
    rows = [{"policy": "", "s_pri_mean": "0.8", "s_acc_mean": "-80.0", "passed_threshold": "True",
             "status": "ok", "rank": str(count + 1)}]
    for index in range(count):
        s_acc = rng.normal(-85, 5)
        rows.append({"policy": f"{index % 50}-{index // 50}-7", "s_pri_mean": repr(rng.uniform(0.2, 0.9)),
                     "s_acc_mean": repr(s_acc), "passed_threshold": str(s_acc > -85), "status": "ok",
                     "rank": str(index + 1)})
    return rows


def training_history(epochs: int, eval_every: int, final_accuracy: float) -> dict[str, np.ndarray]:
    epoch = np.arange(epochs, dtype=float)
    tested = (epoch % eval_every == 0) | (epoch == epochs - 1)
    accuracy = np.where(tested, final_accuracy * (1 - np.exp(-(epoch + 1) / 5)), np.nan)
    return {"epoch": epoch, "train_loss": 2.3 * np.exp(-epoch / 10), "train_accuracy": accuracy,
            "test_loss": np.where(tested, 1.0, np.nan), "test_accuracy": accuracy}


# ---------------------------------------------------------------------------------------------
# Figures: search


def test_spri_vs_sacc_marks_threshold_reference_chosen_and_hybrid(tmp_path: Path):
    rows = ranking(40)
    rows[3]["status"], rows[3]["s_pri_mean"] = "nonfinite", "nan"
    chosen = [rows[1]["policy"], rows[2]["policy"]]
    path = tmp_path / "spri_vs_sacc.svg"
    figures.plot_spri_vs_sacc(path, rows, chosen, hybrid="1-0-7+0-0-7", threshold=-85.0)
    text = svg_text(path)
    for expected in ("S_pri", "S_acc", "S_acc threshold (-85)", "no transform", "chosen", f"#1 {chosen[0]}",
                     "1 candidate(s) with non-finite scores", "chosen but never scored in the search): 1-0-7+0-0-7"):
        assert expected in text
    assert "40 of 41 placed" in text


def test_spri_vs_sacc_edge_cases_show_a_note(tmp_path: Path):
    figures.plot_spri_vs_sacc(tmp_path / "a" / "none_chosen.svg", ranking(3), [], None, threshold=-85.0)
    assert "no policy was chosen" in svg_text(tmp_path / "a" / "none_chosen.svg")
    figures.plot_spri_vs_sacc(tmp_path / "b" / "empty.svg", [], [], None, threshold=float("nan"))
    assert "No candidate policies were scored" in svg_text(tmp_path / "b" / "empty.svg")


def test_spri_vs_sacc_at_paper_scale(tmp_path: Path):
    rows = ranking(1600)
    path = tmp_path / "spri_vs_sacc.svg"
    figures.plot_spri_vs_sacc(path, rows, [rows[1]["policy"]], rows[2]["policy"], threshold=-85.0)
    assert "hybrid of the chosen" in svg_text(path)


def test_gradsim_curves_show_mean_and_area_per_label(tmp_path: Path):
    t = np.linspace(0, 1, 11)
    curves = {"no transform": np.tile(t, (4, 1)), "3-1-7": np.tile(t**3, (4, 1)),
              "one image": t[None] ** 2, "broken": np.full((2, 11), np.nan)}
    path = tmp_path / "gradsim.svg"
    figures.plot_gradsim_curves(path, curves)
    text = svg_text(path)
    assert "no transform (area 0.500, 4 images)" in text
    assert "3-1-7 (area 0.253, 4 images)" in text  # trapezoid rule, h = 0.1: 1/4 + h²/4
    assert "one image (area 0.335, 1 image)" in text  # 1/3 + h²/6
    assert "'broken' has no finite similarities" in text
    figures.plot_gradsim_curves(tmp_path / "empty" / "gradsim.svg", {})
    assert "No gradient-similarity curves" in svg_text(tmp_path / "empty" / "gradsim.svg")


def test_per_op_spri_sorts_most_private_first_and_lists_nan_last(tmp_path: Path):
    path = tmp_path / "per_op.svg"
    figures.plot_per_op_spri(path, {0: 0.5, 1: 0.2, 2: float("nan"), 3: 0.9},
                             {0: "invert", 1: "translateX", 3: "rotate"}, reference=0.8)
    text = svg_text(path)
    assert text.index("1: translateX") < text.index("0: invert") < text.index("3: rotate") < text.index("2: op 2")
    assert "n/a" in text and "no transform (0.800)" in text
    figures.plot_per_op_spri(tmp_path / "empty" / "per_op.svg", {}, {})
    assert "No single-op scores" in svg_text(tmp_path / "empty" / "per_op.svg")


# ---------------------------------------------------------------------------------------------
# Figures: training and attacks


def test_training_curves_plot_finite_test_points_and_note_missing_evaluations(tmp_path: Path):
    histories = {"crop": training_history(25, 10, 0.9), "3-1-7": training_history(1, 10, 0.8),
                 "untested": {**training_history(3, 10, 0.5), "test_accuracy": np.full(3, np.nan)}}
    path = tmp_path / "training.svg"
    figures.plot_training_curves(path, histories)
    text = svg_text(path)
    for expected in ("Training loss", "Test accuracy", "crop (test", "3-1-7 (test", "untested (test n/a %)",
                     "'untested' has no test evaluation yet"):
        assert expected in text
    figures.plot_training_curves(tmp_path / "empty" / "training.svg", {})
    assert "No training histories" in svg_text(tmp_path / "empty" / "training.svg")


@pytest.mark.parametrize("channels", [1, 3])
def test_reconstruction_grid_is_a_png_for_grey_and_colour_images(tmp_path: Path, channels: int):
    rng = np.random.default_rng(channels)
    truth = rng.uniform(0, 1, (3, channels, 32, 32))
    diverged = truth.copy()
    diverged[1] = np.nan
    blocks = [("crop / ig", truth, truth * 0.5, np.array([12.3, np.nan, 9.0])),
              ("3-1-7 / ig", truth[:2], diverged[:2], np.array([8.0, np.nan])),
              ("none / ig", truth[:0], truth[:0], np.zeros(0))]
    path = tmp_path / "reconstructions.png"
    figures.plot_reconstruction_grid(path, blocks)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstructions.png"]


def test_reconstruction_grid_edge_cases(tmp_path: Path):
    path = tmp_path / "empty.png"
    figures.plot_reconstruction_grid(path, [])
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    images = np.zeros((2, 3, 8, 8))
    with pytest.raises(ValueError, match="block 'bad'"):
        figures.plot_reconstruction_grid(tmp_path / "bad.png", [("bad", images, images[:1], np.zeros(2))])
    with pytest.raises(ValueError, match="1 PSNR values for 2 images"):
        figures.plot_reconstruction_grid(tmp_path / "bad.png", [("bad", images, images, np.zeros(1))])
    assert not (tmp_path / "bad.png").exists()


def test_psnr_distributions_count_finite_images_and_note_all_diverged(tmp_path: Path):
    path = tmp_path / "psnr.svg"
    figures.plot_psnr_distributions(path, {"crop / ig": np.array([10.0, 12.0, np.nan]),
                                           "none / ig": np.array([np.nan, np.nan]),
                                           "prune-70 / ig": np.random.default_rng(0).normal(15, 2, 100)})
    text = svg_text(path)
    for expected in ("crop / ig (n = 2, 1 non-finite)", "none / ig (n = 0, 2 non-finite)",
                     "prune-70 / ig (n = 100)", "no finite PSNR", "PSNR"):
        assert expected in text
    figures.plot_psnr_distributions(tmp_path / "empty" / "psnr.svg", {})
    assert "No attack results" in svg_text(tmp_path / "empty" / "psnr.svg")


# ---------------------------------------------------------------------------------------------
# Figures: summary


def test_privacy_utility_labels_defences_and_attacks(tmp_path: Path):
    rows = [{"defence": defence, "attack": attack, "accuracy": accuracy, "psnr_mean": psnr, "psnr_std": 1.0}
            for defence, accuracy, psnr in (("crop", 0.9, 18.0), ("3-1-7", 0.85, 11.0), ("prune-70", 0.7, 12.0))
            for attack in ("ig", "gs")]
    rows[-1]["psnr_mean"] = float("nan")
    path = tmp_path / "privacy_utility.svg"
    figures.plot_privacy_utility(path, rows)
    text = svg_text(path)
    for expected in ("crop", "3-1-7", "prune-70", "ig", "gs", "test accuracy", "PSNR",
                     "not shown (no finite accuracy or PSNR): prune-70 / gs"):
        assert expected in text
    single_attack = tmp_path / "single" / "privacy_utility.svg"
    figures.plot_privacy_utility(single_attack, [row for row in rows if row["attack"] == "ig"][:1])
    assert "(attack: ig)" in svg_text(single_attack)
    figures.plot_privacy_utility(tmp_path / "empty" / "privacy_utility.svg", [])
    assert "No summary rows" in svg_text(tmp_path / "empty" / "privacy_utility.svg")


def test_privacy_utility_reads_a_written_summary(tmp_path: Path):
    per_image = {("crop", "ig"): per_image_metrics([10.0, 20.0], [False, False])}
    write_summary(tmp_path / "summary.tsv", summarise(per_image, {"crop": 0.9}), fingerprint="f")
    summary = read_summary(tmp_path / "summary.tsv", expected_fingerprint="f")
    figures.plot_privacy_utility(tmp_path / "figure" / "privacy_utility.svg", summary)
    assert "crop" in svg_text(tmp_path / "figure" / "privacy_utility.svg")


def spri_point(defence: str, s_pri: float, psnr: float, *, attack: str = "inversed", stage: str = "final",
               source: str = "search") -> dict:
    """One entry of ``loaders.spri_psnr_points``."""
    return {"defence": defence, "attack": attack, "stage": stage, "s_pri": s_pri, "s_pri_from": source,
            "psnr_mean": psnr, "psnr_ci_low": psnr - 1, "psnr_ci_high": psnr + 1, "psnr_chance": 9.0}


def test_spri_vs_psnr_reports_correlations_and_their_number_of_points(tmp_path: Path):
    path = tmp_path / "spri_vs_psnr.svg"
    figures.plot_spri_vs_psnr(path, [spri_point("3-1-7", 0.2, 10.0), spri_point("43-18-18", 0.3, 12.0),
                                     spri_point("none", 0.8, 22.0),
                                     spri_point("pinned", float("nan"), 15.0, source="")])
    text = svg_text(path)
    for expected in ("Pearson r = 1.00", "Spearman ρ = 1.00", "(n = 3)", "none (no transform)", "least-squares line",
                     "not shown (no S_pri or no finite PSNR): pinned", "chance level"):
        assert expected in text


def test_spri_vs_psnr_has_a_panel_per_attack_and_stage_with_hybrid_and_crop(tmp_path: Path):
    points = [spri_point(defence, s_pri, psnr + offset, attack=attack, stage=stage, source=source)
              for stage, offset in (("init", 5.0), ("final", 0.0)) for attack in ("inversed", "gs")
              for defence, s_pri, psnr, source in (("none", 0.8, 22.0, "search"), ("3-1-7", 0.2, 10.0, "search"),
                                                   ("43-18-18", 0.3, 12.0, "search"),
                                                   ("3-1-7+43-18-18", 0.25, 11.0, "sub-policies"),
                                                   ("crop", float("nan"), 16.0, ""))]
    path = tmp_path / "spri_vs_psnr.svg"
    figures.plot_spri_vs_psnr(path, points)
    text = svg_text(path)
    for attack in ("inversed", "gs"):
        for stage in ("init", "final"):
            assert f"Does S_pri predict {attack} at stage {stage}?" in text
    assert text.count("(n = 4)") == 4, "none, both policies and the hybrid in every panel"
    assert text.count("3-1-7+43-18-18") == 4 and "S_pri: mean of its sub-policies' scores" in text
    assert "crop (no S_pri: drawn at its PSNR)" in text and "not shown" not in text


def test_spri_psnr_points_place_the_hybrid_by_its_sub_policies_and_crop_without_s_pri(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from ats.report import loaders

    ranking = [{"policy": "", "s_pri_mean": "0.8"}, {"policy": "3-1-7", "s_pri_mean": "0.2"},
               {"policy": "43-18-18", "s_pri_mean": "0.4"}]
    monkeypatch.setattr(loaders, "read_verified_tsv", lambda path, expected_fingerprint: ranking)
    summary = [{"defence": defence, "attack": attack, "stage": "final", "psnr_mean": 10.0, "psnr_ci_low": 9.0,
                "psnr_ci_high": 11.0, "psnr_chance": 8.0}
               for attack in ("inversed", "gs")
               for defence in ("none", "crop", "3-1-7", "3-1-7+43-18-18", "3-1-7+1-2-3", "prune-70")]
    points = loaders.spri_psnr_points(summary, tmp_path / "ranking.tsv", ranking_fingerprint="f")
    assert len(points) == 10, "every policy defence, none and crop, for both attacks; no gradient defence"
    by_defence = {point["defence"]: point for point in points if point["attack"] == "gs"}
    assert (by_defence["none"]["s_pri"], by_defence["none"]["s_pri_from"]) == (0.8, "search")
    assert by_defence["3-1-7+43-18-18"]["s_pri"] == pytest.approx(0.3)
    assert by_defence["3-1-7+43-18-18"]["s_pri_from"] == "sub-policies"
    assert math.isnan(by_defence["crop"]["s_pri"]) and math.isnan(by_defence["3-1-7+1-2-3"]["s_pri"])


def test_spri_vs_psnr_is_honest_about_too_few_points_and_a_skipped_search(tmp_path: Path):
    one = tmp_path / "one" / "spri_vs_psnr.svg"
    figures.plot_spri_vs_psnr(one, [spri_point("3-1-7", 0.2, 10.0)])
    text = svg_text(one)
    assert "Pearson r = n/a" in text and "(n = 1)" in text and "at least 3 points are needed" in text
    skipped = tmp_path / "skipped" / "spri_vs_psnr.svg"
    figures.plot_spri_vs_psnr(skipped, [], note="The search was skipped: policies were pinned.")
    assert "The search was skipped" in svg_text(skipped)
    constant = tmp_path / "constant" / "spri_vs_psnr.svg"
    figures.plot_spri_vs_psnr(constant, [spri_point("a", 0.2, 10.0), spri_point("b", 0.2, 11.0),
                                         spri_point("c", 0.2, 12.0)])
    assert "all S_pri or all PSNR values are equal" in svg_text(constant)


# ---------------------------------------------------------------------------------------------
# Layout: rendered boxes of labels, notes and axis labels


@pytest.fixture
def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plot functions save, kept for measuring their rendered boxes."""
    kept = []
    save = figures._save

    def keep(figure, path):
        save(figure, path)
        kept.append(figure)

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def text_boxes(figure, texts) -> list:
    """The rendered boxes of ``texts``, without the leader lines that an annotation's own box includes."""
    figure.canvas.draw()  # at the figure's own dpi, which saving to a file changes while it lasts
    renderer = figure.canvas.get_renderer()
    return [Text.get_window_extent(text, renderer) for text in texts if text.get_text()]


def assert_apart(boxes: list) -> None:
    for first in range(len(boxes)):
        for second in range(first + 1, len(boxes)):
            assert not boxes[first].overlaps(boxes[second]), f"boxes {first} and {second} overlap"


def test_point_labels_do_not_overlap_when_many_points_are_close(tmp_path: Path, drawn_figures: list):
    rows = [{"defence": f"defence-{index}", "attack": attack, "stage": "final", "accuracy": 0.80 + 0.0005 * index,
             "psnr_mean": 12.0 + 0.02 * index + (attack == "gs"), "psnr_chance": 9.0}
            for index in range(30) for attack in ("ig", "gs")]
    figures.plot_privacy_utility(tmp_path / "privacy_utility.svg", rows)
    points = [spri_point(f"{index}-1-7", 0.3 + 0.002 * index, 12.0 + 0.01 * index) for index in range(25)]
    figures.plot_spri_vs_psnr(tmp_path / "spri_vs_psnr.svg", points)
    ranking_rows = ranking(40)
    figures.plot_spri_vs_sacc(tmp_path / "spri_vs_sacc.svg", ranking_rows, [row["policy"] for row in ranking_rows[1:6]],
                              hybrid=None, threshold=-85.0)
    for figure, count in zip(drawn_figures, (30, 25, 5)):
        ax = figure.axes[0]
        boxes = text_boxes(figure, ax.texts)
        assert len(boxes) >= count
        assert_apart(boxes)
        for label, box in zip(ax.texts, boxes):
            if hasattr(label, "xy"):
                assert not box.contains(*ax.transData.transform(label.xy)), "a label covers its own point"


def test_the_note_box_keeps_off_the_axis_labels(tmp_path: Path, drawn_figures: list):
    uncertainty = ["The top-ranked policies' S_pri intervals overlap, so the search cannot tell them apart; " * 3]
    rows = ranking(40)
    figures.plot_spri_vs_sacc(tmp_path / "spri_vs_sacc.svg", rows, [rows[1]["policy"]], hybrid="1-0-7+0-0-7",
                              threshold=-85.0, uncertainty=uncertainty)
    figure = drawn_figures[0]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    note = next(text for text in figure.texts if text.get_text().startswith("Note:"))
    note_box = note.get_bbox_patch().get_window_extent(renderer)
    ax = figure.axes[0]
    for label in (ax.xaxis.label, *ax.get_xticklabels()):
        assert not note_box.overlaps(label.get_window_extent(renderer)), label.get_text()


# ---------------------------------------------------------------------------------------------
# Atomic, reproducible writing


def test_figures_are_written_atomically_and_reproducibly(tmp_path: Path):
    path = tmp_path / "psnr.svg"
    figures.plot_psnr_distributions(path, {"crop / ig": np.array([10.0, 12.0])})
    first = path.read_bytes()
    figures.plot_psnr_distributions(path, {"crop / ig": np.array([10.0, 12.0])})
    assert path.read_bytes() == first, "an unchanged figure must give identical bytes"
    with pytest.raises(ValueError, match="suffix"):
        figures.plot_psnr_distributions(tmp_path / "psnr.unknown", {"crop / ig": np.array([10.0])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psnr.svg"]


def test_a_failed_rewrite_keeps_the_previous_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "psnr.svg"
    figures.plot_psnr_distributions(path, {"crop / ig": np.array([10.0, 12.0])})
    before = path.read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(figures.Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="killed"):
        figures.plot_psnr_distributions(path, {"crop / ig": np.array([1.0, 2.0])})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psnr.svg"]


def test_leak_across_training_and_against_original_figures(tmp_path: Path):
    records = []
    for stage, step, offset in (("init", 0, 6.0), ("final", 40, 0.0)):
        for defence in ("none", "3-1-7"):
            metrics = per_image_metrics([10.0 + offset, 12.0 + offset, 11.0 + offset], [False] * 3)
            metrics.update({f"chance/{g}/psnr": np.full(3, 9.0) for g in ("black", "train_mean")})
            metrics.update({f"chance/{g}/ssim": np.full(3, 0.1) for g in ("black", "train_mean")})
            metrics.update({"psnr_original": metrics["psnr"] - 1, "ssim_original": metrics["ssim"],
                            "chance_original/black/psnr": np.full(3, 8.0),
                            "chance_original/black/ssim": np.full(3, 0.1)})
            records.append({**metrics, "defence": defence, "stage": stage, "attack": "inversed", "training_step": step})
    rows = summary_rows(records, {"none": 0.9, "3-1-7": 0.8}, seed=0)
    leak = tmp_path / "leak" / "leak_across_training.svg"
    figures.plot_leak_across_training(leak, rows)
    text = svg_text(leak)
    for expected in ("none", "3-1-7", "PSNR gain over chance (dB)", "0 dB: chance"):
        assert expected in text
    original = tmp_path / "original" / "against_original.svg"
    figures.plot_against_original(original, rows)
    text = svg_text(original)
    assert "attacked at stage: init" in text and "attacked at stage: final" in text and "chance level" in text
    empty = tmp_path / "empty" / "against_original.svg"
    figures.plot_against_original(empty, [])
    assert "No attack was scored" in svg_text(empty)


# ---------------------------------------------------------------------------------------------
# The Snakemake report's structure


def test_report_categories_of_more_than_four_items_have_subcategories():
    """A category of the HTML report with more than four items is split into subcategories."""
    import re

    rules = Path(__file__).resolve().parent.parent / "workflow" / "rules"
    items = [match.group(1) for path in sorted(rules.glob("*.smk"))
             for match in re.finditer(r"report\((.*?)\n\s*\)", path.read_text(), flags=re.DOTALL)]
    categories: dict[str, list[str]] = {}
    for item in items:
        category = re.search(r'category="([^"]+)"', item)
        assert category and "caption=" in item, f"a report item without category or caption: {item}"
        categories.setdefault(category.group(1), []).append(item)
    assert sum(len(group) for group in categories.values()) >= 14
    for category, group in categories.items():
        if len(group) > 4:
            assert all("subcategory=" in item for item in group), f"category {category!r} needs subcategories"
