"""Registered metrics: PSNR and SSIM after aligning a reconstruction with the untransformed image.

A reconstruction that is right up to a shift or a mirror image still leaks the image, and an
augmentation policy shifts and flips every image by an amount the attacker cannot always undo
(``docs/attacks.md``). So each reconstruction is also scored at its best alignment with the
reference: every integer translation (dy, dx) with |dy|, |dx| ≤ ``max_shift``, with and without a
horizontal flip.

* **Alignment**: ``aligned[y, x] = r[y − dy, x − dx]`` where ``r`` is the reconstruction, mirrored
  first when ``flipped``. The pixels the shift vacates are filled with the nearest edge pixel
  (replicate), not black: a black strip would charge a correct but shifted reconstruction for
  content it cannot contain, while the edge is a neutral guess for it.
* **Choice**: the alignment with the highest PSNR (equivalently the lowest MSE); ties keep the
  earlier one in the order identity first, then the unflipped shifts, then the flipped ones. The
  SSIM reported is the SSIM at that alignment, so both numbers describe one alignment.
* The identity is always a candidate, so a registered PSNR is never below the plain one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ats.attack.metrics import psnr, ssim
from ats.policies import Policy, format_policy, operation
from ats.transforms.pipeline import CROP_PADDING, MODES


@dataclass(frozen=True)
class RegisteredMetrics:
    """Per image, ``(B,)``: the best PSNR, the SSIM at that alignment, and the alignment itself."""

    psnr: torch.Tensor
    ssim: torch.Tensor
    shift_y: torch.Tensor
    shift_x: torch.Tensor
    flipped: torch.Tensor


def _alignments(max_shift: int, allow_flip: bool) -> list[tuple[int, int, bool]]:
    """Candidate (dy, dx, flipped), identity first."""
    shifts = range(-max_shift, max_shift + 1)
    candidates = [(0, 0, False)] + [(dy, dx, False) for dy in shifts for dx in shifts if (dy, dx) != (0, 0)]
    if allow_flip:
        candidates += [(dy, dx, True) for dy in shifts for dx in shifts]
    return candidates


def align(images: torch.Tensor, shift_y: int, shift_x: int, flipped: bool) -> torch.Tensor:
    """``images`` (B, C, H, W) mirrored if ``flipped``, then moved by (dy, dx), edges replicated."""
    height, width = images.shape[-2:]
    source = images.flip(-1) if flipped else images
    rows = (torch.arange(height, device=images.device) - shift_y).clamp(0, height - 1)
    columns = (torch.arange(width, device=images.device) - shift_x).clamp(0, width - 1)
    return source[..., rows, :][..., columns]


@torch.no_grad()
def registered_metrics(reconstructions: torch.Tensor, references: torch.Tensor, max_shift: int,
                       allow_flip: bool) -> RegisteredMetrics:
    """Best-aligned PSNR and SSIM of ``reconstructions`` against ``references`` (B, C, H, W) in [0, 1].

    Translations up to ``max_shift`` pixels on both axes (``policy_max_shift`` gives the policy's),
    and the horizontal flip when ``allow_flip``. See the module docstring for the alignment rule.
    """
    if not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int, got {max_shift!r}")
    if reconstructions.shape != references.shape or reconstructions.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of the same shape, got {tuple(reconstructions.shape)} "
                         f"and {tuple(references.shape)}")
    count = reconstructions.shape[0]
    best = torch.full((count,), -math.inf, dtype=reconstructions.dtype, device=reconstructions.device)
    alignment = torch.zeros(count, 3, dtype=torch.long, device=reconstructions.device)
    for shift_y, shift_x, flipped in _alignments(max_shift, allow_flip):
        value = psnr(align(reconstructions, shift_y, shift_x, flipped), references)
        better = value > best
        best = torch.where(better, value, best)
        alignment[better] = torch.tensor([shift_y, shift_x, int(flipped)], device=alignment.device)
    aligned = torch.stack([align(reconstructions[n:n + 1], *alignment[n, :2].tolist(), bool(alignment[n, 2]))[0]
                           for n in range(count)]) if count else reconstructions
    return RegisteredMetrics(psnr=best, ssim=ssim(aligned, references), shift_y=alignment[:, 0],
                             shift_x=alignment[:, 1], flipped=alignment[:, 2].bool())


def policy_max_shift(policy: Policy, image_size: int = 32, augmentation_mode: str = "policy") -> int:
    """How far, in whole pixels, the preprocessing can move an image's content on either axis.

    ``image_size`` is the side of the images the ops act on (the 32-pixel crop window), which
    scales the translations.

    Counted: the crop (``CROP_PADDING`` = 4 pixels either way) and, in ``"policy"`` mode, the
    translations of the sub-policy that moves most: per sub-policy the magnitudes of its
    translateX ops are summed, and of its translateY ops, the larger sum counts; the total is
    rounded up. Not counted: shears and the rotation (they move pixels by an amount that depends on
    the position, up to a few pixels at the borders), and the flip (``registered_metrics`` tries
    it). 0 for ``"plain"`` preprocessing and for the empty policy in ``"policy"`` mode (which is
    ``"plain"``); ``"crop"`` mode ignores the policy and gives 4.
    """
    if augmentation_mode not in MODES:
        raise ValueError(f"unknown augmentation mode {augmentation_mode!r}; expected one of {MODES}")
    format_policy(policy)
    if augmentation_mode == "plain" or (augmentation_mode == "policy" and not policy):
        return 0
    if augmentation_mode == "crop":
        return CROP_PADDING
    largest = 0.0
    for sub_policy in policy:
        for axis in ("translateX", "translateY"):
            moved = sum(operation(op).magnitude * image_size for op in sub_policy if operation(op).transform == axis)
            largest = max(largest, moved)
    return CROP_PADDING + math.ceil(largest)
