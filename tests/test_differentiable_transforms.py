"""The differentiable pipeline T_θ(x) (ats.transforms.differentiable) against the exact batched pipeline.

At the drawn parameters T_θ must reproduce ``Preprocessor.augment`` / 255 within the bound its
docstring states: exact for the crop, flip, translations, rotation and the unsigned ops, at most
1/255 for shears and brightness, at most 1.5/255 for colour, contrast and sharpness.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ats.policies import NUM_OPERATIONS, OPERATIONS, parse_policy
from ats.transforms.differentiable import (
    RelaxedDraw,
    differentiable_augment,
    differentiable_op,
    draw_hypotheses,
    has_unknown_draw,
    learned_sign_columns,
)
from ats.transforms.pipeline import Preprocessor, draw_per_sample

EXACT = 1e-12  # float64 rounding only
TRUNCATION = 1 / 255 + EXACT
ROUNDED_DEGENERATE = 1.5 / 255
BOUNDS = {
    **dict.fromkeys(("translateX", "translateY", "rotate", "invert", "solarize", "posterize", "autocontrast",
                     "equalize"), EXACT),
    **dict.fromkeys(("shearX", "shearY", "brightness"), TRUNCATION),
    **dict.fromkeys(("color", "contrast", "sharpness"), ROUNDED_DEGENERATE),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def natural_images(count: int, size: int, channels: int, seed: int) -> np.ndarray:
    """uint8 N×H×W×C images that look like photographs at 32 pixels: a few smooth waves of
    different frequencies per channel, a little sensor noise, and a disc with a sharp edge."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        image = np.full((size, size, channels), 0.5)
        for _ in range(4):
            frequencies, phase = rng.uniform(0.5, 4, 2), rng.uniform(0, 6)
            amplitudes = rng.uniform(0.05, 0.25, channels)
            image += amplitudes * np.sin(2 * math.pi * (frequencies[0] * xs + frequencies[1] * ys) + phase)[..., None]
        image += rng.normal(0, 0.03, image.shape)
        centre_y, centre_x, radius = rng.uniform(0.2, 0.8, 3)
        disc = (ys - centre_y) ** 2 + (xs - centre_x) ** 2 < (0.3 * radius) ** 2
        image[disc] = image[disc] * 0.5 + rng.uniform(0, 1, channels) * 0.5
        images.append(np.clip(image * 255, 0, 255).round().astype(np.uint8))
    return np.stack(images)


def as_unit_tensor(images: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(dtype) / 255


def exact_and_relaxed(images: np.ndarray, mode: str, policy, seeds, dtype: torch.dtype = torch.float64,
                      device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    channels = images.shape[3]
    preprocessor = Preprocessor(channels, [0.5] * channels, [0.25] * channels, device)
    draw = draw_per_sample(policy, seeds, image_size=images.shape[1])
    exact = preprocessor.augment(images, mode, policy, draw).to(dtype) / 255
    relaxed = differentiable_augment(as_unit_tensor(images, dtype).to(device), mode, policy,
                                     RelaxedDraw.from_draw(draw, dtype, device))
    return exact, relaxed


@pytest.fixture(scope="module")
def rgb_images() -> np.ndarray:
    return natural_images(12, 32, 3, seed=0)


@pytest.fixture(scope="module")
def grey_images() -> np.ndarray:
    return natural_images(12, 32, 1, seed=1)


@pytest.mark.parametrize("op_index", range(NUM_OPERATIONS))
def test_every_op_at_the_drawn_parameters_equals_the_pipeline_within_its_bound(
        op_index: int, rgb_images: np.ndarray, grey_images: np.ndarray) -> None:
    """Each op after a random crop and flip; 12 images, random signs (both occur)."""
    policy = ((op_index,),)
    bound = BOUNDS[OPERATIONS[op_index].transform]
    for images in (rgb_images, grey_images):
        seeds = range(100 * op_index, 100 * op_index + len(images))
        exact, relaxed = exact_and_relaxed(images, "policy", policy, seeds)
        assert relaxed.shape == exact.shape and relaxed.dtype == torch.float64
        error = (relaxed - exact).abs().max().item()
        assert error <= bound, f"op {op_index} ({OPERATIONS[op_index].transform}): {error * 255:.3f}/255"


def test_draws_cover_both_signs_crops_and_flips() -> None:
    draw = draw_per_sample(((3,),), range(12))
    assert set(draw.signs[:, 0].tolist()) == {-1.0, 1.0} and set(draw.flips.tolist()) == {False, True}
    assert len({tuple(offsets) for offsets in draw.crop_offsets.tolist()}) > 6


def test_crop_mode_hybrids_and_fashion_mnist_sizes(rgb_images: np.ndarray, grey_images: np.ndarray) -> None:
    exact, relaxed = exact_and_relaxed(rgb_images, "crop", parse_policy("3-1"), range(12))
    assert torch.equal(relaxed, exact), "crop and flip at integer offsets are exact"
    exact, relaxed = exact_and_relaxed(rgb_images, "policy", parse_policy("3-2-9+43-0+11"), range(12))
    assert (relaxed - exact).abs().max() <= EXACT, "each image gets its own sub-policy"
    fashion = natural_images(12, 28, 1, seed=2)
    exact, relaxed = exact_and_relaxed(fashion, "policy", parse_policy("7-10"), range(12))
    assert relaxed.shape == (12, 1, 32, 32) and (relaxed - exact).abs().max() <= TRUNCATION
    exact, relaxed = exact_and_relaxed(fashion, "plain", (), range(12))
    assert (relaxed - exact).abs().max() <= TRUNCATION, "28 → 32 bilinear: PIL rounds its two passes"
    exact, relaxed = exact_and_relaxed(grey_images, "policy", (), range(12))
    assert torch.equal(relaxed, exact), "the empty policy is plain: the identity at 32 pixels"


def test_float32_stays_within_the_bounds(rgb_images: np.ndarray) -> None:
    for text in ("3", "10", "1", "14", "2", "9"):
        policy = parse_policy(text)
        exact, relaxed = exact_and_relaxed(rgb_images, "policy", policy, range(12), torch.float32)
        assert relaxed.dtype == torch.float32
        bound = BOUNDS[OPERATIONS[policy[0][0]].transform]
        assert (relaxed - exact).abs().max() <= bound + 1e-6, text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(rgb_images: np.ndarray) -> None:
    policy = parse_policy("3-1-7+43-18-18+10-14-9+2-37-11")
    _, cpu = exact_and_relaxed(rgb_images, "policy", policy, range(12))
    exact, cuda = exact_and_relaxed(rgb_images, "policy", policy, range(12), device="cuda")
    assert (cuda.cpu() - cpu).abs().max() <= 1e-9
    assert torch.equal(exact.cpu(), exact_and_relaxed(rgb_images, "policy", policy, range(12))[0])


def test_gradients_in_the_draw_match_finite_differences(rgb_images: np.ndarray) -> None:
    """Away from the kinks (integer pixel positions, clipping), T_θ is smooth in the crop and the signs."""
    images = 0.3 + 0.4 * as_unit_tensor(rgb_images[:2])  # no clipping in the enhancements
    policy = parse_policy("10-21-1-4")
    offsets = torch.tensor([[3.3, 4.6], [1.7, 6.2]], dtype=torch.float64, requires_grad=True)
    signs = torch.tensor([[0.55, -0.35, 0.4, -0.7], [-0.45, 0.65, -0.2, 0.3]], dtype=torch.float64,
                         requires_grad=True)
    flips, subpolicy = torch.tensor([False, True]), torch.zeros(2, dtype=torch.long)

    def transformed(offsets: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        return differentiable_augment(images, "policy", policy, RelaxedDraw(offsets, flips, subpolicy, signs))

    assert torch.autograd.gradcheck(transformed, (offsets, signs), eps=1e-6, atol=1e-6, fast_mode=True)


def test_image_gradients_exist_and_straight_through_ops_pass_them_on(rgb_images: np.ndarray) -> None:
    images = as_unit_tensor(rgb_images[:3]).requires_grad_()
    weights = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for op_index in (9, 8, 11):  # equalize, autocontrast, posterize: the identity's gradient
        (gradient,) = torch.autograd.grad((differentiable_op(images, op_index, torch.ones(3)) * weights).sum(), images)
        assert torch.equal(gradient, weights), op_index
    (gradient,) = torch.autograd.grad((differentiable_op(images, 0, torch.ones(3)) * weights).sum(), images)
    assert torch.equal(gradient, -weights), "invert"
    draw = RelaxedDraw.from_draw(draw_per_sample(parse_policy("3-1-7"), range(3)), torch.float64)
    (gradient,) = torch.autograd.grad(differentiable_augment(images, "policy", parse_policy("3-1-7"), draw).sum(),
                                      images)
    assert gradient.abs().sum() > 0


def test_the_flip_is_the_mirror_image_of_the_untransformed_image(rgb_images: np.ndarray) -> None:
    """Why the attack never learns the flip: T(x; flipped, left) = T(mirror(x); unflipped, 8 − left)."""
    images, policy = as_unit_tensor(rgb_images[:4]), parse_policy("10-3-13")
    draw = RelaxedDraw.from_draw(draw_per_sample(policy, range(4)), torch.float64)
    mirrored = RelaxedDraw(torch.stack([draw.crop_offsets[:, 0], 8 - draw.crop_offsets[:, 1]], 1),
                           ~draw.flips, draw.subpolicy, draw.signs)
    assert torch.equal(differentiable_augment(images, "policy", policy, draw),
                       differentiable_augment(images.flip(-1), "policy", policy, mirrored))


def test_hypotheses_enumerate_sub_policies_and_directions_of_signed_ops() -> None:
    hypotheses = draw_hypotheses("policy", parse_policy("3-1-7+43-18-18"), 32, torch.float64)
    assert len(hypotheses) == 16 and hypotheses.subpolicy.tolist() == [0] * 8 + [1] * 8
    assert hypotheses.signs[0].tolist() == [1, 1, 1] and hypotheses.signs[7].tolist() == [-1, -1, -1]
    assert len({tuple(row) for row in hypotheses.signs[:8].tolist()}) == 8
    assert (hypotheses.crop_offsets == 4).all() and not hypotheses.flips.any()
    # colour at magnitude 0 is the identity either way; equalize and rotate have no direction;
    # a shorter sub-policy's unused columns stay +1
    mixed = draw_hypotheses("policy", parse_policy("39-9-2+21"), 28)
    assert mixed.signs.tolist() == [[1, 1, 1], [1, 1, 1], [-1, 1, 1]] and mixed.subpolicy.tolist() == [0, 1, 1]
    assert (mixed.crop_offsets == 2).all(), "28-pixel images: offsets 0…4"
    assert learned_sign_columns(parse_policy("39-9-2+21"), mixed.subpolicy, 3).tolist() == [
        [False, False, False], [True, False, False], [True, False, False]]
    crop = draw_hypotheses("crop", parse_policy("3"), 32)
    assert len(crop) == 1 and crop.signs.shape == (1, 0)
    assert not has_unknown_draw("policy", ()) and not has_unknown_draw("plain", parse_policy("3"))
    assert has_unknown_draw("crop", ())
    with pytest.raises(ValueError, match="no random draw"):
        draw_hypotheses("plain", (), 32)
