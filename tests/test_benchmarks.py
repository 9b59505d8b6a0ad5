"""Smoke test of the benchmark suite (``make bench``).

``--quick`` runs every benchmark on tiny sizes; this checks that the JSON has the keys the issue
asks for and that the library agrees with the straightforward references on the same inputs.
Timings on tiny sizes on a shared machine mean nothing, so nothing here asserts a speed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from ats.search.privacy import privacy_curves
from benchmarks import flips, reference, run
from benchmarks.decisions import (
    decision_count,
    differing_decisions,
    per_sample_decisions,
    recorded_decisions,
    replayed_decisions,
)
from benchmarks.flips import format_summary, summarise
from benchmarks.search import loop_order, spri_case

REQUIRED_KEYS = (
    "date", "device", "torch_version", "machine",
    "spri_speedup_resnet20", "spri_speedup_resnet20_4", "spri_max_abs_diff", "spri_floor_ratio",
    *(f"spri_{figure}_{model}" for figure in ("speedup", "floor_ratio", "ceiling", "float32_error",
                                            "float32_arithmetic_error", "float32_arithmetic_error_loop",
                                            "max_abs_diff_same_choices", "decision_flips", "decisions")
      for model in ("resnet20", "resnet20_4", "convnet", "convnet32")),
    "spri_float32_error", "spri_float32_arithmetic_error", "spri_max_abs_diff_same_choices",
    "search_1600_hours_cifar100_resnet20_4", "search_1600_hours_cifar100_convnet",
    "search_1600_hours_fashion_mnist_resnet20", "search_1600_hours_fashion_mnist_convnet",
    "attack_speedup", "attack_max_abs_diff",
    "augment_speedup", "augment_max_abs_diff",
    "policy_seconds_resnet20_4", "policy_seconds_resnet20_4_method",
)


@pytest.mark.slow
def test_quick_run_writes_every_key_and_agrees_with_the_references(tmp_path, capsys):
    output = tmp_path / "bench.json"
    run.main(["--quick", "--output", str(output)])

    record = json.loads(output.read_text())
    assert [key for key in REQUIRED_KEYS if key not in record] == []
    assert record["device"] == "cpu" and record["quick"] is True
    assert record["spri_max_abs_diff"] <= 1e-4 and record["spri_max_abs_diff_same_choices"] <= 1e-4
    assert record["spri_float32_arithmetic_error"] <= 2e-5
    assert record["attack_max_abs_diff"] <= 1e-4
    assert record["augment_max_abs_diff"] <= 1e-6  # same uint8 pixels, then the same normalisation
    assert "extrapolated" in record["policy_seconds_resnet20_4_method"]
    assert "spri_speedup_resnet20" in capsys.readouterr().out  # the table was printed


def test_only_runs_the_named_benchmarks(tmp_path):
    output = tmp_path / "bench.json"
    record = run.main(["--quick", "--only", "augment", "--output", str(output)])

    assert record["benchmarks"] == ["augment"]
    assert "augment_speedup" in record and "spri_speedup_resnet20" not in record
    assert set(record["targets"]) == {"augment_speedup"}


def test_decisions_are_recorded_in_call_order_and_replayed_whatever_the_signs_here() -> None:
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    first = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])
    second = torch.tensor([[[[-1.0, -2.0], [0.2, 4.0]]]])  # one ReLU sign and the max-pool's pick differ
    with recorded_decisions() as recorded:
        model(first)
    with recorded_decisions() as other:
        model(second)
    assert [choice.dtype for choice in recorded] == [torch.bool, torch.int64]
    assert decision_count(recorded) == 4 + 1
    assert differing_decisions(recorded, other) == 1 + 1

    second.requires_grad_(True)
    with replayed_decisions(recorded):
        output = model(second)
    # The first record passes units 0, 2, 3 and the pool reads position 2 (3.0 there, 0.2 here).
    assert output.flatten().tolist() == [pytest.approx(0.2)]
    (gradient,) = torch.autograd.grad(output.sum(), second)
    assert gradient.flatten().tolist() == [0.0, 0.0, 1.0, 0.0]


def test_a_replay_that_does_not_match_its_record_is_refused() -> None:
    originals = (nn.ReLU.forward, nn.MaxPool2d.forward)
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    with recorded_decisions() as recorded:
        model(torch.randn(1, 1, 4, 4))
    mismatch = r"call 1 \(ReLU\) has shape \(1, 1, 2, 2\), the record \(1, 1, 4, 4\)"
    with pytest.raises(RuntimeError, match=mismatch), replayed_decisions(recorded):
        model(torch.randn(1, 1, 2, 2))
    with pytest.raises(RuntimeError, match="1 of 2 recorded calls were not replayed"), replayed_decisions(recorded):
        model[0](torch.randn(1, 1, 4, 4))
    with pytest.raises(ValueError, match="different passes"):
        differing_decisions(recorded, recorded[:1])
    assert (nn.ReLU.forward, nn.MaxPool2d.forward) == originals  # the patches are undone after an error too


def test_a_record_of_batched_passes_splits_into_each_samples_batch_one_record() -> None:
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    samples = torch.randn(5, 1, 4, 4)
    with recorded_decisions() as batched:
        for start in (0, 2, 4):  # passes of 2, 2 and 1 samples
            model(samples[start:start + 2])
    with recorded_decisions() as one_at_a_time:
        for sample in samples:
            model(sample.unsqueeze(0))
    split = per_sample_decisions(batched, len(samples))
    assert len(split) == 5
    assert differing_decisions([choice for record in split for choice in record], one_at_a_time) == 0
    assert [tuple(choice.shape) for choice in split[4]] == [tuple(choice.shape) for choice in one_at_a_time[8:]]
    with pytest.raises(ValueError, match="not passes of"):
        per_sample_decisions(batched, 6)


def test_the_loop_order_puts_the_librarys_choices_where_the_batch_one_loop_makes_them() -> None:
    """In float64 both implementations take the same branches, so the library's record, reordered,
    must equal the loop's own record choice for choice (and shape for shape)."""
    case = spri_case("ConvNet32", 2, 8, torch.device("cpu"), variant="test")
    model = case.model.double()
    images, noise = case.images.double(), case.noise.double()
    with recorded_decisions() as library_choices:
        privacy_curves(model, images, case.labels, noise, bins=4, chunk_size=4)
    with recorded_decisions() as loop_choices:
        reference.privacy_scores(model, images, case.labels, noise, bins=4)
    assert differing_decisions(loop_choices, loop_order(library_choices, 2, 4)) == 0


def test_the_flip_survey_reports_each_sides_float32_error_against_float64(tmp_path) -> None:
    output = tmp_path / "flips.json"
    flips.main(["--models", "ConvNet32", "--cases", "1", "--images", "1", "--output", str(output)])
    [row] = json.loads(output.read_text())["rows"]
    case = spri_case("ConvNet32", 1, flips.CALIBRATION_IMAGES, torch.device("cpu"), variant="flips-0")
    exact, _ = privacy_curves(case.model.double(), case.images.double(), case.labels, case.noise.double(),
                              bins=flips.BINS)
    case.model.float()
    library, _ = privacy_curves(case.model, case.images, case.labels, case.noise, bins=flips.BINS)
    loop, _ = reference.privacy_scores(case.model, case.images, case.labels, case.noise, bins=flips.BINS)
    assert row["library_error"] == pytest.approx(float((library.double() - exact).abs().max()), abs=1e-9)
    assert row["loop_error"] == pytest.approx(float((loop - exact).abs().max()), abs=1e-9)
    assert row["decisions"] > 10**6 and 0 <= row["library_flips"] < 1000 and 0 <= row["loop_flips"] < 1000


def test_the_flip_summary_counts_per_model_and_compares_the_sides_pairwise() -> None:
    rows = [{"model": "A", "library_flips": 2, "loop_flips": 3, "library_error": 1e-5, "loop_error": 1e-6},
            {"model": "A", "library_flips": 1, "loop_flips": 0, "library_error": 1e-6, "loop_error": 4e-5},
            {"model": "A", "library_flips": 4, "loop_flips": 1, "library_error": 3e-5, "loop_error": 3e-6},
            {"model": "B", "library_flips": 0, "loop_flips": 1, "library_error": 2e-5, "loop_error": 2e-5}]
    summary = summarise(rows, bound=2e-5)

    assert list(summary) == ["A", "B", "all"]
    counts = {key: value for key, value in summary["A"].items() if not key.endswith("_difference")}
    assert counts == {"cases": 3, "bound": 2e-5, "library_flips": 7, "loop_flips": 4,
                      "library_largest_error": 3e-5, "loop_largest_error": 4e-5,
                      "library_cases_over_bound": 1, "loop_cases_over_bound": 1}
    assert summary["all"]["library_flips"] == 7 and summary["B"]["loop_cases_over_bound"] == 0  # not over itself
    # Paired per case: flips +1 on average; log10 errors +1, −1.6, +1 (ratios 10, 1/40, 10).
    assert summary["A"]["flips_difference"]["mean"] == pytest.approx(1.0)
    assert summary["A"]["log10_error_difference"]["mean"] == pytest.approx((2 - np.log10(40)) / 3)
    assert summary["B"]["flips_difference"]["n"] == 1 and not summary["B"]["flips_difference"]["excludes_zero"]
    table = format_summary(summary)
    assert table.count("\n") == 4 and "| A | 3 | 7 / 4 | +1.0 [" in table and "cannot be told from 0" in table
