"""The Python API (ats.api): its example runs, and it gives the workflow's own scores and attack files."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ats import api
from ats.attack.configs import get_attack
from ats.attack.stage import attack_defence
from ats.runtime.checkpoints import save_checkpoint
from ats.runtime.hdf5 import read_h5
from ats.search.scoring import read_scores, score_shard
from ats.settings import AttackSettings, ScoringSettings
from tests.conftest import tiny_dataset_file, write_fashion_mnist_folder
from tests.custom_models import TinyNet

REPO_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "api_tour.py"


def test_the_api_tour_runs_on_tiny_data(tmp_path, no_system_data, one_thread) -> None:
    write_fashion_mnist_folder(tmp_path / "raw", per_class=2)
    spec = importlib.util.spec_from_file_location("api_tour", REPO_EXAMPLE)
    tour = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tour)
    metrics = tour.main(["--work-dir", str(tmp_path / "work"), "--source-dir", str(tmp_path / "raw"),
                         "--arch", "ConvNet8", "--images", "2", "--iterations", "2", "--window", "12"])
    assert set(metrics) == {"psnr", "ssim", "spri", "sacc"} and all(math.isfinite(v) for v in metrics.values())
    assert (tmp_path / "work" / "attack.h5").exists() and (tmp_path / "work" / "eval_images.h5").exists()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(dataset file, data, a ConvNet8 and its checkpoint, folder)."""
    folder = tmp_path_factory.mktemp("api")
    dataset_file = tiny_dataset_file(folder, "fashion-mnist", per_class=2)
    model = api.build("fashion-mnist", "ConvNet8", seed=4).eval()
    save_checkpoint(folder / "model.pt", model.state_dict(), fingerprint="fp")
    return dataset_file, api.load_data("fashion-mnist", dataset_file), model, folder / "model.pt", folder


def test_models_are_built_from_a_seed_and_loaded_from_checkpoints(case) -> None:
    _, _, model, checkpoint, _ = case
    again = api.build("fashion-mnist", "ConvNet8", seed=4)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    loaded = api.load(checkpoint, "fashion-mnist", "ConvNet8", expected_fingerprint="fp")
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True))
    custom = api.build("fashion-mnist", model_class="tests.custom_models:TinyNet", model_kwargs={"width": 2})
    assert isinstance(custom, TinyNet) and custom.classifier.in_features == 4
    with pytest.raises(ValueError, match="model_class only"):
        api.build("fashion-mnist", "ConvNet8", model_kwargs={"width": 2})


def test_score_policy_gives_the_score_shards_scores(case, one_thread) -> None:
    dataset_file, data, model, checkpoint, folder = case
    eval_set = api.load_eval_set(dataset_file, folder / "eval.h5", num_samples=1, runs=1, start=0, window=12)
    scores = api.score_policy("3-1-7", model=model, data=data, eval_set=eval_set, arch="ConvNet8", seed=7, bins=3,
                              device="cpu")
    score_shard(dataset_h5=dataset_file, eval_set_h5=folder / "eval.h5", search_checkpoint=checkpoint,
                arch="ConvNet8", policies=["3-1-7"], out_h5=folder / "shard.h5", seed=7, device="cpu",
                normalisation="faithful", settings=ScoringSettings.from_config({"privacy": {"bins": 3}}),
                fingerprint="shard")
    (stored,) = read_scores([folder / "shard.h5"])
    np.testing.assert_array_equal(scores.spri, stored.spri)
    np.testing.assert_array_equal(scores.sacc, stored.sacc)


def test_attack_gives_the_attack_stages_file(case, tmp_path, one_thread) -> None:
    dataset_file, data, model, checkpoint, _ = case
    arrays, attrs = api.attack(model, data, [0, 1], attack="inversed", defence="crop", arch="ConvNet8",
                               iterations=2, seed=3, device="cpu")
    attack_defence(dataset_h5=dataset_file, checkpoint=checkpoint, model_fingerprint="fp", arch="ConvNet8",
                   defence="crop", stage="final", attack="inversed",
                   settings=AttackSettings.from_config({"num_targets": 2, "iterations": 2}),
                   seed=3, device="cpu", normalisation="faithful", out_h5=tmp_path / "stage.h5", fingerprint="x")
    stage_arrays, _ = read_h5(tmp_path / "stage.h5")
    assert arrays.keys() == stage_arrays.keys()
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], stage_arrays[key], err_msg=key)
    assert attrs["attack"] == "inversed" and attrs["iterations"] == 2


def test_attack_takes_an_attack_config_of_ones_own(case, tmp_path, one_thread) -> None:
    _, data, model, _, _ = case
    own = dataclasses.replace(get_attack("inversed", 3), name="inversed-tv", tv_weight=1e-2)
    arrays, attrs = api.attack(model, data, [2], attack=own, arch="ConvNet8", device="cpu",
                               out_h5=tmp_path / "own.h5")
    assert attrs["attack"] == "inversed-tv" and attrs["iterations"] == 3
    assert read_h5(tmp_path / "own.h5")[1]["fingerprint"] == attrs["fingerprint"]
    assert arrays["cost_history"].shape == (1, 3)
