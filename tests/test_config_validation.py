"""Bad configs stop the workflow at parse time, naming the key and the allowed values, or the file."""

from __future__ import annotations

import os
import shutil

import pytest
from workflow_helpers import REPO, TEST_CONFIG, snakemake

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
    ({"search": {"pretrain": {"checkpoint": "/nonexistent/100.pth"}}},
     ["search.pretrain.checkpoint", "does not exist"]),
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
    # Ranges that depend on the data set's split sizes (10 000 test images, 1000 of each
    # Fashion-MNIST class, 100 of each CIFAR-100 class, 60 000 training images): once caught only
    # after hours of earlier stages, or silently clipped.
    ({"attack": {"first_target": 9999}}, ["attack.first_target", "9999..10000", "10000 test images"]),
    ({"training": {"train_fraction": 1e-9}}, ["training.train_fraction", "keeps 0", "training.batch_size 128"]),
    ({"search": {"pretrain": {"fraction": 1e-4}}}, ["search.pretrain.fraction", "keeps 6", "batch_size 16"]),
    ({"search": {"accuracy": {"start": 9990}}}, ["search.accuracy.start", "9990..10189", "10000 test images"]),
    ({"search": {"privacy": {"num_samples": 5000}}}, ["search.privacy.num_samples", "1000 test images"]),
    ({"dataset": {"name": "cifar100"}, "search": {"privacy": {"num_samples": 101}}},
     ["search.privacy.num_samples", "cifar100 has 100 test images"]),
    ({"training": {"test_images": 20000}}, ["training.test_images", "10000 test images", "null uses all"]),
    # A search that could never choose anything (it used to end green with no policy chosen).
    ({"search": {"selection": {"accuracy_threshold": 1000}}}, ["search.selection.accuracy_threshold", "-1.0"]),
    ({"search": {"selection": {"accuracy_threshold": -0.5, "allow_empty": True}}},
     ["search.selection.accuracy_threshold", "-1.0"]),
    ({"search": {"candidates": {"count": 0, "extra": []}}}, ["search.candidates.count", "allow_empty"]),
    # A source_dir without the data, once a silent fallback to another copy.
    ({"dataset": {"source_dir": "/nonexistent"}}, ["dataset.source_dir", "/nonexistent: does not exist"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("override,expected", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_bad_config_stops_before_any_job(tmp_path, override, expected):
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", config=override, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for word in expected:
        assert word in output, f"{word!r} missing from:\n{output}"
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_nothing_to_choose_passes_when_the_config_says_so(tmp_path):
    override = {"search": {"candidates": {"count": 0, "extra": []}, "selection": {"allow_empty": True}}}
    result = snakemake(tmp_path, "--cores", "1", "--dry-run", config=override, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_a_key_given_twice_in_a_config_file_is_refused_naming_file_and_key(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(TEST_CONFIG.read_text() + "training:\n  epochs: 3\n")
    result = snakemake(tmp_path / "run", "--cores", "1", "--dry-run", configfile=twice, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"config file {twice}: key 'training' given twice" in output, output


BAD_DEMO_CONFIGS = {
    "syntax error": ("seed: 7\ntraining: {epochs: 2\n", "not valid YAML"),
    "empty": ("# nothing here\n", "is empty"),
    "a list": ("- seed: 7\n", "holds a list"),
    "a key twice": ("seed: 7\nseed: 8\n", "key 'seed' given twice, on lines 1 and 2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD_DEMO_CONFIGS)
def test_a_broken_demo_config_is_reported_naming_the_file(tmp_path, name):
    """config/config.yaml is read by the workflow itself (no --configfile): its errors name it.

    A checkout with the repository's Snakefile and workflow/ but its own config/config.yaml.
    """
    text, expected = BAD_DEMO_CONFIGS[name]
    checkout = tmp_path / "checkout"
    (checkout / "config").mkdir(parents=True)
    shutil.copy(REPO / "Snakefile", checkout / "Snakefile")
    os.symlink(REPO / "workflow", checkout / "workflow")
    demo = checkout / "config" / "config.yaml"
    demo.write_text(text)
    result = snakemake(tmp_path / "run", "--snakefile", str(checkout / "Snakefile"), "--cores", "1", "--dry-run",
                       configfile=None, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"config file {demo}" in output and expected in output, output
