"""PIL reference ops and batched tensor ops (ats.transforms.ops_pil / ops_batched).

The batched ops must reproduce PIL pixel for pixel: every comparison below is exact equality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ats.policies import NUM_OPERATIONS, OPERATIONS, TRANSFORM_MAGNITUDES, TRANSFORMS, PolicyError
from ats.transforms.ops_batched import (
    apply_op_batch,
    apply_subpolicy_batch,
    apply_transform_batch,
    luminance,
    resize_bilinear,
)
from ats.transforms.ops_pil import apply_op_pil, apply_subpolicy_pil, apply_transform_pil

HYPOTHESIS = settings(max_examples=50, deadline=None)


def varied_images(count: int, height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """uint8 N×H×W×C images covering the ops' special cases.

    Noise, smooth gradients (natural-image-like), constant images (flat histograms: equalize and
    autocontrast must leave them alone), two-level images and low-contrast images.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    images = []
    for index in range(count):
        kind = index % 5
        if kind == 0:
            image = rng.integers(0, 256, (height, width, channels))
        elif kind == 1:
            slopes = rng.uniform(-12, 12, (2, channels))
            image = rng.integers(0, 256, channels) + xs[..., None] * slopes[0] + ys[..., None] * slopes[1]
        elif kind == 2:
            image = np.broadcast_to(rng.integers(0, 256, channels), (height, width, channels))
        elif kind == 3:
            image = np.where(rng.random((height, width, 1)) < 0.3, rng.integers(0, 256, channels),
                             rng.integers(0, 256, channels))
        else:
            image = rng.integers(100, 110, (height, width, channels))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[:, :, 0], "L") if image.shape[2] == 1 else Image.fromarray(image, "RGB")


def from_pil(img: Image.Image) -> np.ndarray:
    array = np.asarray(img)
    return array[:, :, None] if array.ndim == 2 else array


def batched(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def unbatched(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(0, 2, 3, 1).cpu().numpy()


SIGNS = torch.tensor([1, -1, 1, -1, -1, 1, -1, 1, 1, -1])


@pytest.fixture(scope="module")
def rgb_images() -> np.ndarray:
    return varied_images(10, 32, 32, 3, seed=0)


@pytest.fixture(scope="module")
def grey_images() -> np.ndarray:
    return varied_images(10, 32, 32, 1, seed=1)


@pytest.mark.parametrize("op_index", range(NUM_OPERATIONS))
def test_every_op_matches_pil_exactly(op_index: int, rgb_images: np.ndarray, grey_images: np.ndarray) -> None:
    for images in (rgb_images, grey_images):
        result = unbatched(apply_op_batch(batched(images), op_index, SIGNS))
        for n, image in enumerate(images):
            expected = from_pil(apply_op_pil(to_pil(image), op_index, int(SIGNS[n])))
            np.testing.assert_array_equal(result[n], expected, err_msg=f"op {op_index}, image {n}")


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_transform_and_magnitude_matches_pil_at_odd_sizes(transform: str) -> None:
    """Including shearX and magnitudes the 50-op list does not use; non-square, tiny images."""
    for height, width, channels in ((7, 13, 3), (21, 9, 1), (2, 3, 3), (1, 1, 3), (40, 33, 3)):
        images = varied_images(5, height, width, channels, seed=height * width)
        for magnitude in TRANSFORM_MAGNITUDES[transform]:
            result = unbatched(apply_transform_batch(batched(images), transform, magnitude, SIGNS[:5]))
            for n, image in enumerate(images):
                expected = from_pil(apply_transform_pil(to_pil(image), transform, magnitude, int(SIGNS[n])))
                np.testing.assert_array_equal(result[n], expected,
                                              err_msg=f"{transform} m={magnitude} {height}×{width}×{channels}")


def test_subpolicies_apply_ops_in_order_with_their_own_signs(rgb_images: np.ndarray) -> None:
    ops = (3, 1, 7, 10, 14, 9)
    signs = torch.tensor([[1, -1, -1, 1, -1, 1], [-1, 1, 1, -1, 1, -1]]).repeat(5, 1)
    result = unbatched(apply_subpolicy_batch(batched(rgb_images), ops, signs))
    for n, image in enumerate(rgb_images):
        expected = from_pil(apply_subpolicy_pil(to_pil(image), ops, signs[n].tolist()))
        np.testing.assert_array_equal(result[n], expected)


def test_known_values_independent_of_pil() -> None:
    """A few ops checked against hand-computed results, so the reference itself is pinned down."""
    image = torch.arange(32 * 32 * 3, dtype=torch.int64).remainder(251).to(torch.uint8).view(1, 3, 32, 32)
    plus, minus = torch.tensor([1.0]), torch.tensor([-1.0])
    # translateX m9 = 14.50 px: output x samples input floor(x + 0.5 + 14.50) = x + 15.
    shifted = apply_op_batch(image, 3, plus)
    assert torch.equal(shifted[..., :17], image[..., 15:]) and not shifted[..., 17:].any()
    shifted_back = apply_op_batch(image, 3, minus)  # floor(x + 0.5 − 14.50) = x − 15
    assert torch.equal(shifted_back[..., 15:], image[..., :17]) and not shifted_back[..., :15].any()
    # rotate 6.67° CCW about the centre: the corners are vacated and filled with grey 128.
    rotated = apply_op_batch(image, 2, plus)
    assert rotated[0, :, 0, 0].tolist() == [128, 128, 128] and rotated[0, :, -1, -1].tolist() == [128, 128, 128]
    assert torch.equal(apply_op_batch(image, 0, plus), 255 - image)  # invert
    assert torch.equal(apply_op_batch(image, 11, plus), image & 0b11111100)  # posterize: 6 bits
    assert torch.equal(apply_op_batch(image, 28, plus), image)  # solarize at 256: identity
    assert torch.equal(apply_op_batch(image, 37, plus), torch.where(image < 143, image, 255 - image))
    assert torch.equal(apply_op_batch(image, 15, minus), image // 2)  # brightness × 0.5, truncated
    assert torch.equal(apply_op_batch(image, 39, minus), image)  # colour × 1.0: identity
    grey = torch.full((1, 1, 4, 4), 7, dtype=torch.uint8)
    assert torch.equal(apply_op_batch(grey, 9, plus), grey)  # equalize leaves flat images alone
    two_level = torch.tensor([[[[10, 10], [200, 200]]]], dtype=torch.uint8)
    assert apply_op_batch(two_level, 8, plus).unique().tolist() == [0, 255]  # autocontrast stretches


def test_luminance_and_resize_match_pil(rgb_images: np.ndarray, grey_images: np.ndarray) -> None:
    grey = unbatched(luminance(batched(rgb_images)))
    expected = np.stack([from_pil(to_pil(image).convert("L")) for image in rgb_images])
    np.testing.assert_array_equal(grey, expected)
    for side in (28, 5, 32, 47):
        images = varied_images(5, side, side, 1, seed=side)
        resized = unbatched(resize_bilinear(batched(images), 32))
        expected = np.stack([from_pil(to_pil(image).resize((32, 32), Image.Resampling.BILINEAR)) for image in images])
        np.testing.assert_array_equal(resized, expected, err_msg=f"{side} → 32")


def test_bad_arguments_are_named() -> None:
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(2,\)"):
        apply_op_batch(images, 3, torch.ones(3))
    with pytest.raises(ValueError, match=r"\+1 or -1.*0\.0"):
        apply_op_batch(images, 3, torch.tensor([1.0, 0.0]))
    with pytest.raises(PolicyError, match="50"):
        apply_op_batch(images, 50, torch.ones(2))
    with pytest.raises(ValueError, match="float32"):
        apply_op_batch(images.float(), 3, torch.ones(2))
    with pytest.raises(ValueError, match="'zoom'"):
        apply_transform_batch(images, "zoom", 0.0, torch.ones(2))
    with pytest.raises(ValueError, match="'zoom'"):
        apply_transform_pil(Image.new("RGB", (4, 4)), "zoom", 0.0, 1)
    with pytest.raises(ValueError, match="got 0"):
        apply_op_pil(Image.new("RGB", (4, 4)), 3, 0)
    with pytest.raises(ValueError, match="'RGBA'"):
        apply_op_pil(Image.new("RGBA", (4, 4)), 3, 1)
    with pytest.raises(ValueError, match="2 signs"):
        apply_subpolicy_pil(Image.new("RGB", (4, 4)), (3, 1, 7), (1, 1))


@st.composite
def images_and_op(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    height, width, channels = draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.integers(0, 4))
    image = varied_images(5, height, width, channels, seed)[kind]
    return image, draw(st.integers(0, NUM_OPERATIONS - 1)), draw(st.sampled_from([1, -1]))


@HYPOTHESIS
@given(images_and_op())
def test_any_op_on_any_image_keeps_shape_and_dtype_and_matches_the_reference(case: tuple[np.ndarray, int, int]) -> None:
    """RGB and grey images match PIL; other channel counts are processed channel by channel."""
    image, op_index, sign = case
    result = apply_op_batch(batched(image[None]), op_index, torch.tensor([sign]))
    assert result.dtype == torch.uint8 and result.shape == (1, image.shape[2], *image.shape[:2])
    result = unbatched(result)[0]
    if image.shape[2] == 2:
        expected = np.concatenate([from_pil(apply_op_pil(to_pil(image[:, :, c:c + 1]), op_index, sign))
                                   for c in range(2)], axis=2)
    else:
        expected = from_pil(apply_op_pil(to_pil(image), op_index, sign))
    np.testing.assert_array_equal(result, expected, err_msg=f"op {op_index} ({OPERATIONS[op_index].transform})")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_results_equal_cpu_results(rgb_images: np.ndarray) -> None:
    signs = SIGNS.repeat(3, 1).T
    ops = (6, 10, 4, 14, 1, 9, 8, 2, 3, 7, 12, 37)
    for start in range(0, len(ops), 3):
        chunk = ops[start:start + 3]
        cpu = apply_subpolicy_batch(batched(rgb_images), chunk, signs)
        cuda = apply_subpolicy_batch(batched(rgb_images).cuda(), chunk, signs.cuda())
        assert torch.equal(cuda.cpu(), cpu), chunk
