"""Chance levels: what a reconstruction that learnt nothing from the gradient scores on the same targets.

A PSNR of 8 dB sounds like a failed attack and 12 dB like a partial success, but on Fashion-MNIST
the training split's mean image alone scores about 12 dB against typical test images, and an
all-black image about 8.5 dB. A policy that darkens or equalises the targets moves these levels
too, so a drop in an attack's PSNR can be a change of the targets rather than protection. Every
attack is therefore scored beside uninformed guesses of the same targets:

* ``black`` (all zeros) and ``grey`` (all 0.5): what any attacker can output;
* ``train_mean``: the mean image of the training split preprocessed as the defence shares its
  images (plain, or cropped, flipped and transformed by the policy with seeded draws): the best
  constant guess under MSE of an attacker who knows the data and the defence but learnt nothing
  from the gradient;
* ``attack_start``: the attack's own starting image, clamped to [0, 1]: what the attack would
  return had it not moved.

The chance level of a set of targets is the best of these guesses by its mean over the targets
(:mod:`ats.report.summary`); no guess looks at the targets. Against the untransformed images the
guesses are scored as the reconstructions are, at their best alignment, with the training mean
taken in that frame.

Torch is imported inside the functions, so that the summary, which only needs the guesses' names,
starts without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

CHANCE_GUESSES: tuple[str, ...] = ("black", "grey", "train_mean", "attack_start")
"""The uninformed guesses, in the order they are stored and tried."""

CHANCE_METRICS: tuple[str, ...] = ("psnr", "ssim")
"""The metrics every guess is scored with, as the reconstructions are."""

_MEAN_IMAGE_CHUNK = 4096
"""Training images preprocessed at a time while averaging; bounds memory, not results."""


def training_mean_image(images_uint8: np.ndarray,
                        preprocess: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
    """The pixel-wise mean ``(C, H, W)`` in [0, 1] (float64) of ``images_uint8`` after preprocessing.

    ``preprocess(batch)`` maps a ``uint8`` N×H×W×C batch to ``uint8`` N×C×H×W pixels as the targets
    were made (the defence's own preprocessing), so the mean lives where the targets do. It is
    called on consecutive chunks in order, so a seeded draw inside it stays reproducible.
    """
    import torch

    if images_uint8.ndim != 4 or len(images_uint8) == 0:
        raise ValueError(f"need a non-empty N×H×W×C image array, got shape {images_uint8.shape}")
    total: torch.Tensor | None = None
    for start in range(0, len(images_uint8), _MEAN_IMAGE_CHUNK):
        pixels = preprocess(images_uint8[start:start + _MEAN_IMAGE_CHUNK])
        chunk_sum = pixels.to(torch.float64).sum(dim=0)
        total = chunk_sum if total is None else total + chunk_sum
    assert total is not None
    return (total / (255.0 * len(images_uint8))).cpu()


def uninformed_guesses(targets: torch.Tensor, train_mean: torch.Tensor,
                       attack_start: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every guess of :data:`CHANCE_GUESSES` for ``targets`` ``(B, C, H, W)``, each of the same shape.

    ``train_mean`` is ``(C, H, W)``; ``attack_start`` is ``(B, C, H, W)`` in pixel space (not
    normalised) and is clamped to [0, 1].
    """
    import torch

    if train_mean.shape != targets.shape[1:] or attack_start.shape != targets.shape:
        raise ValueError(f"guesses must match targets {tuple(targets.shape)}: train_mean "
                         f"{tuple(train_mean.shape)}, attack_start {tuple(attack_start.shape)}")
    like = dict(dtype=targets.dtype, device=targets.device)
    return {
        "black": torch.zeros_like(targets),
        "grey": torch.full_like(targets, 0.5),
        "train_mean": train_mean.to(**like).expand_as(targets),
        "attack_start": attack_start.to(**like).clamp(0, 1),
    }


def chance_metrics(targets: torch.Tensor, guesses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-image PSNR and SSIM of every guess, keyed ``"{guess}/{metric}"`` (``(B,)`` each)."""
    from ats.attack.metrics import psnr, ssim

    scores = {}
    for name in CHANCE_GUESSES:
        guess = guesses[name].contiguous()
        scores[f"{name}/psnr"] = psnr(guess, targets)
        scores[f"{name}/ssim"] = ssim(guess, targets)
    return scores


def registered_chance_metrics(references: torch.Tensor, guesses: dict[str, torch.Tensor], max_shift: int,
                              allow_flip: bool) -> dict[str, torch.Tensor]:
    """:func:`chance_metrics` at each guess's best alignment with ``references``.

    Reconstructions are scored against the untransformed images after registration
    (:mod:`ats.attack.registration`), so the guesses get the same allowance.
    """
    from ats.attack.registration import registered_metrics

    scores = {}
    for name in CHANCE_GUESSES:
        registered = registered_metrics(guesses[name].contiguous(), references, max_shift, allow_flip)
        scores[f"{name}/psnr"], scores[f"{name}/ssim"] = registered.psnr, registered.ssim
    return scores
