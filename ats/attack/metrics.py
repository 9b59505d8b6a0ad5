"""Image-quality metrics of a reconstruction, one value per image.

``psnr``, ``mse`` and ``ssim`` compare images in [0, 1] pixel space (denormalised), shaped
``(B, C, H, W)``; ``feature_mse`` compares the model's logits on normalised inputs.

* ``mse``: mean squared error over all pixels and channels of an image.
* ``psnr``: ``10 · log10(1 / mse)`` per image, as the original's ``inversefed.metrics.psnr`` (peak 1,
  no clamping of the inputs; identical images give +inf). The original then averaged over a batch of
  one; here every image keeps its own value.
* ``ssim``: the structural similarity of Wang et al. (2004) with an 11-tap Gaussian window
  (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1 and population (not sample) covariances, averaged
  over the positions where the window fits inside the image and over channels. This equals
  ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=0)``. The original had no SSIM.
* ``feature_mse``: mean squared difference of the logits, as the original's ``feat_mse``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, ``(B,)``."""
    _check_pair(a, b)
    return (a - b).pow(2).flatten(1).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, ``(B,)``, for images in [0, 1]."""
    return 10 * torch.log10(1 / mse(a, b))


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian of SciPy's ``gaussian_filter`` (σ 1.5, truncated at radius 5)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - SSIM_WINDOW // 2
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _local_mean(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean at every position where the window fits (separable, per channel)."""
    channels = images.shape[1]
    rows = window.reshape(1, 1, -1, 1).expand(channels, 1, -1, 1)
    columns = window.reshape(1, 1, 1, -1).expand(channels, 1, 1, -1)
    return F.conv2d(F.conv2d(images, rows, groups=channels), columns, groups=channels)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image, ``(B,)``, for images in [0, 1] (see the module docstring)."""
    _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    window = _gaussian_window(a.dtype, a.device)
    mean_a, mean_b = _local_mean(a, window), _local_mean(b, window)
    variance_a = _local_mean(a * a, window) - mean_a**2
    variance_b = _local_mean(b * b, window) - mean_b**2
    covariance = _local_mean(a * b, window) - mean_a * mean_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    similarity = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (variance_a + variance_b + c2)
    )
    return similarity.flatten(1).mean(dim=1)


@torch.no_grad()
def feature_mse(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the model's logits per image, ``(B,)``, for normalised inputs.

    The caller decides the model's mode; the attack stage uses eval mode, as the original.
    """
    _check_pair(a, b)
    return (model(a) - model(b)).pow(2).flatten(1).mean(dim=1)
