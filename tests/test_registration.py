"""Registered metrics (ats.attack.registration): the best PSNR/SSIM over shifts and the flip."""

from __future__ import annotations

import pytest
import torch

from ats.attack.metrics import psnr, ssim
from ats.attack.registration import align, policy_max_shift, registered_metrics
from ats.policies import parse_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def framed_images(count: int, margin: int = 6) -> torch.Tensor:
    """Random images in [0.1, 0.9] inside a flat grey frame of ``margin`` pixels, so that moving the
    content by less than ``margin`` pixels and back (edges replicated) restores every pixel."""
    generator = torch.Generator().manual_seed(7)
    images = torch.full((count, 3, 32, 32), 0.5, dtype=torch.float64)
    images[..., margin:-margin, margin:-margin] = 0.1 + 0.8 * torch.rand(
        count, 3, 32 - 2 * margin, 32 - 2 * margin, generator=generator, dtype=torch.float64)
    return images


def test_a_shifted_and_flipped_copy_is_found_with_its_exact_shift_and_the_unshifted_psnr() -> None:
    references = framed_images(4)
    noise = 0.05 * torch.randn(references.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    reconstructions = references.clone()
    reconstructions[..., 6:-6, 6:-6] += noise[..., 6:-6, 6:-6]  # a good reconstruction, still framed
    moves = [(3, -2, False), (-5, 4, True), (0, 5, True), (-1, 0, False)]  # within the frame
    displaced = torch.cat([align(reconstructions[n:n + 1], dy, dx, flipped) for n, (dy, dx, flipped) in
                           enumerate(moves)])
    result = registered_metrics(displaced, references, max_shift=6, allow_flip=True)
    for n, (dy, dx, flipped) in enumerate(moves):
        # undoing "mirror, then move by (dy, dx)" is "mirror, then move by (dy, −dx)" when mirrored
        assert (result.shift_y[n].item(), result.shift_x[n].item(), result.flipped[n].item()) == (
            -dy, dx if flipped else -dx, flipped)
    assert torch.allclose(result.psnr, psnr(reconstructions, references), atol=1e-9, rtol=0)
    assert torch.allclose(result.ssim, ssim(reconstructions, references), atol=1e-9, rtol=0)
    assert (psnr(displaced, references) < result.psnr - 3).all(), "unregistered, the copies score far lower"


def test_the_identity_gives_the_plain_metrics_and_registration_never_lowers_them() -> None:
    references = framed_images(3)
    reconstructions = references + 0.1 * torch.randn(references.shape, generator=torch.Generator().manual_seed(2),
                                                     dtype=torch.float64)
    plain = registered_metrics(reconstructions, references, max_shift=0, allow_flip=False)
    assert torch.equal(plain.psnr, psnr(reconstructions, references))
    assert torch.equal(plain.ssim, ssim(reconstructions, references))
    assert not plain.shift_y.any() and not plain.shift_x.any() and not plain.flipped.any()
    registered = registered_metrics(reconstructions, references, max_shift=3, allow_flip=True)
    assert (registered.psnr >= plain.psnr).all()
    perfect = registered_metrics(references, references, max_shift=3, allow_flip=True)
    assert torch.isinf(perfect.psnr).all() and not perfect.shift_x.any() and not perfect.flipped.any(), \
        "ties keep the identity"


def test_policy_max_shift_counts_the_crop_and_the_largest_translation() -> None:
    assert policy_max_shift(()) == 0, "the empty policy is plain preprocessing"
    assert policy_max_shift(parse_policy("3-1-7"), augmentation_mode="plain") == 0
    assert policy_max_shift((), augmentation_mode="crop") == 4
    assert policy_max_shift(parse_policy("3-1-7"), augmentation_mode="crop") == 4
    assert policy_max_shift(parse_policy("9-1")) == 4, "no translation: the crop"
    assert policy_max_shift(parse_policy("3-1-7")) == 4 + 15, "translateX 14.50 px rounded up"
    assert policy_max_shift(parse_policy("43-18-18")) == 4 + 5, "translateY 4.83 px"
    assert policy_max_shift(parse_policy("43-48")) == 4 + 10, "two translateY ops add up (9.66 px)"
    assert policy_max_shift(parse_policy("7-21")) == 4 + 9, "X and Y are separate axes: the larger"
    assert policy_max_shift(parse_policy("43-18-18+3-1-7")) == 19, "a hybrid: its largest sub-policy"
    assert policy_max_shift(parse_policy("3"), image_size=64) == 4 + 30


def test_bad_arguments_are_named() -> None:
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="max_shift"):
        registered_metrics(images, images, -1, True)
    with pytest.raises(ValueError, match="same shape"):
        registered_metrics(images, images[:1], 2, True)
    with pytest.raises(ValueError, match="augmentation mode"):
        policy_max_shift((), augmentation_mode="aug")
