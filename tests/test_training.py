"""Tests of the training recipe and the resumable training stage.

Most tests replace the data set, model, preprocessing and gradient defence with tiny stand-ins
(monkeypatched into :mod:`ats.training.loop`), so that they test the loop itself in well under a
second per run and do not depend on the other modules' details; one test runs the real components.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ats.case.models import CheckpointMismatchError, build_model
from ats.runtime.atomic import read_tsv
from ats.runtime.checkpoints import load_checkpoint
from ats.settings import TrainingSettings
from ats.training import loop
from ats.training.recipe import (
    CONSERVATIVE,
    build_optimizer,
    build_scheduler,
    classification_loss,
    lr_milestones,
)

NUM_CLASSES = 4

# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "milestones"),
    [(200, [74, 124, 175]), (100, [37, 62, 87]), (50, [18, 31, 43])],
)
def test_milestones_use_float_floor_division_like_the_original(epochs: int, milestones: list[int]) -> None:
    assert lr_milestones(epochs) == milestones


def test_optimizer_is_nesterov_sgd_with_the_conservative_constants() -> None:
    group = build_optimizer(nn.Linear(2, 2)).param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 5e-4)
    assert CONSERVATIVE.batch_size == 128


def test_schedule_over_200_epochs_decays_tenfold_at_74_124_175() -> None:
    optimizer = build_optimizer(nn.Linear(2, 2))
    scheduler = build_scheduler(optimizer, 200)
    lrs = []
    for _ in range(200):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1] * 74 + [0.01] * 50 + [0.001] * 51 + [0.0001] * 25
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_loss_is_half_the_mean_cross_entropy() -> None:
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 1, 0])
    expected = 0.5 * nn.functional.cross_entropy(logits, labels)
    assert torch.equal(classification_loss(logits, labels), expected)
    assert classification_loss(logits, labels, reduction="sum").item() == pytest.approx(5 * expected.item())


def test_training_subset_is_seeded_sorted_and_sized() -> None:
    subset = loop.training_subset(1000, 0.1, seed=3)
    assert len(subset) == 100 and torch.equal(subset, subset.sort().values)
    assert torch.equal(subset, loop.training_subset(1000, 0.1, seed=3))
    assert not torch.equal(subset, loop.training_subset(1000, 0.1, seed=4))
    assert torch.equal(loop.training_subset(7, 1.0, seed=3), torch.arange(7))
    for fraction in (0.0, 1.5, 0.01):
        with pytest.raises(ValueError, match="train_fraction"):
            loop.training_subset(20, fraction, seed=0)


# ---------------------------------------------------------------------------------------------
# Stand-ins for the other modules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str = "cifar10"
    num_classes: int = NUM_CLASSES
    channels: int = 3
    native_size: int = 32


@dataclass(frozen=True)
class _Arrays:
    spec: _Spec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def _synthetic_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is the brightest colour channel (or none): learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, size=count)
    images = rng.integers(0, 120, size=(count, 16, 16, 3))  # small: the stand-ins accept any size
    for channel in range(3):
        images[labels == channel, :, :, channel] += 120
    return images.astype(np.uint8), labels.astype(np.int64)


def _tiny_dataset(_path: Any) -> _Arrays:
    train_images, train_labels = _synthetic_images(100, seed=0)
    test_images, test_labels = _synthetic_images(40, seed=1)
    return _Arrays(_Spec(), train_images, train_labels, test_images, test_labels, ("r", "g", "b", "grey"))


@dataclass(frozen=True)
class _Draw:
    flip: torch.Tensor


def _sample_draw(policy: Any, count: int, generator: torch.Generator, *, image_size: int) -> _Draw:
    return _Draw(flip=torch.rand(count, generator=generator) < 0.5)


class _Preprocessor:
    """uint8 N×C×H×W → normalised float N×C×H×W, flipping where the draw says so."""

    def __init__(self, channels: int, mean: Any, std: Any, device: torch.device) -> None:
        self.mean = torch.tensor(mean, device=device).view(1, channels, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, channels, 1, 1)

    def __call__(self, images: torch.Tensor, mode: str, policy: Any, draw: _Draw | None = None) -> torch.Tensor:
        inputs = images.float() / 255
        if mode != "plain":
            inputs = torch.where(draw.flip.view(-1, 1, 1, 1).to(inputs.device), inputs.flip(-1), inputs)
        return (inputs - self.mean) / self.std


def _tiny_model(arch: str, num_classes: int, num_channels: int) -> nn.Module:
    """A few hundred parameters, with batch norm so that buffers take part in resuming."""
    return nn.Sequential(
        nn.Conv2d(num_channels, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes),
    )


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "load_dataset", _tiny_dataset)
    monkeypatch.setattr(loop, "build_model", _tiny_model)
    monkeypatch.setattr(loop, "sample_draw", _sample_draw)
    monkeypatch.setattr(loop, "Preprocessor", _Preprocessor)


TRAINING_KEYS = {field.name for field in fields(TrainingSettings)}


def _train(folder: Path, **overrides: Any) -> dict[str, Any] | None:
    """Train with the stand-ins; ``overrides`` are stage arguments or keys of the training section."""
    recipe = {"epochs": 4, "batch_size": 16, "eval_every": 2}
    recipe.update({key: overrides.pop(key) for key in list(overrides) if key in TRAINING_KEYS})
    arguments: dict[str, Any] = dict(
        dataset_h5=folder / "data.h5", arch="tiny", defence="crop",
        out_checkpoint=folder / "model.pt", out_history_tsv=folder / "history.tsv",
        out_metrics_json=folder / "metrics.json", state_path=folder / "state.pt",
        seed=7, device="cpu", normalisation="faithful", fingerprint="config-fp",
    )
    arguments.update(overrides)
    return loop.train_stage(settings=TrainingSettings.from_config(recipe), **arguments)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / "model.pt", expected_fingerprint="config-fp")["state_dict"]


def _history_without_seconds(folder: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_tsv(folder / "history.tsv")]


def _assert_same_result(first: Path, second: Path) -> None:
    weights_a, weights_b = _weights(first), _weights(second)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    assert _history_without_seconds(first) == _history_without_seconds(second)


# ---------------------------------------------------------------------------------------------
# The training stage
# ---------------------------------------------------------------------------------------------


def test_training_learns_and_writes_all_outputs(tmp_path: Path, stand_ins: None) -> None:
    metrics = _train(tmp_path, epochs=6, eval_every=4)
    rows = read_tsv(tmp_path / "history.tsv")
    assert list(rows[0]) == list(loop.HISTORY_COLUMNS)
    assert [int(row["epoch"]) for row in rows] == list(range(6))
    losses = [float(row["train_loss"]) for row in rows]
    assert losses[-1] < 0.7 * losses[0]
    tested = [not math.isnan(float(row["test_accuracy"])) for row in rows]
    assert tested == [True, False, False, False, True, True]  # epoch % 4 == 0, and the last
    assert metrics is not None and metrics["test_accuracy"] == float(rows[-1]["test_accuracy"])
    assert metrics["test_accuracy"] > 0.5  # chance is 0.25
    assert {"defence", "test_accuracy", "test_loss", "epochs", "train_seconds"} <= metrics.keys()
    checkpoint = load_checkpoint(tmp_path / "model.pt", expected_fingerprint="config-fp")
    assert checkpoint["meta"]["defence"] == "crop" and checkpoint["meta"]["num_classes"] == NUM_CLASSES
    assert not (tmp_path / "state.pt").exists()


def test_two_runs_are_bitwise_identical(tmp_path: Path, stand_ins: None) -> None:
    _train(tmp_path / "a")
    _train(tmp_path / "b")
    _assert_same_result(tmp_path / "a", tmp_path / "b")


def test_tiny_data_subset_trains_on_the_fraction(tmp_path: Path, stand_ins: None) -> None:
    metrics = _train(tmp_path, train_fraction=0.3, epochs=1)
    assert metrics is not None and metrics["train_images"] == 30


def test_killed_run_resumes_to_the_same_result(
    tmp_path: Path, stand_ins: None, caplog: pytest.LogCaptureFixture
) -> None:
    _train(tmp_path / "whole")
    interrupted = tmp_path / "interrupted"
    assert _train(interrupted, stop_after_epochs=3) is None
    assert (interrupted / "state.pt").exists() and not (interrupted / "model.pt").exists()
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        _train(interrupted)
    assert "resuming from epoch 3" in caplog.text
    _assert_same_result(tmp_path / "whole", interrupted)


def test_run_killed_while_writing_outputs_only_rewrites_them(
    tmp_path: Path, stand_ins: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def killed(*_args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "write_json", killed)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "killed", epochs=2)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        _train(tmp_path / "killed", epochs=2)
    assert "resuming from epoch 2 of 2" in caplog.text
    assert (tmp_path / "killed" / "metrics.json").exists()
    _train(tmp_path / "whole", epochs=2)
    _assert_same_result(tmp_path / "whole", tmp_path / "killed")


def test_state_of_another_configuration_is_ignored_with_a_warning(
    tmp_path: Path, stand_ins: None, caplog: pytest.LogCaptureFixture
) -> None:
    _train(tmp_path / "fresh", seed=8)
    reused = tmp_path / "reused"
    _train(reused, seed=7, stop_after_epochs=2)
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        _train(reused, seed=8)
    assert "state.pt" in caplog.text and "starting from scratch" in caplog.text
    _assert_same_result(tmp_path / "fresh", reused)


def test_corrupt_state_is_ignored_with_a_warning(
    tmp_path: Path, stand_ins: None, caplog: pytest.LogCaptureFixture
) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger=loop.__name__):
        metrics = _train(tmp_path, epochs=1)
    assert metrics is not None
    assert f"ignoring training state {tmp_path / 'state.pt'}" in caplog.text


def test_non_finite_loss_fails_with_epoch_batch_and_defence(
    tmp_path: Path, stand_ins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PoisonedPreprocessor(_Preprocessor):
        """Returns NaN inputs for the third training batch."""

        calls = 0

        def __call__(self, images: torch.Tensor, mode: str, policy: Any, draw: _Draw | None = None) -> torch.Tensor:
            inputs = super().__call__(images, mode, policy, draw)
            if mode != "plain":
                PoisonedPreprocessor.calls += 1
                if PoisonedPreprocessor.calls == 3:
                    return torch.full_like(inputs, math.nan)
            return inputs

    monkeypatch.setattr(loop, "Preprocessor", PoisonedPreprocessor)
    with pytest.raises(loop.TrainingDivergedError, match=r"epoch 0, batch 2 \(defence 'crop'\)"):
        _train(tmp_path)
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "state.pt").exists()


def test_gradient_defence_is_applied_before_every_step(
    tmp_path: Path, stand_ins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, float | None, int]] = []
    original_from_spec = loop.GradientDefence.from_spec

    class RecordingDefence:
        def __init__(self, kind: str, strength: float | None) -> None:
            self.kind, self.strength = kind, strength
            self.inner = original_from_spec(kind, strength)

        def apply(self, grads: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
            calls.append((self.kind, self.strength, generator.initial_seed()))
            return self.inner.apply(grads, generator)

    def recording_from_spec(kind: str, strength: float | None) -> RecordingDefence | None:
        return None if kind in ("none", "crop", "policy") else RecordingDefence(kind, strength)

    monkeypatch.setattr(loop.GradientDefence, "from_spec", staticmethod(recording_from_spec))
    _train(tmp_path / "crop", epochs=2)
    assert calls == []
    _train(tmp_path / "gauss", defence="gauss-0.5", epochs=2)
    batches_per_epoch = math.ceil(100 / 16)
    assert len(calls) == 2 * batches_per_epoch
    assert {(kind, strength) for kind, strength, _ in calls} == {("gauss", 0.5)}
    assert len({seed for _, _, seed in calls}) == len(calls)  # a fresh stream for every step
    crop, gauss = _weights(tmp_path / "crop"), _weights(tmp_path / "gauss")
    assert not torch.equal(crop["5.weight"], gauss["5.weight"])


def test_bad_arguments_name_the_culprit(tmp_path: Path, stand_ins: None) -> None:
    with pytest.raises(ValueError, match="epochs"):
        _train(tmp_path, epochs=0)
    with pytest.raises(ValueError, match="prune-lots"):
        _train(tmp_path, defence="prune-lots")


@pytest.mark.parametrize(
    ("dataset", "channels", "defence"),
    [("cifar10", 3, "3-1-7+43-18-18"), ("fashion-mnist", 1, "laplace-1e-3")],
)
@pytest.mark.slow
def test_real_components_train_policies_and_gradient_defences(
    tmp_path: Path, tiny_dataset_h5: Any, dataset: str, channels: int, defence: str
) -> None:
    """The real data file, pipeline, model and defences, end to end, for one short epoch."""
    metrics = loop.train_stage(
        dataset_h5=tiny_dataset_h5(dataset, per_class=4), arch="ConvNet8", defence=defence,
        out_checkpoint=tmp_path / "model.pt", out_history_tsv=tmp_path / "history.tsv",
        out_metrics_json=tmp_path / "metrics.json", state_path=tmp_path / "state.pt",
        settings=TrainingSettings.from_config({"epochs": 1, "batch_size": 16}), seed=0, device="cpu",
        normalisation="faithful", fingerprint="fp",
    )
    assert metrics is not None and metrics["train_images"] == 40 and 0 <= metrics["test_accuracy"] <= 1
    assert load_checkpoint(tmp_path / "model.pt")["meta"]["channels"] == channels


# ---------------------------------------------------------------------------------------------
# Importing a user-supplied checkpoint
# ---------------------------------------------------------------------------------------------


def test_import_accepts_a_plain_state_dict_from_data_parallel(tmp_path: Path) -> None:
    original = build_model("ConvNet8", NUM_CLASSES, 3)
    torch.save({f"module.{k}": v for k, v in original.state_dict().items()}, tmp_path / "100.pth")
    loop.import_checkpoint(source_path=tmp_path / "100.pth", arch="ConvNet8", num_classes=NUM_CLASSES,
                           channels=3, out_checkpoint=tmp_path / "search.pt", fingerprint="fp")
    imported = load_checkpoint(tmp_path / "search.pt", expected_fingerprint="fp")
    assert imported["meta"]["source"] == str(tmp_path / "100.pth")
    assert all(torch.equal(v, imported["state_dict"][k]) for k, v in original.state_dict().items())


def test_import_rejects_a_model_of_another_shape(tmp_path: Path) -> None:
    torch.save(build_model("ConvNet8", 10, 3).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match=r"other\.pth.*wrong shapes: model\.linear\.bias \(10,\)"):
        loop.import_checkpoint(source_path=tmp_path / "other.pth", arch="ConvNet8", num_classes=NUM_CLASSES,
                               channels=3, out_checkpoint=tmp_path / "search.pt", fingerprint="fp")
    assert not (tmp_path / "search.pt").exists()
