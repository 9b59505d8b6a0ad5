"""The attack stage as the workflow runs it: from files and config values to an attack file.

:func:`ats.attack.run.attack_stage` works on objects (a model, images, a preprocessor) so that it can
be tested in isolation; this module loads those objects from the workflow's files and settles the
protocol questions that depend on the defence:

* **Which image's gradient is shared.** As in the original, the attacker observes the gradient of
  the test image *as the defence transforms it*: a policy model shares the gradient of a random
  crop/flip/policy draw of the image, while the baselines (``none``, ``crop``) and the gradient
  defences share the plain image (the original attacked its crop-trained baseline in ``normal``
  mode). ``settings.transformed_target=False`` shares the plain image for every defence.
* **Which draw.** Each target's draw comes from a generator seeded by ``(seed, defence, index)``,
  so it does not depend on the batch it is attacked in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ats.attack.chance import training_mean_image
from ats.attack.configs import AttackConfig
from ats.attack.run import attack_stage
from ats.case.architectures import ModelChoice
from ats.case.datasets import DatasetArrays, load_dataset
from ats.case.models import load_model_with_meta
from ats.case.normalisation import normalisation_constants
from ats.defence.gradient import GradientDefence
from ats.defence.names import parse_defence
from ats.policies import parse_policy
from ats.runtime.device import resolve_device
from ats.runtime.memory import retain_freed_host_memory
from ats.runtime.seeding import derive_seed, seed_everything, torch_generator
from ats.settings import AttackSettings
from ats.training.stages import FINAL
from ats.transforms.pipeline import Preprocessor, centred_draw, draw_per_sample, sample_draw

logger = logging.getLogger(__name__)


def attack_defence(
    *,
    dataset_h5: str | os.PathLike,
    checkpoint: str | os.PathLike,
    model_fingerprint: str | None,
    arch: ModelChoice,
    defence: str,
    stage: str,
    attack: str | AttackConfig,
    settings: AttackSettings,
    seed: int,
    device: str,
    normalisation: str,
    out_h5: str | os.PathLike,
    fingerprint: str,
) -> None:
    """Attack the test images ``settings.target_indices`` of one defence's model.

    ``checkpoint`` is the model of training stage ``stage`` (:mod:`ats.training.stages`): the trained
    model or a snapshot. ``model_fingerprint`` is the fingerprint it must carry, so that a model of
    another configuration, defence or stage is refused rather than attacked.
    """
    parse_defence(defence)
    data = load_dataset(dataset_h5)
    seed_everything(seed)
    torch_device = resolve_device(device)
    retain_freed_host_memory()
    model, meta = load_model_with_meta(checkpoint, arch, data.spec.num_classes, data.spec.channels,
                                       expected_fingerprint=model_fingerprint)
    if meta.get("stage", FINAL) != stage:
        raise ValueError(f"{checkpoint}: holds the model of training stage {meta.get('stage', FINAL)!r}, "
                         f"not {stage!r}")
    attack_images(
        model=model, data=data, target_indices=settings.target_indices, defence=defence, attack=attack,
        settings=settings, seed=seed, device=torch_device, normalisation=normalisation, stage=stage,
        training_step=int(meta.get("optimizer_steps", -1)), out_h5=out_h5, fingerprint=fingerprint,
    )


def attack_images(
    *,
    model: nn.Module,
    data: DatasetArrays,
    target_indices: Sequence[int] | np.ndarray,
    defence: str,
    attack: str | AttackConfig,
    settings: AttackSettings,
    seed: int,
    device: str | torch.device,
    normalisation: str,
    stage: str = FINAL,
    training_step: int = -1,
    out_h5: str | os.PathLike,
    fingerprint: str,
) -> None:
    """Attack the test images ``target_indices`` of ``data`` on a loaded ``model`` trained under ``defence``.

    The work of :func:`attack_defence` once its inputs are loaded, for callers that hold the model
    and the data in memory (:mod:`ats.api`); ``target_indices`` replace the targets of
    ``settings``. ``device`` must be resolved (not ``"auto"``); ``stage`` and ``training_step`` are
    recorded in the attack file.
    """
    spec = parse_defence(defence)
    indices = np.asarray(target_indices, dtype=np.int64)
    if indices.ndim != 1 or not len(indices) or indices.min() < 0 or indices.max() >= len(data.test_labels):
        raise ValueError(
            f"attack targets {indices.tolist()[:8]} must be indices of the {len(data.test_labels)} test images "
            f"of {data.spec.name}; lower attack.first_target or attack.num_targets"
        )
    torch_device = torch.device(device)
    model = model.to(torch_device)
    mean, std = normalisation_constants(data.spec.name, normalisation)
    preprocessor = Preprocessor(data.spec.channels, mean, std, device=torch_device)

    shares_transformed_image = settings.transformed_target and spec.kind == "policy"
    policy = parse_policy(spec.policy) if shares_transformed_image else ()
    mode = "policy" if shares_transformed_image else "plain"
    draw = draw_per_sample(
        policy,
        [derive_seed(seed, "attack-target", defence, int(index)) for index in indices],
        image_size=data.spec.native_size,
    )
    # The mean image of the training split as this defence shares its images: the best guess of an
    # attacker who knows the data and the preprocessing but learnt nothing from the gradient.
    mean_draws = torch_generator(seed, "chance-mean", defence)
    train_mean = training_mean_image(data.train_images, lambda batch: preprocessor.augment(
        batch, mode, policy, None if mode == "plain" else
        sample_draw(policy, len(batch), mean_draws, image_size=data.spec.native_size)))
    # The same in the frame of the untransformed images, against which attacks are also scored.
    train_mean_original = train_mean if mode == "plain" else training_mean_image(
        data.train_images, lambda batch: preprocessor.augment(
            batch, "crop", (), centred_draw(len(batch), image_size=data.spec.native_size)))
    logger.info(
        "attacking %d test images of defence %s with %s (%s preprocessing, observed gradient %s)",
        len(indices), defence, attack.name if isinstance(attack, AttackConfig) else attack, mode,
        "defended" if settings.defend_observed_gradient and spec.acts_on_gradient else "clean",
    )
    attack_stage(
        model=model,
        images_uint8=data.test_images[indices],
        labels=data.test_labels[indices],
        target_indices=indices,
        preprocessor=preprocessor,
        augmentation_mode=mode,
        policy=policy,
        draw=draw,
        defence=GradientDefence.from_spec(spec.kind, spec.strength),
        defend_observed_gradient=settings.defend_observed_gradient,
        attack_name=attack,
        iterations=settings.iterations,
        batch_size=settings.batch_size,
        label_recovery=settings.label_recovery,
        seed=seed,
        device=torch_device,
        train_mean=train_mean,
        train_mean_original=train_mean_original,
        stage=stage,
        training_step=training_step,
        out_h5=out_h5,
        fingerprint=fingerprint,
    )
