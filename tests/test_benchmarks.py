"""Smoke test of the benchmark suite (``make bench``).

``--quick`` runs every benchmark on tiny sizes; this checks that the JSON has the keys the issue
asks for and that the library agrees with the straightforward references on the same inputs.
Timings on tiny sizes on a shared machine mean nothing, so nothing here asserts a speed.
"""

from __future__ import annotations

import json

import pytest

from benchmarks import run

REQUIRED_KEYS = (
    "date", "device", "torch_version", "machine",
    "spri_speedup_resnet20", "spri_speedup_resnet20_4", "spri_max_abs_diff", "spri_floor_ratio",
    *(f"spri_{figure}_{model}" for figure in ("speedup", "floor_ratio", "ceiling", "float32_error")
      for model in ("resnet20", "resnet20_4", "convnet", "convnet32")),
    "spri_float32_error", "search_1600_hours_cifar100_resnet20_4", "search_1600_hours_cifar100_convnet",
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
    assert record["spri_max_abs_diff"] <= 1e-4
    assert record["spri_float32_error"] <= 1e-4  # make bench's target, 2e-5, is for 20 bins and more images
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
