"""A small Python API for notebook work: data, models, policy scores, attacks and their metrics.

Every function here is a thin front of the stage and library functions the workflow runs, so a
score or an attack computed in a notebook is the one the workflow computes with the same settings
(see ``docs/api.md``). Defaults are those of the workflow's config schema.

* data: :func:`load_data` (builds ``results/data/{dataset}.h5`` when missing), :func:`load_eval_set`;
* models: :func:`build` and :func:`load`, for our architectures (``arch``) or a class of one's own
  (``model_class="package.module:Class"`` with ``model_kwargs``);
* scores: :func:`score_policy` (S_pri and S_acc of one policy);
* attacks: :func:`attack` (any attack of :mod:`ats.attack.configs`, or an :class:`AttackConfig`);
* metrics: :func:`psnr`, :func:`ssim`, :func:`mse`, :func:`feature_mse` and :func:`registered_metrics`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ats.attack.configs import AttackConfig
from ats.attack.metrics import feature_mse, mse, psnr, ssim
from ats.attack.registration import registered_metrics
from ats.attack.stage import attack_images
from ats.case.architectures import CustomModel, ModelChoice, model_choice, model_settings
from ats.case.datasets import DatasetArrays, build_dataset_file, load_dataset
from ats.case.models import build_model, load_model
from ats.case.normalisation import dataset_spec
from ats.config import schema_default
from ats.runtime.checkpoints import state_dict_digest
from ats.runtime.device import resolve_device
from ats.runtime.fingerprint import fingerprint
from ats.runtime.hdf5 import read_h5
from ats.runtime.seeding import seed_everything
from ats.search.eval_set import EvalSet, build_eval_set, eval_set_fingerprint
from ats.search.eval_set import load_eval_set as _read_eval_set
from ats.search.scoring import PolicyScores, score_policies
from ats.settings import AttackSettings, ScoringSettings

__all__ = [
    "AttackConfig", "CustomModel", "DatasetArrays", "EvalSet", "PolicyScores",
    "attack", "attack_fingerprint", "build", "choose_model", "eval_set_fingerprint", "feature_mse", "load",
    "load_data", "load_eval_set", "mse", "psnr", "registered_metrics", "score_policy", "ssim",
]


def choose_model(arch: str | None = None, model_class: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> ModelChoice:
    """The model to build, as config ``model.arch`` / ``model.class`` / ``model.kwargs`` name it.

    ``model_class`` wins over ``arch``; without either, the schema's default architecture.
    """
    if model_kwargs and not model_class:
        raise ValueError("model_kwargs applies to model_class only; our architectures take none")
    return model_choice({"arch": arch or schema_default("model.arch"), "class": model_class,
                         "kwargs": dict(model_kwargs or {})})


def load_data(dataset: str, path: str | os.PathLike | None = None, *, source_dir: str | None = None,
              download: bool = False) -> DatasetArrays:
    """The verified data set ``dataset``, from ``path`` (default ``results/data/{dataset}.h5``).

    The file is built first when it does not exist (:func:`ats.case.datasets.build_dataset_file`:
    ``source_dir``, the system folders, then a download if ``download``).
    """
    path = Path(path) if path is not None else Path("results/data") / f"{dataset}.h5"
    if not path.exists():
        build_dataset_file(dataset, path, source_dir=source_dir, download=download)
    return load_dataset(path, expected_dataset=dataset)


def load_eval_set(dataset_file: str | os.PathLike, path: str | os.PathLike, *, images: str | None = None,
                  num_samples: int | None = None, bins: int | None = None, runs: int | None = None,
                  start: int | None = None, window: int | None = None) -> EvalSet:
    """The S_pri and S_acc images of ``dataset_file``, cut into ``path`` when it does not exist yet.

    The settings are the config's ``search.privacy`` (``images``, ``num_samples``, ``bins``) and
    ``search.accuracy`` (``runs``, ``start``, ``window``), schema defaults where ``None``; an
    existing file must have been cut with them (its fingerprint is checked).
    """
    privacy = {key: _default(value, f"search.privacy.{key}")
               for key, value in (("images", images), ("num_samples", num_samples), ("bins", bins))}
    accuracy = {key: _default(value, f"search.accuracy.{key}")
                for key, value in (("runs", runs), ("start", start), ("window", window))}
    dataset = load_dataset(dataset_file).spec.name
    expected = eval_set_fingerprint(dataset, privacy=privacy, accuracy=accuracy)
    if not Path(path).exists():
        build_eval_set(dataset_file, path, mode=privacy["images"], num_samples=privacy["num_samples"],
                       runs=accuracy["runs"], start=accuracy["start"], window=accuracy["window"],
                       fingerprint=expected)
    return _read_eval_set(path, expected_fingerprint=expected)


def build(dataset: str, arch: str | None = None, *, model_class: str | None = None,
          model_kwargs: Mapping[str, Any] | None = None, seed: int | None = None) -> nn.Module:
    """A freshly initialised model for ``dataset``; ``seed`` (default: the config's) fixes its weights."""
    spec = dataset_spec(dataset)
    seed_everything(_default(seed, "seed"))
    return build_model(choose_model(arch, model_class, model_kwargs), spec.num_classes, spec.channels)


def load(checkpoint: str | os.PathLike, dataset: str, arch: str | None = None, *, model_class: str | None = None,
         model_kwargs: Mapping[str, Any] | None = None, expected_fingerprint: str | None = None) -> nn.Module:
    """A trained model from ``checkpoint`` (ours, or a plain ``state_dict``), in eval mode, on the CPU."""
    spec = dataset_spec(dataset)
    return load_model(checkpoint, choose_model(arch, model_class, model_kwargs), spec.num_classes, spec.channels,
                      expected_fingerprint=expected_fingerprint)


def score_policy(policy: str, *, model: nn.Module, data: DatasetArrays, eval_set: EvalSet, arch: str | None = None,
                 model_class: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                 seed: int | None = None, repeat: int = 0, device: str = "auto", normalisation: str | None = None,
                 bins: int | None = None, chunk_size: int | None = None) -> PolicyScores:
    """S_pri (on ``model``, the tiny-data search model) and S_acc (on an untrained model of that kind) of ``policy``.

    Exactly the scores a score shard of the workflow stores for ``policy``
    (:func:`ats.search.scoring.score_policies`); ``.spri_mean`` and ``.sacc_mean`` are the ranking
    keys. ``arch``/``model_class``/``model_kwargs`` say what ``model`` is, for the untrained one.
    """
    scoring = ScoringSettings.from_config({"privacy": _given(bins=bins), **_given(chunk_size=chunk_size)})
    scores, _ = score_policies(
        trained=model, arch=choose_model(arch, model_class, model_kwargs), data=data, eval_set=eval_set,
        policies=[policy], seed=_default(seed, "seed"), repeat=repeat, device=resolve_device(device),
        normalisation=_default(normalisation, "dataset.normalisation"),
        bins=scoring.bins, chunk_size=scoring.chunk_size or None)
    return scores[0]


def attack_fingerprint(*, weights_sha256: str, dataset: str, arch: ModelChoice, defence: str, stage: str,
                       attack: str | AttackConfig, target_indices: Sequence[int], settings: Mapping[str, Any]) -> str:
    """The fingerprint of an attack file made outside the workflow (:func:`attack`, ``ats attack``).

    It covers everything the file's content depends on: the model's weights (their SHA-256), the
    data set, the model, the defence, the training stage, the attack (its name, or every field of a
    config of one's own), the targets and the remaining settings.
    """
    return fingerprint({
        "weights": weights_sha256, "dataset": dataset, **model_settings(arch), "defence": defence, "stage": stage,
        "attack": attack if isinstance(attack, str) else dataclasses.asdict(attack),
        "targets": [int(index) for index in target_indices], "settings": dict(settings),
    })


def attack(model: nn.Module, data: DatasetArrays, images: Sequence[int], *, attack: str | AttackConfig = "inversed",
           defence: str = "none", arch: str | None = None, model_class: str | None = None,
           model_kwargs: Mapping[str, Any] | None = None, iterations: int | None = None,
           batch_size: int | None = None, transformed_target: bool | None = None,
           defend_observed_gradient: bool | None = None, label_recovery: bool | None = None,
           seed: int | None = None, device: str = "auto", normalisation: str | None = None,
           out_h5: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Attack the test images ``images`` (indices) of ``data`` on ``model``, trained under ``defence``.

    Runs the workflow's attack stage (:func:`ats.attack.stage.attack_images`) and returns the
    arrays and attributes of its attack file (layout in ``docs/attacks.md``), written to ``out_h5``
    (default: a temporary file, removed). ``None`` settings take the config schema's defaults;
    ``arch``/``model_class``/``model_kwargs`` say what ``model`` is (recorded in the fingerprint).
    """
    settings = AttackSettings.from_config(_given(
        iterations=iterations, batch_size=batch_size, transformed_target=transformed_target,
        defend_observed_gradient=defend_observed_gradient, label_recovery=label_recovery))
    seed, normalisation = _default(seed, "seed"), _default(normalisation, "dataset.normalisation")
    file_fingerprint = attack_fingerprint(
        weights_sha256=state_dict_digest(model.state_dict()), dataset=data.spec.name,
        arch=choose_model(arch, model_class, model_kwargs), defence=defence, stage="final", attack=attack,
        target_indices=images, settings=_recorded_settings(settings, seed=seed, normalisation=normalisation))
    with tempfile.TemporaryDirectory(prefix="ats-attack-") as folder:
        path = Path(out_h5) if out_h5 is not None else Path(folder) / "attack.h5"
        attack_images(model=model, data=data, target_indices=np.asarray(images), defence=defence, attack=attack,
                      settings=settings, seed=seed, device=resolve_device(device), normalisation=normalisation,
                      out_h5=path, fingerprint=file_fingerprint)
        return read_h5(path, expected_fingerprint=file_fingerprint)


def _recorded_settings(settings: AttackSettings, *, seed: int, normalisation: str) -> dict[str, Any]:
    """The settings that :func:`attack_fingerprint` records for an attack made outside the workflow:
    all but the targets (recorded on their own), with the seed and the normalisation."""
    section = settings.as_section()
    del section["first_target"], section["num_targets"]
    return {**section, "seed": seed, "normalisation": normalisation}


def _given(**values: Any) -> dict[str, Any]:
    """The arguments that were given (not ``None``): the others take the schema's defaults."""
    return {key: value for key, value in values.items() if value is not None}


def _default(value: Any, key: str) -> Any:
    return schema_default(key) if value is None else value
