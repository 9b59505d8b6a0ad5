"""The attack stage: invert the gradients of a trained model's target images and score the results.

Protocol (docs/original-code.md §9.1), with the original's choices made explicit:

* each target image goes through the same preprocessing as in training (``augmentation_mode``,
  ``policy`` and a per-image ``draw``); the image whose gradient is shared, and against which the
  reconstruction is scored, is that *transformed* image, as in the original;
* each target shares its own gradient (batch size 1, eval mode, ``0.5 · CE``); optionally the
  model's gradient defence is applied to it (``defend_observed_gradient``: the original never did,
  docs/original-code.md §9.2), with noise drawn from a generator seeded by the target's index;
* the attack knows the true label, or recovers it with the iDLG rule (``label_recovery``);
* attacks run ``batch_size`` targets at a time (:func:`ats.attack.reconstruct.reconstruct`); every
  target's starting image comes from a generator seeded by ``(seed, target index)``, so results do
  not depend on the batch size or on which other targets share a batch.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ats.attack.chance import chance_metrics, registered_chance_metrics, uninformed_guesses
from ats.attack.configs import AttackConfig, get_attack
from ats.attack.labels import recover_labels
from ats.attack.metrics import feature_mse, mse, psnr, ssim
from ats.attack.reconstruct import eval_mode, initial_images, observed_gradients, reconstruct
from ats.attack.registration import policy_max_shift, registered_metrics
from ats.defence.gradient import GradientDefence
from ats.runtime.hdf5 import write_h5
from ats.runtime.logs import progress
from ats.runtime.seeding import torch_generator
from ats.transforms.differentiable import RelaxedDraw, differentiable_augment, has_unknown_draw
from ats.transforms.pipeline import centred_draw

logger = logging.getLogger(__name__)


class AttackPreprocessor(Protocol):
    """What the stage needs of :class:`ats.transforms.pipeline.Preprocessor`.

    ``mean``/``std`` hold the per-channel normalisation (any shape with ``C`` entries).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, images: np.ndarray, mode: str, policy: Any, draw: Any) -> torch.Tensor: ...


def _check_targets(images_uint8: np.ndarray, labels: np.ndarray, target_indices: np.ndarray,
                   batch_size: int) -> None:
    if not isinstance(images_uint8, np.ndarray) or images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
        raise ValueError(f"images_uint8 must be a uint8 N×H×W×C array, got "
                         f"{getattr(images_uint8, 'dtype', type(images_uint8).__name__)} of shape "
                         f"{getattr(images_uint8, 'shape', None)}")
    count = images_uint8.shape[0]
    if np.shape(labels) != (count,) or np.shape(target_indices) != (count,):
        raise ValueError(f"labels {np.shape(labels)} and target_indices {np.shape(target_indices)} must both "
                         f"have shape ({count},), one per target image")
    if len(set(np.asarray(target_indices).tolist())) != count:
        raise ValueError("target_indices must be distinct: they seed each target's attack")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _defend(defence: GradientDefence, gradients: list[torch.Tensor], seed: int,
            target_indices: list[int]) -> list[torch.Tensor]:
    """Apply ``defence`` to each target's gradient with noise from that target's own generator."""
    per_target = [
        defence.apply([g[row:row + 1] for g in gradients], torch_generator(seed, "attack-defence", index),
                      per_sample=True)
        for row, index in enumerate(target_indices)
    ]
    return [torch.cat(tensors) for tensors in zip(*per_target)]


def attack_stage(
    *,
    model: nn.Module,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    target_indices: np.ndarray,
    preprocessor: AttackPreprocessor,
    augmentation_mode: str,
    policy: Any,
    draw: Any,
    defence: GradientDefence | None,
    defend_observed_gradient: bool,
    attack_name: str | AttackConfig,
    iterations: int | None,
    batch_size: int,
    label_recovery: bool,
    seed: int,
    device: str | torch.device,
    train_mean: torch.Tensor,
    train_mean_original: torch.Tensor,
    stage: str,
    training_step: int,
    out_h5: str | os.PathLike,
    fingerprint: str,
) -> None:
    """Attack every target image and write reconstructions, costs and metrics to ``out_h5``.

    ``model``: the victim, built and loaded (moved to ``device``, evaluated in eval mode).
    ``images_uint8``/``labels``/``target_indices``: the targets (``N×H×W×C``, ``(N,)``, ``(N,)``).
    ``preprocessor(images, augmentation_mode, policy, draw)``: the normalised model inputs.
    ``defence``: the model's gradient defence, applied to the shared gradients only when
    ``defend_observed_gradient`` (a no-op without a gradient defence). ``attack_name`` names an attack
    of :mod:`ats.attack.configs` or is an :class:`AttackConfig` of one's own. ``iterations`` overrides
    the attack's budget. ``device``: a resolved torch device (not ``"auto"``). ``train_mean``: the
    training split's mean image ``(C, H, W)`` in [0, 1] as the defence shares its images, one of the
    chance guesses (:mod:`ats.attack.chance`); ``train_mean_original`` the same in the frame of the
    untransformed images, for the chance levels of the registered scores. ``stage`` and
    ``training_step`` say which point of training the model is at; they are recorded, not used.

    Output arrays (``N`` targets): ``reconstructions`` and ``ground_truth`` (float32 ``N×C×H×W`` in
    [0, 1]; reconstructions clamped for storage), ``cost_history`` (``N×T``), ``final_cost``,
    ``diverged``, ``labels``, ``attack_labels`` (the labels the attack used), ``target_indices``,
    ``metrics/{psnr,ssim,mse,feature_mse}`` (computed on the unclamped reconstructions, as the
    original), ``chance/{guess}/{psnr,ssim}`` (the scores of every uninformed guess of the same
    targets) and the scores against the untransformed images (``originals``,
    ``metrics/{psnr,ssim}_original``, ``alignment/*``, ``chance_original/*``; the policy-aware
    attacks' ``untransformed_reconstructions`` and ``learned_draw/*``), listed in docs/attacks.md.
    """
    _check_targets(images_uint8, labels, target_indices, batch_size)
    config = attack_name if isinstance(attack_name, AttackConfig) else get_attack(attack_name)
    config = config if iterations is None else config.with_iterations(iterations)
    if str(device) == "auto":
        raise ValueError("device 'auto' must be resolved first (ats.runtime.device.resolve_device)")
    device = torch.device(device)
    model = model.to(device)
    mean = preprocessor.mean.to(device=device, dtype=torch.float32).reshape(1, -1, 1, 1)
    std = preprocessor.std.to(device=device, dtype=torch.float32).reshape(1, -1, 1, 1)
    inputs = preprocessor(images_uint8, augmentation_mode, policy, draw).to(device)
    true_labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    indices = [int(i) for i in np.asarray(target_indices)]
    shield = defence if defend_observed_gradient else None
    logger.info("attack %s (%d iterations) on %d targets, %d at a time, defence %s on the shared gradient, "
                "labels %s", config.name, config.iterations, len(indices), batch_size,
                shield.name if shield else "none", "recovered (iDLG)" if label_recovery else "known")

    reveals_draw = has_unknown_draw(augmentation_mode, policy)
    # The untransformed images in the frame of the shared ones: plain, or the middle crop window.
    originals = preprocessor(images_uint8, "crop" if reveals_draw else "plain", (),
                             centred_draw(len(indices), image_size=images_uint8.shape[1]) if reveals_draw else None)
    originals = originals.to(device) * std + mean
    max_shift = policy_max_shift(policy, inputs.shape[-1], augmentation_mode)
    outputs: dict[str, list[torch.Tensor]] = {}
    with eval_mode(model):
        for start in progress(range(0, len(indices), batch_size), desc=f"attack {config.name}",
                              total=-(-len(indices) // batch_size)):
            rows = slice(start, start + batch_size)
            batch_inputs, batch_indices = inputs[rows], indices[rows]
            shared = observed_gradients(model, batch_inputs, true_labels[rows])
            if shield is not None:
                shared = _defend(shield, shared, seed, batch_indices)
            attack_labels = recover_labels(model, shared) if label_recovery else true_labels[rows]
            result = reconstruct(
                model, shared, attack_labels, config, tuple(batch_inputs.shape[1:]), mean.flatten(), std.flatten(),
                [torch_generator(seed, "attack-init", index) for index in batch_indices],
                policy=policy, augmentation_mode=augmentation_mode, source_size=images_uint8.shape[1],
            )
            truth = batch_inputs * std + mean
            if result.draw is None:
                reconstructed, model_input, untransformed = result.images * std + mean, result.images, None
            else:  # a policy-aware attack: x is untransformed, T_θ(x) its estimate of the shared image
                untransformed = result.images * std + mean
                reconstructed = differentiable_augment(untransformed, augmentation_mode, policy, result.draw)
                model_input = (reconstructed - mean) / std
            in_frame = reconstructed if untransformed is None else differentiable_augment(
                untransformed, "crop", (), RelaxedDraw.from_draw(centred_draw(
                    len(batch_indices), image_size=images_uint8.shape[1]), truth.dtype, device))
            generators = [torch_generator(seed, "attack-init", index) for index in batch_indices]
            starts = initial_images(config, generators, tuple(batch_inputs.shape[1:]), truth.dtype, device)[:, 0]
            registered = registered_metrics(in_frame, originals[rows], max_shift, allow_flip=reveals_draw)
            per_image = {
                "reconstructions": reconstructed.clamp(0, 1), "cost_history": result.cost_history,
                "final_cost": result.final_cost, "diverged": result.diverged, "attack_labels": attack_labels,
                "metrics/psnr": psnr(reconstructed, truth), "metrics/ssim": ssim(reconstructed, truth),
                "metrics/mse": mse(reconstructed, truth),
                "metrics/feature_mse": feature_mse(model, model_input, batch_inputs),
                "metrics/psnr_original": registered.psnr, "metrics/ssim_original": registered.ssim,
                "alignment/shift_y": registered.shift_y, "alignment/shift_x": registered.shift_x,
                "alignment/flipped": registered.flipped,
                **{f"chance/{key}": value for key, value in chance_metrics(
                    truth, uninformed_guesses(truth, train_mean, starts * std + mean)).items()},
                **{f"chance_original/{key}": value for key, value in registered_chance_metrics(
                    originals[rows], uninformed_guesses(originals[rows], train_mean_original, starts * std + mean),
                    max_shift, reveals_draw).items()},
            }
            if result.draw is not None:
                per_image.update({"untransformed_reconstructions": untransformed.clamp(0, 1),
                                  "learned_draw/crop_offsets": result.draw.crop_offsets,
                                  "learned_draw/flips": result.draw.flips,
                                  "learned_draw/subpolicy": result.draw.subpolicy,
                                  "learned_draw/signs": result.draw.signs})
            for key, value in per_image.items():
                outputs.setdefault(key, []).append(value.detach().cpu())
            logger.info("targets %d-%d: mean PSNR %.2f dB (against the untransformed image %.2f dB), %d diverged",
                        start, start + len(batch_indices) - 1, float(per_image["metrics/psnr"].mean()),
                        float(registered.psnr.mean()), int(result.diverged.sum()))

    arrays = {key: torch.cat(values).numpy() for key, values in outputs.items()}
    stored_types = {"cost_history": np.float32, "diverged": bool, "attack_labels": np.int64,
                    "alignment/shift_y": np.int64, "alignment/shift_x": np.int64, "alignment/flipped": bool,
                    "learned_draw/flips": bool, "learned_draw/subpolicy": np.int64}
    arrays = {key: values.astype(stored_types.get(key, np.float32 if values.ndim == 4 else np.float64))
              for key, values in arrays.items()}
    write_h5(
        out_h5,
        {
            **arrays,
            "ground_truth": (inputs * std + mean).cpu().numpy().astype(np.float32),
            "originals": originals.cpu().numpy().astype(np.float32),
            "labels": np.asarray(labels, dtype=np.int64),
            "target_indices": np.asarray(indices, dtype=np.int64),
        },
        {
            "attack": config.name,
            "iterations": config.iterations,
            "defence": defence.name if defence else "none",
            "defend_observed_gradient": bool(defend_observed_gradient and defence is not None),
            "label_recovery": bool(label_recovery),
            "augmentation_mode": augmentation_mode,
            "seed": int(seed),
            "stage": stage,
            "training_step": int(training_step),
            "max_shift": int(max_shift),
            "policy_aware": bool(config.policy_aware),
        },
        fingerprint=fingerprint,
    )
    logger.info("wrote %s: mean PSNR %.2f dB, mean SSIM %.3f over %d targets", out_h5,
                float(arrays["metrics/psnr"].mean()), float(arrays["metrics/ssim"].mean()), len(indices))
