"""Tests of the chance levels (ats.attack.chance) and of what the summary and findings make of them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ats.attack.chance import CHANCE_GUESSES, chance_metrics, training_mean_image, uninformed_guesses
from ats.report.findings import findings
from ats.report.summary import ABOVE_CHANCE, AT_CHANCE, BELOW_CHANCE, summary_rows


def test_guess_metrics_equal_hand_computed_psnr():
    targets = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]], dtype=torch.float64).repeat(1, 1, 6, 6)  # 12×12
    train_mean = torch.full((1, 12, 12), 0.5, dtype=torch.float64)
    start = torch.full_like(targets, 2.0)  # outside the pixel range: clamped to 1
    guesses = uninformed_guesses(targets, train_mean, start)
    scores = chance_metrics(targets, guesses)
    assert set(scores) == {f"{g}/{m}" for g in CHANCE_GUESSES for m in ("psnr", "ssim")}
    mean_square = float((targets**2).mean())  # (0.04 + 0.16 + 0.36 + 0.64) / 4 = 0.3
    assert scores["black/psnr"].item() == pytest.approx(10 * math.log10(1 / mean_square))
    grey_error = float(((targets - 0.5) ** 2).mean())  # (0.09 + 0.01 + 0.01 + 0.09) / 4 = 0.05
    assert scores["grey/psnr"].item() == pytest.approx(10 * math.log10(1 / grey_error))
    assert scores["train_mean/psnr"].item() == pytest.approx(scores["grey/psnr"].item())
    start_error = float(((targets - 1.0) ** 2).mean())
    assert scores["attack_start/psnr"].item() == pytest.approx(10 * math.log10(1 / start_error))
    # A constant guess has no structure: its SSIM is small but defined.
    assert abs(scores["black/ssim"].item()) < 0.1


def test_training_mean_image_averages_the_preprocessed_pixels_in_chunks(monkeypatch):
    import ats.attack.chance as chance

    monkeypatch.setattr(chance, "_MEAN_IMAGE_CHUNK", 3)  # several chunks, the last one partial
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 4, 1), dtype=np.uint8)
    mean = training_mean_image(images, lambda batch: torch.from_numpy(batch).permute(0, 3, 1, 2))
    np.testing.assert_allclose(mean.numpy(), images.transpose(0, 3, 1, 2).mean(axis=0) / 255, rtol=1e-12)


def record(defence: str, psnr: list[float], chance_psnr: dict[str, list[float]], stage: str = "final") -> dict:
    psnr_values = np.array(psnr)
    result = {"defence": defence, "stage": stage, "attack": "inversed", "training_step": 0 if stage == "init" else 50,
              "target_indices": np.arange(len(psnr)), "diverged": np.zeros(len(psnr), bool),
              "psnr": psnr_values, "ssim": psnr_values / 40, "mse": 10 ** (-psnr_values / 10),
              "feature_mse": np.ones(len(psnr))}
    for guess in CHANCE_GUESSES:
        values = np.array(chance_psnr.get(guess, [5.0] * len(psnr)))
        result[f"chance/{guess}/psnr"] = values
        result[f"chance/{guess}/ssim"] = values / 100
    return result


def test_summary_picks_the_best_guess_and_computes_gain_and_paired_difference():
    none = record("none", [20.0, 22.0, 18.0, 21.0, 19.0, 20.5],
                  {"train_mean": [12.0, 11.0, 13.0, 12.0, 12.5, 11.5], "black": [8.0] * 6})
    policy = record("3-1-7", [12.0, 11.5, 13.5, 12.0, 12.0, 12.0],
                    {"train_mean": [12.0, 11.0, 13.0, 12.0, 12.5, 11.5]})
    failed = record("crop", [6.0, 5.5, 6.5, 6.0, 5.0, 6.0], {"black": [8.0, 8.5, 7.5, 8.0, 8.2, 7.9]})
    rows = summary_rows([none, policy, failed], {"none": 0.9, "3-1-7": 0.85, "crop": 0.88}, seed=1)
    by_defence = {row["defence"]: row for row in rows}

    top = by_defence["none"]
    assert top["chance_guess"] == "train_mean"
    assert top["psnr_chance"] == pytest.approx(12.0)
    assert top["psnr_gain"] == pytest.approx(np.mean([20.0, 22.0, 18.0, 21.0, 19.0, 20.5]) - 12.0)
    assert top["psnr_gain_ci_low"] > 0 and top["vs_chance"] == ABOVE_CHANCE
    assert top["psnr_ci_low"] <= top["psnr_mean"] <= top["psnr_ci_high"]
    assert top["ssim_chance"] == pytest.approx(0.12)
    assert math.isnan(top["psnr_diff_none"])  # none is the reference itself

    assert by_defence["3-1-7"]["vs_chance"] == AT_CHANCE
    assert by_defence["3-1-7"]["psnr_diff_none"] == pytest.approx(12.166666 - 20.083333, abs=1e-5)
    assert by_defence["3-1-7"]["psnr_diff_none_ci_high"] < 0
    assert by_defence["crop"]["chance_guess"] == "black" and by_defence["crop"]["vs_chance"] == BELOW_CHANCE


def test_findings_say_when_the_attack_failed_and_which_defences_cannot_be_told_from_chance():
    leaking_none = record("none", [20.0, 22.0, 18.0, 21.0], {"train_mean": [12.0] * 4})
    policy = record("3-1-7", [12.1, 11.9, 12.2, 11.8], {"train_mean": [12.0] * 4})
    failed_none = record("none", [8.0, 8.4, 7.8, 8.1], {"train_mean": [12.0] * 4}, stage="init")
    rows = summary_rows([failed_none, leaking_none, policy], {"none": 0.9, "3-1-7": 0.85}, seed=0)
    sections = dict(findings(rows))
    init = sections["Attack inversed on the models at training stage 'init'"]
    assert init[0].startswith("The attack failed")
    final = sections["Attack inversed on the models at training stage 'final'"]
    assert final[0].startswith("Without a defence the model leaks")
    assert final[1].startswith("3-1-7 cannot be told from chance") and "against none" in final[1]


def test_summary_refuses_a_paired_comparison_on_other_targets():
    none = record("none", [20.0, 21.0], {})
    other = {**record("crop", [10.0, 11.0], {}), "target_indices": np.array([5, 6])}
    with pytest.raises(ValueError, match="other targets than none"):
        summary_rows([none, other], {"none": 0.9, "crop": 0.9}, seed=0)


def test_summary_scores_against_the_untransformed_image_when_the_file_has_it():
    row_without = summary_rows([record("none", [20.0, 21.0], {})], {"none": 0.9}, seed=0)[0]
    assert math.isnan(row_without["psnr_original"]) and row_without["vs_chance_original"] == ""
    with_original = record("3-1-7", [9.0, 9.5, 10.0, 9.2], {})
    with_original["psnr_original"] = np.array([15.0, 16.0, 14.0, 15.5])
    with_original["ssim_original"] = np.array([0.5, 0.6, 0.4, 0.55])
    for guess in CHANCE_GUESSES:
        with_original[f"chance_original/{guess}/psnr"] = np.full(4, 11.0 if guess == "train_mean" else 8.0)
        with_original[f"chance_original/{guess}/ssim"] = np.full(4, 0.1)
    row = summary_rows([with_original], {"3-1-7": 0.8}, seed=0)[0]
    assert row["psnr_original"] == pytest.approx(15.125)
    assert row["psnr_original_chance"] == pytest.approx(11.0)
    assert row["psnr_original_gain"] == pytest.approx(4.125) and row["vs_chance_original"] == ABOVE_CHANCE
    assert row["psnr_original_ci_low"] <= 15.125 <= row["psnr_original_ci_high"]
    assert row["ssim_original_chance"] == pytest.approx(0.1)
    assert row["vs_chance"] == ABOVE_CHANCE  # the shared-image columns are computed as before


def test_findings_say_whether_a_policy_survives_an_attacker_who_knows_it():
    rows = []
    for attack, gains in (("inversed", [11.0, 11.2, 10.9, 11.1]), ("inversed-aware", [16.0, 15.0, 17.0, 16.5])):
        item = {**record("3-1-7", [9.0, 9.5, 10.0, 9.2], {}), "attack": attack}
        item["psnr_original"], item["ssim_original"] = np.array(gains), np.full(4, 0.3)
        for guess in CHANCE_GUESSES:
            item[f"chance_original/{guess}/psnr"] = np.full(4, 11.0)
            item[f"chance_original/{guess}/ssim"] = np.full(4, 0.1)
        rows.append(item)
    sections = dict(findings(summary_rows(rows, {"3-1-7": 0.8}, seed=0)))
    [sentence] = sections["Against an attacker who knows the policy, training stage 'final'"]
    assert sentence.startswith("3-1-7 protects only against an attacker who does not know it")
