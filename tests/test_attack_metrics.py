"""Image metrics against known values and independent implementations (ats.attack.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ats.attack.metrics import SSIM_K1, SSIM_K2, feature_mse, mse, psnr, ssim

C1, C2 = SSIM_K1**2, SSIM_K2**2


def _images(seed: int, shape=(2, 3, 20, 24)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gaussian_weights() -> np.ndarray:
    offsets = np.arange(-5, 6)
    weights = np.exp(-(offsets**2) / (2 * 1.5**2))
    return weights / weights.sum()


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two C×H×W images by the textbook formula, one window position at a time.

    Independent of the library code: weighted moments are taken about the window mean, not as
    E[x²] − E[x]², and no convolution is used.
    """
    window = np.outer(_gaussian_weights(), _gaussian_weights())
    values = []
    for channel_a, channel_b in zip(a, b):
        height, width = channel_a.shape
        for top in range(height - 10):
            for left in range(width - 10):
                x = channel_a[top:top + 11, left:left + 11]
                y = channel_b[top:top + 11, left:left + 11]
                mu_x, mu_y = (window * x).sum(), (window * y).sum()
                var_x = (window * (x - mu_x) ** 2).sum()
                var_y = (window * (y - mu_y) ** 2).sum()
                cov = (window * (x - mu_x) * (y - mu_y)).sum()
                values.append((2 * mu_x * mu_y + C1) * (2 * cov + C2)
                              / ((mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2)))
    return float(np.mean(values))


def test_psnr_and_mse_known_values() -> None:
    a = _images(0)
    assert torch.isinf(psnr(a, a)).all() and (psnr(a, a) > 0).all()
    assert torch.equal(mse(a, a), torch.zeros(2, dtype=torch.float64))
    shifted = a.clamp(max=0.9) + 0.1
    assert mse(a.clamp(max=0.9), shifted) == pytest.approx([0.01, 0.01], rel=1e-12)
    assert psnr(a.clamp(max=0.9), shifted) == pytest.approx([20.0, 20.0], abs=1e-9)
    # per image, no clamping: an error of 0.5 on every pixel of image 1 only
    b = a.clone()
    b[1] += 0.5
    assert psnr(a, b)[1] == pytest.approx(10 * math.log10(4), abs=1e-9)
    assert torch.isinf(psnr(a, b)[0])


def test_ssim_of_identical_images_is_one() -> None:
    a = _images(1)
    assert ssim(a, a) == pytest.approx([1.0, 1.0], abs=1e-12)


def test_ssim_of_constant_images_by_hand() -> None:
    # no variance: only the luminance term (2uv + C1)/(u² + v² + C1) remains
    u, v = 0.2, 0.7
    a = torch.full((1, 3, 16, 16), u, dtype=torch.float64)
    b = torch.full((1, 3, 16, 16), v, dtype=torch.float64)
    expected = (2 * u * v + C1) / (u**2 + v**2 + C1)
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("contrast_a, contrast_b", [(0.4, 0.1), (0.3, -0.3), (0.2, 0.2)])
def test_ssim_of_contrast_scaled_checkerboards_by_hand(contrast_a: float, contrast_b: float) -> None:
    """a = ½ + d·c, b = ½ + e·c with c = ±1 a checkerboard.

    With s = Σ w_k (−1)^k over the 1-D Gaussian weights, the window around a pixel of sign c₀ has
    mean ½ + d·c₀·s², variance d²(1 − s⁴) and covariance d·e·(1 − s⁴); half the positions have
    c₀ = +1 and half −1.
    """
    s = float(sum(w * (-1) ** k for k, w in enumerate(_gaussian_weights())))
    rows, columns = np.indices((32, 32))
    checkerboard = torch.tensor((-1.0) ** (rows + columns))
    a = (0.5 + contrast_a * checkerboard).expand(1, 1, 32, 32)
    b = (0.5 + contrast_b * checkerboard).expand(1, 1, 32, 32)
    spread = 1 - s**4
    structure = (2 * contrast_a * contrast_b * spread + C2) / ((contrast_a**2 + contrast_b**2) * spread + C2)
    luminance = [(2 * (0.5 + contrast_a * c0 * s**2) * (0.5 + contrast_b * c0 * s**2) + C1)
                 / ((0.5 + contrast_a * c0 * s**2) ** 2 + (0.5 + contrast_b * c0 * s**2) ** 2 + C1)
                 for c0 in (1, -1)]
    expected = structure * (luminance[0] + luminance[1]) / 2
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-10)


def test_ssim_matches_a_straightforward_reference_per_image() -> None:
    a = _images(2, (3, 3, 14, 17))
    b = (a + 0.3 * _images(3, (3, 3, 14, 17))).clamp(0, 1)
    values = ssim(a, b)
    for index in range(3):
        assert values[index].item() == pytest.approx(_ssim_reference(a[index].numpy(), b[index].numpy()), abs=1e-12)


def test_ssim_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    a = _images(4, (2, 3, 32, 32))
    b = (a * 0.7 + 0.2 * _images(5, (2, 3, 32, 32))).clamp(0, 1)
    values = ssim(a, b)
    for index in range(2):
        expected = metrics.structural_similarity(
            a[index].numpy(), b[index].numpy(), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=0)
        assert values[index].item() == pytest.approx(expected, abs=1e-10)


def test_ssim_in_float32_is_close_to_float64() -> None:
    a, b = _images(6), _images(7)
    assert torch.allclose(ssim(a.float(), b.float()).double(), ssim(a, b), atol=1e-5)


def test_metrics_reject_mismatched_or_small_images() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


def test_feature_mse_is_the_mean_squared_logit_difference() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double()
    a, b = _images(8, (3, 3, 2, 2)), _images(9, (3, 3, 2, 2))
    expected = ((model(a) - model(b)) ** 2).mean(dim=1)
    assert torch.allclose(feature_mse(model, a, b), expected)
    assert torch.equal(feature_mse(model, a, a), torch.zeros(3, dtype=torch.float64))
