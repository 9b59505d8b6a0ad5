"""Users' own models (config ``model.class``): built, trained, scored and attacked like our architectures.

The classes live in ``tests/custom_models.py``, importable as ``tests.custom_models`` as a user's
module would be; everything runs on tiny Fashion-MNIST files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from snakemake.utils import validate
from workflow_helpers import TEST_CONFIG

from ats.attack.stage import attack_defence
from ats.case.architectures import CustomModel, model_choice, model_name, model_settings
from ats.case.models import build_model, load_model, load_model_with_meta
from ats.config import CONFIG_SCHEMA_PATH, ConfigError, check_config
from ats.runtime.hdf5 import read_h5
from ats.search.eval_set import build_eval_set
from ats.search.scoring import read_scores, score_shard
from ats.settings import AttackSettings, ScoringSettings, TrainingSettings
from ats.training import loop
from tests.conftest import tiny_dataset_file
from tests.custom_models import TenWayMLP, TinyNet

TINY = CustomModel("tests.custom_models:TinyNet", {"width": 3})


def test_a_class_is_built_with_its_kwargs_and_the_data_set_arguments_it_names() -> None:
    torch.manual_seed(0)
    model = build_model(TINY, 10, 1)
    assert isinstance(model, TinyNet) and model.classifier.out_features == 10
    assert model.features[0].in_channels == 1 and model.features[0].out_channels == 3
    torch.manual_seed(0)
    reference = TinyNet(num_classes=10, num_channels=1, width=3)
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True))
    assert isinstance(build_model(CustomModel("tests.custom_models:TenWayMLP", {"hidden": 5}), 10, 1), TenWayMLP)


def test_a_class_whose_logits_do_not_fit_the_data_set_is_refused() -> None:
    with pytest.raises(ValueError, match=r"TenWayMLP.*expected logits of shape \(1, 100\)"):
        build_model(CustomModel("tests.custom_models:TenWayMLP"), 100, 1)


def test_names_and_fingerprint_settings() -> None:
    assert model_settings("ConvNet8") == {"arch": "ConvNet8"}  # fingerprints of existing runs stay the same
    assert model_settings(TINY) == {"class": "tests.custom_models:TinyNet", "kwargs": {"width": 3}}
    assert model_settings(TINY) != model_settings(CustomModel(TINY.class_path, {"width": 4}))
    assert model_name(TINY) == "tests.custom_models:TinyNet(width=3)"
    assert model_choice({"arch": "ConvNet8", "class": None, "kwargs": {}}) == "ConvNet8"
    assert model_choice({"arch": "ConvNet8", "class": TINY.class_path, "kwargs": {"width": 3}}) == TINY
    with pytest.raises(ValueError, match="set from the data set"):
        CustomModel(TINY.class_path, {"num_classes": 3})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TinyNet trained for one epoch by the training stage: (dataset file, checkpoint, metrics)."""
    folder = tmp_path_factory.mktemp("custom")
    dataset = tiny_dataset_file(folder, "fashion-mnist", per_class=3)
    metrics = loop.train_stage(
        dataset_h5=dataset, arch=TINY, defence="crop", out_checkpoint=folder / "model.pt",
        out_history_tsv=folder / "history.tsv", out_metrics_json=folder / "metrics.json",
        state_path=folder / "state.pt", settings=TrainingSettings.from_config({"epochs": 1, "batch_size": 10}),
        seed=5, device="cpu", normalisation="faithful", fingerprint="custom-fp")
    return dataset, folder / "model.pt", metrics


def test_training_a_users_model(trained) -> None:
    dataset, checkpoint, metrics = trained
    assert metrics["arch"] == model_name(TINY)
    assert json.loads((checkpoint.parent / "metrics.json").read_text())["arch"] == model_name(TINY)
    model, meta = load_model_with_meta(checkpoint, TINY, 10, 1, expected_fingerprint="custom-fp")
    assert isinstance(model, TinyNet) and meta["arch"] == model_name(TINY)
    # Training moved the weights away from the seeded initialisation.
    torch.manual_seed(5)
    assert not torch.equal(model.classifier.weight, build_model(TINY, 10, 1).classifier.weight)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_model(checkpoint, CustomModel(TINY.class_path, {"width": 4}), 10, 1)


def test_scoring_a_users_model(trained, tmp_path) -> None:
    dataset, checkpoint, _ = trained
    build_eval_set(dataset, tmp_path / "eval.h5", mode="per_class", num_samples=1, runs=1, start=0, window=12,
                   fingerprint="eval")
    score_shard(dataset_h5=dataset, eval_set_h5=tmp_path / "eval.h5", search_checkpoint=checkpoint, arch=TINY,
                policies=["", "3-1-7"], out_h5=tmp_path / "shard.h5", seed=7, device="cpu", normalisation="faithful",
                settings=ScoringSettings.from_config({"privacy": {"bins": 3}}), fingerprint="shard",
                model_fingerprint="custom-fp")
    scores = read_scores([tmp_path / "shard.h5"])
    assert [entry.policy for entry in scores] == ["", "3-1-7"]
    assert all(entry.is_finite and entry.spri.shape == (10,) for entry in scores)
    assert read_h5(tmp_path / "shard.h5")[1]["arch"] == model_name(TINY)


def test_attacking_a_users_model(trained, tmp_path) -> None:
    dataset, checkpoint, _ = trained
    attack_defence(dataset_h5=dataset, checkpoint=checkpoint, model_fingerprint="custom-fp", arch=TINY,
                   defence="crop", stage="final", attack="inversed",
                   settings=AttackSettings.from_config({"num_targets": 2, "iterations": 2, "batch_size": 2}),
                   seed=3, device="cpu", normalisation="faithful", out_h5=tmp_path / "attack.h5",
                   fingerprint="attack")
    arrays, attrs = read_h5(tmp_path / "attack.h5", expected_fingerprint="attack")
    assert arrays["reconstructions"].shape == (2, 1, 32, 32) and np.isfinite(arrays["metrics/psnr"]).all()
    assert attrs["training_step"] == 3  # one epoch of 30 images in batches of 10


# --- config validation -------------------------------------------------------------------------------


def _validated(model: dict) -> dict:
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["model"] = model
    validate(config, str(CONFIG_SCHEMA_PATH))
    return config


def test_a_valid_model_class_passes_and_fills_defaults() -> None:
    config = _validated({"class": "tests.custom_models:TinyNet", "kwargs": {"width": 3}})
    check_config(config)
    assert model_choice(config["model"]) == TINY
    assert _validated({"arch": "ConvNet8"})["model"] == {"arch": "ConvNet8", "class": None, "kwargs": {}}


@pytest.mark.parametrize("model,key,words", [
    ({"class": "tests.no_such_module:Net"}, "model.class", ["cannot import module 'tests.no_such_module'",
                                                            "PYTHONPATH"]),
    ({"class": "tests.custom_models:Missing"}, "model.class", ["has no attribute 'Missing'"]),
    ({"class": "tests.custom_models:NOT_A_MODULE"}, "model.class", ["not a torch.nn.Module subclass"]),
    ({"class": "tests.custom_models:TinyNet", "kwargs": {"depth": 3}}, "model.kwargs", ["depth"]),
    ({"class": "tests.custom_models:TinyNet", "kwargs": {"num_classes": 3}}, "model.kwargs",
     ["set from the data set"]),
    ({"arch": "ConvNet8", "kwargs": {"width": 3}}, "model.kwargs", ["model.class only"]),
])
def test_a_bad_model_class_is_refused_naming_the_key(model, key, words) -> None:
    with pytest.raises(ConfigError) as caught:
        check_config(_validated(model))
    assert caught.value.key == key and str(caught.value).startswith(f"Invalid config key '{key}'")
    for word in words:
        assert word in str(caught.value)


def test_a_malformed_class_path_is_refused_by_the_schema() -> None:
    from snakemake.exceptions import WorkflowError

    with pytest.raises(WorkflowError):
        _validated({"class": "TinyNet"})
