"""Published figures: the shipped data validates, matches the paper configs, and the comparison
table sets the run's numbers beside them as a researcher would read them."""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats
from workflow_helpers import effective_config

from ats.config import CONFIG_SCHEMA_PATH
from ats.defence.names import parse_defence
from ats.report.published import (
    COMPARISON_COLUMNS,
    PublishedDataError,
    comparison_rows,
    defence_key,
    load_published,
    parse_published,
    published_settings,
    write_published_comparison,
)
from ats.report.summary import SUMMARY_COLUMNS, write_summary
from ats.runtime.atomic import read_tsv, write_tsv
from ats.runtime.provenance import write_with_provenance

REPO = Path(__file__).resolve().parent.parent
PAPER_CONFIGS = sorted((REPO / "config" / "paper").glob("*.yaml"))
DATA_PATH = REPO / "ats" / "report" / "published_results.yaml"


def raw_data() -> dict:
    return yaml.safe_load(DATA_PATH.read_text())


# ---------------------------------------------------------------------------------------------
# The shipped data


def test_shipped_data_loads_and_every_entry_validates():
    results = load_published()
    assert set(results.settings) == {
        "cifar100-resnet20-4", "cifar100-convnet", "fashion-mnist-resnet20", "fashion-mnist-convnet"
    }
    assert all(setting.psnr for setting in results.settings.values())
    # Spot checks against the publications' tables.
    headline = {(e.source, e.defence, e.attack): e for e in results.settings["cifar100-resnet20-4"].psnr}
    assert headline[("replication-a", "3-1-7", "inversed")].psnr_std == 0.88
    assert headline[("replication-a", "prune-70", "inversed")].accuracy_percent == 74.61
    assert headline[("paper", "crop", "inversed")].quoted_by == "replication-b"
    assert headline[("replication-b", "3-1-7+43-18-18", "inversed")].psnr_mean == 7.48
    [pearson_a] = [c for c in results.settings["cifar100-resnet20-4"].correlation if c.source == "replication-a"]
    assert (pearson_a.statistic, pearson_a.value, pearson_a.images) == ("pearson", 0.12, 100)


def test_every_source_is_cited_with_its_doi_or_paper():
    sources = load_published().sources
    assert "10.5281/zenodo.6574647" in sources["replication-a"].citation
    assert "10.5281/zenodo.6574713" in sources["replication-b"].citation
    assert "2011.12505" in sources["paper"].citation


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[path.stem for path in PAPER_CONFIGS])
def test_each_paper_config_names_its_own_published_setting(path):
    config = effective_config(path)
    setting = config["report"]["published_setting"]
    assert setting == path.stem
    published = load_published().settings[setting]
    assert (published.dataset, published.arch) == (config["dataset"]["name"], config["model"]["arch"])
    # The published policies are among those the config trains or scores.
    scored = set(config["search"]["candidates"]["extra"]) | set(config["training"]["validation_policies"])
    policies = {e.defence for e in published.psnr if parse_defence(e.defence).kind == "policy" and "+" not in e.defence}
    assert policies <= scored


def test_schema_offers_exactly_the_published_settings_and_the_demo_none():
    schema = yaml.safe_load(CONFIG_SCHEMA_PATH.read_text())
    key = schema["properties"]["report"]["properties"]["published_setting"]
    assert key["enum"] == [None, *published_settings()]
    assert effective_config(REPO / "config" / "config.yaml")["report"]["published_setting"] is None


BAD_ENTRIES = [
    # (change to the cifar100-resnet20-4 setting's first PSNR entry, words of the error)
    ({"defence": "3--1"}, ["psnr[0]", "3--1"]),
    ({"attack": "dlg"}, ["psnr[0]", "unknown attack 'dlg'"]),
    ({"source": "replication-c"}, ["psnr[0]", "replication-c", "not among the sources"]),
    ({"quoted_by": "paper"}, ["psnr[0]", "quoted by itself"]),
    ({"psnr_mean": float("nan")}, ["psnr[0]", "psnr_mean", "finite"]),
    ({"psnr_mean": "13.88"}, ["psnr[0]", "psnr_mean", "finite"]),
    ({"accuracy_percent": 178.1}, ["psnr[0]", "accuracy_percent", "[0.0, 100.0]"]),
    ({"images": 0}, ["psnr[0]", "images", "positive integer"]),
    ({"psnr_db": 1.0}, ["psnr[0]", "unknown keys psnr_db"]),
]


@pytest.mark.parametrize("change,words", BAD_ENTRIES, ids=[str(case[0]) for case in BAD_ENTRIES])
def test_a_bad_entry_is_refused_naming_it(change, words):
    data = raw_data()
    data["settings"]["cifar100-resnet20-4"]["psnr"][0].update(change)
    with pytest.raises(PublishedDataError) as error:
        parse_published(data)
    message = str(error.value)
    assert "settings.cifar100-resnet20-4" in message
    for word in words:
        assert word in message, message


def test_duplicates_missing_keys_and_bad_settings_are_refused():
    data = raw_data()
    entries = data["settings"]["cifar100-convnet"]["psnr"]
    twin = copy.deepcopy(entries[-1])
    twin["defence"] = "21-13-3+7-4-15"  # the same hybrid in the other order
    entries.append(twin)
    with pytest.raises(PublishedDataError, match=r"cifar100-convnet\.psnr: .* appears twice"):
        parse_published(data)

    data = raw_data()
    del data["settings"]["fashion-mnist-convnet"]["psnr"][1]["psnr_mean"]
    with pytest.raises(PublishedDataError, match=r"fashion-mnist-convnet\.psnr\[1\].*missing psnr_mean"):
        parse_published(data)

    data = raw_data()
    data["settings"]["fashion-mnist-convnet"]["arch"] = "VGG16"
    with pytest.raises(PublishedDataError, match="fashion-mnist-convnet: arch 'VGG16'"):
        parse_published(data)

    data = raw_data()
    data["settings"]["cifar100-resnet20-4"]["correlation"][1]["statistic"] = "kendall"
    with pytest.raises(PublishedDataError, match=r"correlation\[1\].*statistic must be one of pearson, spearman"):
        parse_published(data)


def test_defence_key_ignores_hybrid_order_and_number_spelling():
    assert defence_key("7-4-15+21-13-3") == defence_key("21-13-3+7-4-15")
    assert defence_key("gauss-1e-3") == defence_key("gauss-0.001")
    assert defence_key("3-1-7") != defence_key("7-1-3")
    assert defence_key("none") != defence_key("crop")


# ---------------------------------------------------------------------------------------------
# The comparison, on a small hand-written data set

TOY_DATA = {
    "sources": {
        "paper": {"name": "paper", "citation": "Gao et al.", "setup": "long"},
        "rep": {"name": "replication A", "citation": "Drabent et al.", "setup": "short"},
    },
    "settings": {
        "toy": {
            "dataset": "fashion-mnist",
            "arch": "ConvNet",
            "psnr": [
                {"source": "paper", "quoted_by": "rep", "label": "None", "defence": "crop",
                 "attack": "inversed", "psnr_mean": 10.04},
                {"source": "rep", "label": "None", "defence": "crop", "attack": "inversed",
                 "psnr_mean": 9.52, "psnr_std": 2.0, "accuracy_percent": 94.61, "images": 6},
                {"source": "rep", "label": "hybrid", "defence": "14-48-48+42-28-42", "attack": "inversed",
                 "psnr_mean": 6.8, "accuracy_percent": 94.59, "images": 6, "note": "six images"},
                {"source": "rep", "label": "random", "defence": "19-1-18", "attack": "inversed",
                 "psnr_mean": 9.47},
            ],
            "correlation": [
                {"source": "rep", "statistic": "pearson", "value": 0.12, "images": 100},
            ],
        }
    },
}


def toy():
    return parse_published(copy.deepcopy(TOY_DATA))


SUMMARY = [
    {"defence": "none", "attack": "inversed", "stage": "final", "accuracy": 0.9, "psnr_mean": 12.5,
     "psnr_ci_low": 11.5, "psnr_ci_high": 13.25, "psnr_chance": 11.19, "n_images": 100},
    {"defence": "crop", "attack": "inversed", "stage": "final", "accuracy": 0.9512, "psnr_mean": 9.004,
     "psnr_ci_low": 8.5, "psnr_ci_high": 9.5, "psnr_chance": 11.19, "psnr_gain": -2.186, "n_images": 100},
    # An earlier stage: published models were attacked after training only.
    {"defence": "crop", "attack": "inversed", "stage": "init", "accuracy": 0.1, "psnr_mean": 20.0},
    # The run's hybrid in the other order, without the optional columns (an older summary).
    {"defence": "42-28-42+14-48-48", "attack": "inversed", "accuracy": 0.94, "psnr_mean": 7.0},
]


def expected(**cells):
    row = dict.fromkeys(COMPARISON_COLUMNS)
    row.update(cells)
    return row


def test_comparison_rows_of_a_hand_built_summary():
    rows = comparison_rows(SUMMARY, "toy", {"pearson": 0.45678, "spearman": math.nan, "n": 4},
                           correlation_attack="inversed", published=toy())
    run_crop = dict(run=9.0, run_ci_low=8.5, run_ci_high=9.5, run_chance=11.19, run_gain=-2.19,
                    run_accuracy_pct=95.12, run_n=100)
    assert rows[0] == expected(quantity="psnr", defence="none", attack="inversed", run=12.5, run_ci_low=11.5,
                               run_ci_high=13.25, run_chance=11.19, run_gain=1.31, run_accuracy_pct=90.0,
                               run_n=100, note="no published figure")
    assert rows[1] == expected(quantity="psnr", defence="crop", attack="inversed",
                               source="paper, as quoted by replication A", published_as="None",
                               published=10.04, note="", **run_crop)
    assert rows[2] == expected(quantity="psnr", defence="crop", attack="inversed", source="replication A",
                               published_as="None", published=9.52, published_std=2.0, published_n=6,
                               published_accuracy_pct=94.61, note="", **run_crop)
    assert rows[3] == expected(quantity="psnr", defence="42-28-42+14-48-48", attack="inversed",
                               source="replication A", published_as="hybrid", published=6.8, published_n=6,
                               published_accuracy_pct=94.59, run=7.0, run_accuracy_pct=94.0,
                               note="published as 14-48-48+42-28-42; six images")
    # Published but not trained here: shown, with empty run columns.
    assert rows[4] == expected(quantity="psnr", defence="19-1-18", attack="inversed", source="replication A",
                               published_as="random", published=9.47,
                               note="not trained or attacked in this run")
    assert rows[5] == expected(quantity="spri_psnr_pearson", attack="inversed", source="replication A",
                               published=0.12, published_n=100, run=0.457, run_n=4, note="")
    assert rows[6]["quantity"] == "spri_psnr_spearman" and math.isnan(rows[6]["run"])
    assert rows[6]["source"] is None and rows[6]["note"] == "no published figure"
    assert rows[7:] == [
        expected(quantity="source", source="paper", note="Gao et al.; long"),
        expected(quantity="source", source="replication A", note="Drabent et al.; short"),
    ]


def test_without_search_or_setting_the_table_says_so():
    rows = comparison_rows(SUMMARY, "toy", None, published=toy())
    correlation_rows = [row for row in rows if row["quantity"].startswith("spri_psnr")]
    assert [row["quantity"] for row in correlation_rows] == ["spri_psnr_pearson"]
    assert correlation_rows[0]["run"] is None and "search was skipped" in correlation_rows[0]["note"]

    [row] = comparison_rows(SUMMARY, None)
    assert row["quantity"] == "note" and "report.published_setting is null" in row["note"]

    with pytest.raises(ValueError, match="unknown published setting 'toy'.*cifar100-resnet20-4"):
        comparison_rows(SUMMARY, "toy")


def test_a_run_of_another_case_is_flagged_in_the_first_row():
    rows = comparison_rows(SUMMARY, "toy", None, dataset="fashion-mnist", arch="ConvNet8", published=toy())
    assert rows[0]["quantity"] == "note"
    assert rows[0]["note"] == ("this run trains ConvNet8 on fashion-mnist; the published figures are for "
                               "ConvNet on fashion-mnist")
    assert comparison_rows(SUMMARY, "toy", None, dataset="fashion-mnist", arch="ConvNet",
                           published=toy())[0]["quantity"] == "psnr"


def test_shipped_setting_lists_every_published_figure_without_a_run():
    rows = comparison_rows([], "cifar100-resnet20-4", None)
    psnr_rows = [row for row in rows if row["quantity"] == "psnr"]
    assert len(psnr_rows) == len(load_published().settings["cifar100-resnet20-4"].psnr)
    assert all(row["run"] is None for row in psnr_rows)
    assert [row["attack"] for row in psnr_rows][:1] == ["inversed"]
    assert {row["source"] for row in rows if row["quantity"] == "source"} == {
        "paper", "replication A", "replication B"
    }


def test_written_table_has_empty_cells_for_missing_values(tmp_path):
    rows = comparison_rows(SUMMARY, "toy", {"pearson": 0.5, "spearman": 0.4, "n": 4}, published=toy())
    path = tmp_path / "published_comparison.tsv"
    write_published_comparison(path, rows)
    table = read_tsv(path)
    assert list(table[0]) == list(COMPARISON_COLUMNS)
    assert len(table) == len(rows)
    assert table[0]["published"] == "" and table[0]["run"] == "12.5"
    assert table[3]["defence"] == "42-28-42+14-48-48" and table[3]["run_ci_low"] == ""


# ---------------------------------------------------------------------------------------------
# The adapter script, with a stand-in for the snakemake object


def _summary_row(**cells):
    defaults = {str: "", float: math.nan, int: 0}
    row = {column: cells.get(column, defaults[convert]) for column, convert in SUMMARY_COLUMNS.items()}
    return {**row, "stage": "final"} if "stage" in SUMMARY_COLUMNS else row


@pytest.mark.slow
def test_adapter_writes_the_table_with_the_runs_correlation(tmp_path):
    summary = tmp_path / "summary.tsv"
    write_summary(summary, [
        _summary_row(defence=defence, attack="inversed", accuracy=0.9, psnr_mean=psnr, n_images=8)
        for defence, psnr in [("none", 12.0), ("crop", 11.0), ("14-48-48", 9.0), ("42-28-42", 8.0)]
    ], fingerprint="summary-of-this-run")
    ranking = tmp_path / "ranking.tsv"
    ranked = [["", 0.9], ["14-48-48", 0.5], ["42-28-42", 0.2]]
    write_with_provenance(ranking, lambda path: write_tsv(path, ["policy", "s_pri_mean"], ranked),
                          fingerprint="selection-of-this-run")
    output, log = tmp_path / "report" / "published_comparison.tsv", tmp_path / "compare.log"
    bootstrap = (
        "import runpy, sys, types\n"
        "snakemake = types.SimpleNamespace(\n"
        f"    input=types.SimpleNamespace(summary={str(summary)!r}, ranking={str(ranking)!r}),\n"
        "    params=types.SimpleNamespace(setting='fashion-mnist-convnet', dataset='fashion-mnist', arch='ConvNet',\n"
        "                                 summary_fingerprint='summary-of-this-run',\n"
        "                                 selection_fingerprint='selection-of-this-run'),\n"
        f"    output=[{str(output)!r}], log=[{str(log)!r}])\n"
        f"runpy.run_path({str(REPO / 'workflow' / 'scripts' / 'compare_published.py')!r},"
        " init_globals={'snakemake': snakemake})\n"
    )
    subprocess.run([sys.executable, "-c", bootstrap], check=True, cwd=REPO, timeout=120)
    table = read_tsv(output)
    crop = [row for row in table if row["defence"] == "crop"]
    assert [(row["source"], row["published"], row["run"]) for row in crop] == [("replication A", "9.52", "11.0")]
    [pearson] = [row for row in table if row["quantity"] == "spri_psnr_pearson"]
    # The trained policies with an S_pri (none is the empty policy) against their PSNR.
    assert pearson["run_n"] == "3" and pearson["attack"] == "inversed"
    assert float(pearson["run"]) == round(stats.pearsonr([0.9, 0.5, 0.2], [12.0, 9.0, 8.0]).statistic, 3)
