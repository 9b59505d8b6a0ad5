"""Bad configs stop the workflow at parse time, naming the key and the allowed values."""

from __future__ import annotations

import pytest

from workflow_helpers import snakemake

FOUR_BY_TWELVE = {"epochs": 4, "train_fraction": 0.025, "batch_size": 125}

BAD_CONFIGS = [
    # (override, words the error must contain)
    ({"sed": 1}, ["sed", "Additional properties"]),
    ({"search": {"candidates": {"cuont": 3}}}, ["search.candidates", "cuont"]),
    ({"training": {"epochs": "ten"}}, ["training.epochs", "integer"]),
    ({"training": {"epochs": -5}}, ["training.epochs", "minimum"]),
    ({"search": {"pretrain": {"fraction": 0}}}, ["search.pretrain.fraction"]),
    ({"search": {"pretrain": {"fraction": 1.5}}}, ["search.pretrain.fraction", "maximum"]),
    ({"dataset": {"name": "mnist"}}, ["dataset.name", "fashion-mnist", "cifar100"]),
    ({"model": {"arch": "VGG16"}}, ["model.arch", "ResNet"]),
    ({"model": {"arch": "ResNet21"}}, ["model.arch", "6n+2"]),
    ({"search": {"candidates": {"extra": ["3--1"]}}}, ["search.candidates.extra", "3--1"]),
    ({"search": {"candidates": {"extra": ["3-50-7"]}}}, ["search.candidates.extra", "3-50-7"]),
    ({"search": {"pinned_policies": ["1-2+"]}}, ["search.pinned_policies", "1-2+"]),
    ({"training": {"gradient_defences": ["prune-150"]}}, ["training.gradient_defences", "prune-150"]),
    ({"training": {"gradient_defences": ["crop"]}}, ["training.gradient_defences", "crop"]),
    ({"device": "gpu"}, ["device", "auto", "cuda"]),
    ({"attack": {"attacks": ["deepleakage"]}}, ["attack.attacks", "inversed"]),
    ({"search": {"selection": {"top_k": 0}}}, ["search.selection.top_k", "minimum"]),
    ({"search": {"pretrain": {"checkpoint": "/nonexistent/100.pth"}}}, ["search.pretrain.checkpoint", "does not exist"]),
    ({"training": {"validation_policies": [17]}}, ["training.validation_policies", "string"]),
    # What JSON Schema lets through: integral floats count as integers, NaN passes every bound.
    ({"training": {"epochs": 5.0}}, ["training.epochs", "must be an integer, got 5.0"]),
    ({"search": {"pretrain": {"fraction": float("nan")}}}, ["search.pretrain.fraction", "finite"]),
    ({"search": {"candidates": {"count": 200000}}}, ["search.candidates.count", "distinct"]),
    # Training stages: the name, and points of a run of 4 epochs × 12 steps (1500 images, batches of 125).
    ({"attack": {"stages": ["middle"]}}, ["attack.stages", "epoch-"]),
    ({"training": FOUR_BY_TWELVE, "attack": {"stages": ["step-48"]}},
     ["attack.stages", "step-48", "ends after 48 steps"]),
    ({"training": FOUR_BY_TWELVE, "attack": {"stages": ["epoch-4"]}}, ["attack.stages", "epoch-4", "final"]),
    ({"training": FOUR_BY_TWELVE, "attack": {"stages": ["epoch-1", "step-12"]}}, ["attack.stages", "same point"]),
]


@pytest.mark.parametrize("override,expected", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_bad_config_stops_before_any_job(tmp_path, override, expected):
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", config=override, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for word in expected:
        assert word in output, f"{word!r} missing from:\n{output}"
    assert not (tmp_path / "results").exists()
