"""End to end: the tiny test config through every stage, the report, and dry runs at paper scale."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import pytest
from workflow_helpers import REPO, snakemake

from ats.report.summary import read_summary
from ats.runtime.atomic import read_tsv

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_every_stage_writes_its_outputs(finished_run):
    results = finished_run / "results"
    ranking = read_tsv(results / "search" / "ranking.tsv")
    for column in ("policy", "s_pri_mean", "s_pri_ci_low", "s_pri_ci_high", "s_pri_var", "s_acc_mean", "score",
                   "passed_threshold", "rank"):
        assert column in ranking[0]
    selection = json.loads((results / "search" / "selection.json").read_text())
    assert len(selection["top_k"]) == 2
    # tests/config/test.yaml scores every candidate twice: two repeats, one τ between their rankings.
    assert sorted(path.parent.name for path in (results / "search" / "scores").glob("*/shard-0000.h5")) == [
        "repeat-0", "repeat-1"]
    assert selection["repeats"] == 2 and len(selection["ranking_agreement"]["kendall_tau"]) == 2
    compared = selection["versus_reference"]["policies"]
    assert [row["policy"] for row in compared] == list(dict.fromkeys(selection["top_k"] + selection["hybrid_members"]))

    # The summary as the figures read it: verified against the fingerprint its record carries.
    recorded = json.loads((results / "summary.tsv.provenance.json").read_text())["fingerprint"]
    summary = read_summary(results / "summary.tsv", expected_fingerprint=recorded)
    defences = {row["defence"] for row in summary}
    assert {"none", "crop", "prune-70", *selection["top_k"]} <= defences
    # tests/config/test.yaml attacks every defence at two training stages, with two attacks.
    assert sorted((row["defence"], row["stage"], row["attack"]) for row in summary) == sorted(
        (d, s, a) for d in defences for s in ("init", "final") for a in ("inversed", "inversed-aware"))
    for row in summary:
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["n_images"] == 2
        assert row["training_step"] == (0 if row["stage"] == "init" else 3)  # 1 epoch of 300 images, batch 128
        assert row["chance_guess"] in ("black", "grey", "train_mean", "attack_start")
        assert row["psnr_gain"] == pytest.approx(row["psnr_mean"] - row["psnr_chance"])
        assert row["psnr_ci_low"] <= row["psnr_mean"] <= row["psnr_ci_high"]
        assert row["ssim_ci_low"] <= row["ssim_mean"] <= row["ssim_ci_high"]
        assert row["vs_chance"] in ("above chance", "indistinguishable from chance", "below chance")
        assert (row["defence"] == "none") == (row["psnr_diff_none"] != row["psnr_diff_none"])  # NaN only for none
    for figure in ("privacy_utility.svg", "training_curves.svg", "psnr_distributions.svg", "spri_vs_psnr.svg",
                   "leak_across_training.svg"):
        assert (results / "report" / figure).stat().st_size > 1000
    assert (results / "report" / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "training stage 'init'" in (results / "report" / "findings.html").read_text()
    assert (results / "report" / "published_comparison.tsv").exists()
    assert (results / "train" / "crop" / "snapshots" / "init.pt").exists()
    with h5py.File(results / "attack" / "crop" / "init" / "inversed.h5") as attack:
        assert attack.attrs["attack"] == "inversed" and attack.attrs["stage"] == "init"
        assert attack["chance/train_mean/psnr"].shape == (2,)
    if selection["hybrid"]:  # a policy-aware attack learns the draw of a policy's shared images
        with h5py.File(results / "attack" / selection["hybrid"] / "final" / "inversed-aware.h5") as attack:
            assert attack.attrs["policy_aware"] and attack["learned_draw/subpolicy"].shape == (2,)
            assert set(attack["learned_draw/subpolicy"][:]) <= {0, 1}


def test_logs_show_device_progress_and_timing(finished_run):
    log = (finished_run / "results" / "logs" / "score_shard" / "repeat-0" / "shard-0000.log").read_text()
    assert re.search(r"device", log, re.IGNORECASE)
    assert "it/s" in log or "s/it" in log  # a tqdm progress line


def test_report_renders(finished_run):
    result = snakemake(finished_run, "--cores", "1", "--report", "results/report.html")
    assert result.returncode == 0, result.stderr[-3000:]
    html = (finished_run / "results" / "report.html").read_text()
    for category in ("Search", "Training", "Attacks", "Summary"):
        assert category in html


def test_rerun_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "--cores", "1", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.parametrize("paper_config", sorted((REPO / "config" / "paper").glob("*.yaml")), ids=lambda p: p.stem)
def test_paper_configs_plan_the_full_search(tmp_path, paper_config):
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", configfile=paper_config, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    # 1600 candidates + the no-transform reference + 2 paper policies + 50 single ops + 1 validation.
    assert jobs["score_shard"] == "17"
    assert jobs["pretrain_search_model"] == "1"
