"""Stage settings (ats.settings): read from config sections with the schema's defaults, checked, and
fingerprinted exactly as before they existed, so that finished results stay valid."""

from __future__ import annotations

import dataclasses
import math

import pytest
from workflow_helpers import TEST_CONFIG, effective_config

from ats.config import ConfigError, schema_default
from ats.policies import candidate_policies
from ats.search.eval_set import eval_set_fingerprint
from ats.settings import (
    AttackSettings,
    Experiment,
    PretrainSettings,
    ScoringSettings,
    SelectionSettings,
    TrainingSettings,
    attack_fingerprint,
    model_fingerprint,
    pretrain_fingerprint,
    selection_fingerprint,
    shard_fingerprint,
    train_fingerprint,
)

SETTINGS = [TrainingSettings, PretrainSettings, ScoringSettings, SelectionSettings, AttackSettings]


def test_fingerprints_of_the_test_config_are_those_of_earlier_versions() -> None:
    """Values computed by common.smk before the settings objects existed (tests/config/test.yaml):
    a change here would make every finished run recompute from scratch."""
    config = effective_config(TEST_CONFIG)
    experiment = Experiment.from_config(config)
    training = TrainingSettings.from_config(config["training"])
    search = config["search"]
    pretrain = pretrain_fingerprint(experiment, PretrainSettings.from_config(search["pretrain"]),
                                    training.test_images)
    assert pretrain == "fdcf627be51ba3af"
    eval_set = eval_set_fingerprint("fashion-mnist", privacy=search["privacy"], accuracy=search["accuracy"])
    assert eval_set == "a5b92fd166abdba4"
    candidates = candidate_policies(search["candidates"]["count"], config["seed"], ["", *search["candidates"]["extra"]])
    size = search["shard_size"]
    shards = [shard_fingerprint(pretrain, eval_set, candidates[start:start + size], repeat)
              for repeat in range(search["repeats"]) for start in range(0, len(candidates), size)]
    assert shards[:2] == ["e1df1c48e371d7dd", "14b0af16386404cf"] and len(shards) == 4
    selection = SelectionSettings.from_config(search["selection"])
    assert selection_fingerprint(shards, selection, 10, config["seed"]) == "f9138ad4d9a43a2e"
    assert train_fingerprint(experiment, "crop", training) == "ebd283f78d370342"
    assert train_fingerprint(experiment, "3-1-7", training) == "a7f73fd3ff578739"
    assert model_fingerprint("ebd283f78d370342", "final") == "ebd283f78d370342"
    assert model_fingerprint("ebd283f78d370342", "init") == "7ab78ee536bd2877"
    attack = AttackSettings.from_config(config["attack"])
    assert attack_fingerprint("ebd283f78d370342", "inversed", attack) == "7adec39067afc677"
    init_3_1_7 = model_fingerprint("a7f73fd3ff578739", "init")
    assert attack_fingerprint(init_3_1_7, "inversed-aware", attack) == "b199dde09d0b8ce6"


def test_speed_only_settings_leave_the_fingerprint_alone() -> None:
    attack = AttackSettings.from_config({})
    faster = dataclasses.replace(attack, batch_size=attack.batch_size * 2)
    assert attack_fingerprint("model", "inversed", faster) == attack_fingerprint("model", "inversed", attack)
    assert "batch_size" not in attack.fingerprint_fields()
    assert "chunk_size" not in ScoringSettings.from_config({"chunk_size": 64}).fingerprint_fields()
    changed = dataclasses.replace(attack, iterations=7)
    assert attack_fingerprint("model", "inversed", changed) != attack_fingerprint("model", "inversed", attack)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda cls: cls.__name__)
def test_missing_keys_take_the_schemas_defaults(settings) -> None:
    made = settings.from_config({})
    for field in dataclasses.fields(settings):
        path = field.metadata.get("key", field.name)
        assert getattr(made, field.name) == schema_default(f"{settings.SECTION}.{path}")


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda cls: cls.__name__)
def test_a_rules_param_reads_back_as_the_same_settings(settings) -> None:
    """Rules pass ``as_section()``; the adapter's ``from_config`` must rebuild the same object."""
    section = effective_config(TEST_CONFIG)
    for part in settings.SECTION.split("."):
        section = section[part]
    made = settings.from_config(section)
    assert settings.from_config(made.as_section()) == made


def test_keys_of_other_uses_in_a_section_are_ignored() -> None:
    training = TrainingSettings.from_config({"epochs": 3, "baselines": ["none"], "validation_policies": []})
    assert training.epochs == 3 and training.batch_size == schema_default("training.batch_size")
    assert ScoringSettings.from_config({"privacy": {"bins": 5, "images": "cvpr"}, "repeats": 2}).bins == 5


@pytest.mark.parametrize(("settings", "section", "words"), [
    (TrainingSettings, {"epochs": 0}, "'training.epochs': must be at least 1, got 0"),
    (TrainingSettings, {"train_fraction": 0.0}, "'training.train_fraction': must be greater than 0"),
    (TrainingSettings, {"epochs": 2.0}, "'training.epochs': must be an integer, got 2.0 (write 2)"),
    (TrainingSettings, {"amp": 1}, "'training.amp': must be of type boolean, got 1"),
    (PretrainSettings, {"fraction": 1.5}, "'search.pretrain.fraction': must be at most 1, got 1.5"),
    (ScoringSettings, {"privacy": {"bins": 0}}, "'search.privacy.bins': must be at least 1"),
    (SelectionSettings, {"rule": "best"}, "'search.selection.rule': must be one of ['cvpr', 'variance']"),
    (SelectionSettings, {"alpha": math.nan}, "'search.selection.alpha': must be a finite number"),
    (AttackSettings, {"iterations": 0}, "'attack.iterations': must be at least 1, got 0"),
    (AttackSettings, {"label_recovery": "yes"}, "'attack.label_recovery': must be of type boolean"),
])
def test_bad_values_are_refused_naming_the_key(settings, section, words) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.from_config(section)
    assert words in str(caught.value)


def test_pretraining_is_the_crop_recipe_on_a_fraction_in_fp32() -> None:
    pretrain = PretrainSettings.from_config({"fraction": 0.01, "epochs": 2, "batch_size": 16})
    assert pretrain.training(test_images=50) == TrainingSettings(
        epochs=2, batch_size=16, train_fraction=0.01, eval_every=10, test_images=50, amp=False, compile=False)


def test_attack_targets_are_consecutive_test_images() -> None:
    assert list(AttackSettings.from_config({"first_target": 3, "num_targets": 2}).target_indices) == [3, 4]
