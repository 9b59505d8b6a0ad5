"""Tests of the training stages at which defences are attacked: names, checks and snapshots.

The snapshot of a stage must be the very model training passes through, so each snapshot is
compared bitwise with a model that the training stage itself wrote (its per-epoch resume state),
using the stand-ins of tests/test_training.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ats.attack.stage import attack_defence
from ats.runtime.checkpoints import load_checkpoint
from ats.runtime.hdf5 import CacheError, read_h5
from ats.settings import AttackSettings, TrainingSettings
from ats.training import loop
from ats.training.stages import StageError, TrainingStage, check_stages, parse_stage, steps_per_epoch
from tests.test_training import _train, stand_ins  # noqa: F401 (a fixture)

# The stand-in data set has 100 training images; batches of 16 give 7 steps per epoch.
STEPS_PER_EPOCH = 7


def test_stage_names_parse_into_points_of_training():
    assert parse_stage("init") == TrainingStage("init", "init")
    assert parse_stage("step-12") == TrainingStage("step-12", "step", 12)
    assert parse_stage("epoch-3").optimizer_steps(epochs=10, steps_per_epoch=7) == 21
    assert parse_stage("final").optimizer_steps(epochs=10, steps_per_epoch=7) == 70
    assert parse_stage("init").optimizer_steps(epochs=10, steps_per_epoch=7) == 0
    for bad in ("step-0", "epoch-01", "Init", "step", "step-1.5", ""):
        with pytest.raises(StageError, match="init, final, step-N or epoch-N"):
            parse_stage(bad)


def test_stage_checks_refuse_points_outside_the_run_and_duplicates():
    assert steps_per_epoch(100, 16) == STEPS_PER_EPOCH
    ordered = check_stages(["final", "epoch-1", "init", "step-3"], epochs=2, train_images=100, batch_size=16)
    assert [stage.name for stage in ordered] == ["init", "step-3", "epoch-1", "final"]
    with pytest.raises(StageError, match="ends after 14 steps"):
        check_stages(["step-14"], epochs=2, train_images=100, batch_size=16)
    with pytest.raises(StageError, match="'final' for the trained model"):
        check_stages(["epoch-2"], epochs=2, train_images=100, batch_size=16)
    with pytest.raises(StageError, match="same point of training"):
        check_stages(["step-7", "epoch-1"], epochs=2, train_images=100, batch_size=16)


def _snapshot(folder: Path, stage: str, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = dict(
        dataset_h5=folder / "data.h5", arch="tiny", defence="crop", stage=stage,
        out_checkpoint=folder / f"{stage}.pt", seed=7, device="cpu", normalisation="faithful",
        settings=TrainingSettings.from_config({"epochs": 4, "batch_size": 16, "eval_every": 2}),
        fingerprint=f"snapshot-{stage}",
    )
    arguments.update(overrides)
    loop.snapshot_stage(**arguments)
    return load_checkpoint(folder / f"{stage}.pt", expected_fingerprint=f"snapshot-{stage}")


def _equal(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.slow
@pytest.mark.usefixtures("stand_ins")
def test_snapshots_are_the_models_that_training_passes_through(tmp_path: Path) -> None:
    _train(tmp_path, stop_after_epochs=1)  # leaves the state after epoch 1, as a killed job would
    after_one_epoch = load_checkpoint(tmp_path / "state.pt")["state_dict"]

    epoch = _snapshot(tmp_path, "epoch-1")
    assert _equal(epoch["state_dict"], after_one_epoch)
    assert epoch["meta"]["stage"] == "epoch-1" and epoch["meta"]["optimizer_steps"] == STEPS_PER_EPOCH
    # The same point named in steps goes through the step-limited path: the same weights.
    assert _equal(_snapshot(tmp_path, f"step-{STEPS_PER_EPOCH}")["state_dict"], after_one_epoch)

    init = _snapshot(tmp_path, "init")
    torch.manual_seed(7)
    fresh = loop.build_model("tiny", 4, 3).state_dict()
    assert _equal(init["state_dict"], fresh) and init["meta"]["optimizer_steps"] == 0
    # Part of an epoch: neither the start nor the end of it.
    three = _snapshot(tmp_path, "step-3")["state_dict"]
    assert not _equal(three, fresh) and not _equal(three, after_one_epoch)
    assert _equal(three, _snapshot(tmp_path / "again", "step-3")["state_dict"])  # deterministic


@pytest.mark.usefixtures("stand_ins")
def test_snapshot_outside_the_run_is_refused_before_training(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="ends after 28 steps"):
        _snapshot(tmp_path, "step-28")
    with pytest.raises(StageError, match="train_stage writes it"):
        _snapshot(tmp_path, "final")
    assert not (tmp_path / "step-28.pt").exists()


@pytest.mark.slow
def test_attack_at_initialisation_on_a_real_tiny_run(tmp_path: Path, tiny_dataset_h5) -> None:
    """Snapshot the untrained model of a real (tiny) run, attack it, and refuse foreign snapshots."""
    dataset = tiny_dataset_h5("fashion-mnist", per_class=2)
    common = dict(dataset_h5=dataset, arch="ConvNet8", defence="3-1-7", seed=3, device="cpu",
                  normalisation="faithful",
                  settings=TrainingSettings.from_config({"epochs": 2, "batch_size": 8, "eval_every": 1}))
    loop.snapshot_stage(stage="init", out_checkpoint=tmp_path / "init.pt", fingerprint="fp-init", **common)
    loop.snapshot_stage(stage="step-1", out_checkpoint=tmp_path / "step-1.pt", fingerprint="fp-step", **common)
    attack = dict(dataset_h5=dataset, arch="ConvNet8", defence="3-1-7", attack="inversed",
                  settings=AttackSettings.from_config({"num_targets": 2, "iterations": 3, "batch_size": 2}),
                  seed=3, device="cpu", normalisation="faithful", fingerprint="attack-fp")

    attack_defence(checkpoint=tmp_path / "init.pt", model_fingerprint="fp-init", stage="init",
                   out_h5=tmp_path / "init.h5", **attack)
    arrays, attrs = read_h5(tmp_path / "init.h5", expected_fingerprint="attack-fp")
    assert (attrs["stage"], attrs["training_step"]) == ("init", 0)
    assert arrays["metrics/psnr"].shape == (2,)
    assert all(arrays[f"chance/{guess}/psnr"].shape == (2,)
               for guess in ("black", "grey", "train_mean", "attack_start"))

    with pytest.raises(CacheError, match="different configuration"):  # another configuration's snapshot
        attack_defence(checkpoint=tmp_path / "init.pt", model_fingerprint="fp-other", stage="init",
                       out_h5=tmp_path / "other.h5", **attack)
    with pytest.raises(ValueError, match="training stage 'step-1', not 'init'"):  # a snapshot of another stage
        attack_defence(checkpoint=tmp_path / "step-1.pt", model_fingerprint="fp-step", stage="init",
                       out_h5=tmp_path / "other.h5", **attack)
    assert not (tmp_path / "other.h5").exists()
