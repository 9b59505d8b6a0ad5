"""The augmentation pipeline around the policy (ats.transforms.pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ats.policies import parse_policy
from ats.runtime.seeding import derive_seed
from ats.transforms.ops_batched import apply_subpolicy_batch
from ats.transforms.pipeline import (
    MODES,
    AugmentationDraw,
    Preprocessor,
    draw_per_sample,
    reference_augment,
    reference_preprocess,
    sample_draw,
)

CIFAR = (3, 32, (0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
         (0.24703224003314972, 0.24348513782024384, 0.26158785820007324))
FASHION = (1, 28, (0.1307,), (0.3081,))
POLICIES = ["", "3-1-7", "3-1-7+43-18-18", "6-10-2+12-9+37-11-14+0"]


def random_images(count: int, side: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, side, side, channels), dtype=np.uint8)


@pytest.mark.parametrize(("channels", "side", "mean", "std"), [CIFAR, FASHION], ids=["cifar", "fashion-mnist"])
@pytest.mark.parametrize("mode", MODES)
def test_batched_pipeline_equals_the_per_image_pil_pipeline(channels: int, side: int, mean: tuple, std: tuple,
                                                            mode: str) -> None:
    images = random_images(24, side, channels, seed=side)
    preprocess = Preprocessor(channels, mean, std)
    for text in POLICIES:
        policy = parse_policy(text)
        draw = sample_draw(policy, len(images), torch.Generator().manual_seed(5), image_size=side)
        augmented = preprocess.augment(images, mode, policy, draw)
        normalised = preprocess.normalise(augmented)
        assert augmented.dtype == torch.uint8 and augmented.shape == (24, channels, 32, 32)
        assert normalised.dtype == torch.float32 and normalised.shape == (24, channels, 32, 32)
        for n, image in enumerate(images):
            expected = np.asarray(reference_augment(image, mode, policy, draw, n)).reshape(32, 32, channels)
            np.testing.assert_array_equal(augmented[n].permute(1, 2, 0).numpy(), expected,
                                          err_msg=f"{mode} {text!r} image {n}")
            reference = reference_preprocess(image, mode, policy, draw, n, mean=mean, std=std)
            assert torch.equal(normalised[n], reference), f"{mode} {text!r} image {n}"


def test_modes_follow_the_original() -> None:
    images = random_images(16, 32, 3, seed=0)
    preprocess = Preprocessor(3, CIFAR[2], CIFAR[3])
    policy = parse_policy("3-1-7")
    draw = sample_draw(policy, 16, torch.Generator().manual_seed(0))
    plain = preprocess.augment(images, "plain", policy, draw)
    assert torch.equal(plain, torch.from_numpy(images).permute(0, 3, 1, 2))  # untouched
    # The empty policy in "policy" mode is "plain" (no crop, no flip), as in the original.
    assert torch.equal(preprocess.augment(images, "policy", (), sample_draw((), 16, torch.Generator())), plain)
    # "crop" ignores the policy and uses the same crops and flips as "policy" with the same draw.
    cropped = preprocess.augment(images, "crop", policy, draw)
    assert torch.equal(cropped, preprocess.augment(images, "crop", (), draw))
    assert torch.equal(preprocess.augment(images, "policy", policy, draw),
                       apply_subpolicy_batch(cropped, (3, 1, 7), draw.signs))
    # Crop window: (top, left) in the zero-padded 40×40 image, flipped where drawn.
    top, left = draw.crop_offsets[0].tolist()
    padded = np.pad(images[0], ((4, 4), (4, 4), (0, 0)))
    window = padded[top:top + 32, left:left + 32]
    window = window[:, ::-1] if draw.flips[0] else window
    np.testing.assert_array_equal(cropped[0].permute(1, 2, 0).numpy(), window)


def test_hybrid_images_get_their_own_sub_policy() -> None:
    images = random_images(40, 32, 3, seed=1)
    policy = parse_policy("3-1-7+43-18-18+2")
    draw = sample_draw(policy, 40, torch.Generator().manual_seed(2))
    preprocess = Preprocessor(3, CIFAR[2], CIFAR[3])
    result = preprocess.augment(images, "policy", policy, draw)
    cropped = preprocess.augment(images, "crop", (), draw)
    assert set(draw.subpolicy.tolist()) == {0, 1, 2}
    for n in range(40):
        sub_policy = policy[int(draw.subpolicy[n])]
        alone = apply_subpolicy_batch(cropped[n:n + 1], sub_policy, draw.signs[n:n + 1, : len(sub_policy)])
        assert torch.equal(result[n:n + 1], alone)


def test_draws_are_uniform() -> None:
    """Sub-policy choice, flips, signs and crop offsets are uniform (n = 30 000, ≥ 5σ margins)."""
    policy = parse_policy("3-1-7+43-18-18+2")
    draw = sample_draw(policy, 30_000, torch.Generator().manual_seed(11))
    choice_share = torch.bincount(draw.subpolicy, minlength=3) / 30_000
    assert torch.all((choice_share - 1 / 3).abs() < 0.014), choice_share
    assert abs(draw.flips.float().mean().item() - 0.5) < 0.015
    assert set(draw.signs.unique().tolist()) == {-1.0, 1.0} and abs(draw.signs.mean().item()) < 0.02
    offsets = torch.bincount(draw.crop_offsets.flatten(), minlength=9) / 60_000
    assert offsets.shape == (9,) and torch.all((offsets - 1 / 9).abs() < 0.007), offsets
    fashion = sample_draw(policy, 1000, torch.Generator().manual_seed(11), image_size=28)
    assert set(fashion.crop_offsets.flatten().tolist()) == {0, 1, 2, 3, 4}


def test_draws_are_reproducible_and_independent_of_batching() -> None:
    policy = parse_policy("3-1-7+43-18-18")
    first = sample_draw(policy, 50, torch.Generator().manual_seed(4))
    again = sample_draw(policy, 50, torch.Generator().manual_seed(4))
    other = sample_draw(policy, 50, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(vars(first).values(), vars(again).values()))
    assert not torch.equal(first.crop_offsets, other.crop_offsets)
    seeds = [derive_seed(0, "spri", "3-1-7+43-18-18", index) for index in range(12)]
    together = draw_per_sample(policy, seeds)
    for index, seed in enumerate(seeds):
        alone = draw_per_sample(policy, [seed])
        assert all(torch.equal(a, b) for a, b in zip(vars(together[index]).values(), vars(alone).values()))
    images = random_images(12, 32, 3, seed=3)
    preprocess = Preprocessor(3, CIFAR[2], CIFAR[3])
    whole = preprocess(images, "policy", policy, together)
    halves = torch.cat([preprocess(images[:5], "policy", policy, draw_per_sample(policy, seeds[:5])),
                        preprocess(images[5:], "policy", policy, draw_per_sample(policy, seeds[5:]))])
    assert torch.equal(whole, halves)
    assert len(draw_per_sample(policy, [])) == 0


def test_draw_container() -> None:
    policy = parse_policy("3-1-7+2")
    draw = sample_draw(policy, 6, torch.Generator().manual_seed(0))
    assert len(draw) == 6 and draw.signs.shape == (6, 3) and draw.signs.dtype == torch.float32
    assert len(draw[2]) == 1 and torch.equal(draw[2].crop_offsets, draw.crop_offsets[2:3])
    assert torch.equal(draw[-1].flips, draw.flips[-1:])
    assert torch.equal(draw[np.int64(3)].signs, draw.signs[3:4])
    assert torch.equal(draw[1:4].subpolicy, draw.subpolicy[1:4])
    assert torch.equal(draw[torch.tensor([5, 0])].signs, draw.signs[[5, 0]])
    joined = AugmentationDraw.concat([draw[:2], draw[2:]])
    assert all(torch.equal(a, b) for a, b in zip(vars(joined).values(), vars(draw).values()))
    assert sample_draw((), 4, torch.Generator()).signs.shape == (4, 0)
    with pytest.raises(ValueError, match="sign columns"):
        AugmentationDraw.concat([draw, sample_draw((), 1, torch.Generator())])
    with pytest.raises(ValueError, match="crop_offsets"):
        AugmentationDraw(draw.crop_offsets.int(), draw.flips, draw.subpolicy, draw.signs)
    with pytest.raises(ValueError, match="signs"):
        AugmentationDraw(draw.crop_offsets, draw.flips, draw.subpolicy, draw.signs[:3])


def test_input_layouts_and_devices_agree() -> None:
    images = random_images(8, 32, 3, seed=9)
    policy = parse_policy("3-1-7")
    draw = sample_draw(policy, 8, torch.Generator().manual_seed(9))
    preprocess = Preprocessor(3, CIFAR[2], CIFAR[3], device="cpu")
    from_numpy = preprocess(images, "policy", policy, draw)
    channels_last = torch.from_numpy(images)
    assert torch.equal(preprocess(channels_last, "policy", policy, draw), from_numpy)
    assert torch.equal(preprocess(channels_last.permute(0, 3, 1, 2), "policy", policy, draw), from_numpy)
    assert from_numpy.device.type == "cpu"
    if torch.cuda.is_available():
        on_gpu = Preprocessor(3, CIFAR[2], CIFAR[3], device="cuda")(channels_last.cuda(), "policy", policy, draw)
        assert torch.equal(on_gpu.cpu(), from_numpy)


def test_normalise_and_denormalise() -> None:
    preprocess = Preprocessor(1, (0.1307,), (0.3081,))
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    normalised = preprocess.normalise(pixels)
    assert normalised[0, 0, 0, 0].item() == pytest.approx(-0.1307 / 0.3081, rel=1e-6)
    assert normalised[0, 0, -1, -1].item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-6)
    restored = preprocess.denormalise(normalised)
    assert torch.allclose(restored, pixels.float() / 255, atol=1e-6)
    assert preprocess.denormalise(torch.full((1, 1, 1, 1), 100.0)).item() == 1.0  # clamped


def test_bad_inputs_are_named() -> None:
    preprocess = Preprocessor(3, CIFAR[2], CIFAR[3])
    images = random_images(4, 32, 3, seed=0)
    policy = parse_policy("3-1-7")
    draw = sample_draw(policy, 4, torch.Generator())
    with pytest.raises(ValueError, match="'jitter'"):
        preprocess(images, "jitter", policy, draw)
    with pytest.raises(ValueError, match="draw for each of the 4 images, got none"):
        preprocess(images, "crop", policy)
    with pytest.raises(ValueError, match="got 3"):
        preprocess(images, "policy", policy, draw[:3])
    with pytest.raises(ValueError, match="needs 3 signs"):
        preprocess(images, "policy", policy, sample_draw(parse_policy("2"), 4, torch.Generator()))
    with pytest.raises(ValueError, match="sub-policies 0..1"):
        preprocess(images, "policy", policy, sample_draw(parse_policy("2-2-2+1"), 4, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="N×H×W×3"):
        preprocess(images[..., :1], "plain", policy)
    with pytest.raises(ValueError, match="square"):
        preprocess(images[:, :30], "plain", policy)
    with pytest.raises(ValueError, match="cannot tell"):
        preprocess(torch.zeros(2, 3, 5, 3, dtype=torch.uint8), "plain", ())
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        Preprocessor(2, (0.5, 0.5), (0.5, 0.5))
    fashion = Preprocessor(1, (0.1307,), (0.3081,))
    cifar_draw = sample_draw(policy, 64, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"0\.\.4 for 28-pixel images.*image_size=28"):
        fashion(random_images(64, 28, 1, seed=0), "crop", (), cifar_draw)
    with pytest.raises(ValueError, match="too small"):
        sample_draw(policy, 1, torch.Generator(), image_size=20)
