"""The augmentation benchmark: the batched pipeline against per-image PIL transforms in a DataLoader."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ats.policies import parse_policy
from ats.runtime.seeding import derive_seed, torch_generator
from ats.transforms.pipeline import AugmentationDraw, Preprocessor, sample_draw
from benchmarks import reference
from benchmarks.inputs import IMAGE_SHAPE, MEAN, SEED, STD, Sizes
from benchmarks.timing import Measurement, time_alternating

# The README's example hybrid policy, and a hybrid that uses each of the 13 transforms of the
# 50-op list once (rotate, shearY, equalize / posterize, solarize, invert / color, brightness,
# sharpness / autocontrast, contrast, translateX, translateY).
BENCH_POLICY = "3-1-7+43-18-18"
ALL_TRANSFORMS_POLICY = "2-6-9+11-37-0+12-13-14+8-1-21-7"
AUGMENT_BATCH = 128  # the training batch size of the original recipe


def _random_uint8_images(count: int) -> np.ndarray:
    """Random ``count×32×32×3`` uint8 pixels (the at-rest layout of the HDF5 caches)."""
    return np.random.default_rng(derive_seed(SEED, "bench", "augment")).integers(
        0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def _augment_one_policy(policy_text: str, pixels: np.ndarray, sizes: Sizes,
                        device: torch.device) -> tuple[Measurement, float]:
    """Times of the batched pipeline and of the PIL DataLoader on ``pixels``, and their max abs diff.

    The library side draws its augmentations batch by batch from a freshly seeded generator and
    uploads the uint8 batch itself, as a training loop would; the reference replays the very same
    draws, so the outputs must agree.
    """
    policy = parse_policy(policy_text)
    preprocessor = Preprocessor(IMAGE_SHAPE[0], MEAN, STD, device)
    starts = range(0, len(pixels), AUGMENT_BATCH)

    def batched() -> list[torch.Tensor]:
        generator = torch_generator(SEED, "bench", "augment", policy_text)
        outputs = []
        for start in starts:
            batch = pixels[start:start + AUGMENT_BATCH]
            outputs.append(preprocessor(batch, "policy", policy, sample_draw(policy, len(batch), generator)))
        return outputs

    replay = torch_generator(SEED, "bench", "augment", policy_text)
    draw = AugmentationDraw.concat([sample_draw(policy, len(pixels[start:start + AUGMENT_BATCH]), replay)
                                    for start in starts])
    loader = torch.utils.data.DataLoader(
        reference.PolicyDataset(pixels, policy, draw, MEAN, STD), batch_size=AUGMENT_BATCH,
        num_workers=sizes.augment_workers, persistent_workers=sizes.augment_workers > 0)

    def per_image() -> list[torch.Tensor]:
        return [batch.to(device) for batch in loader]

    # Cheap, but its first calls after the heavy benchmarks run slow (fresh allocations), so it
    # gets two warm-up calls and five rounds.
    measured = time_alternating({"library": batched, "reference": per_image}, device, max(sizes.rounds, 5),
                                warmup_calls=2)
    diff = max(float((ours - theirs).abs().max())
               for ours, theirs in zip(measured.results["library"], measured.results["reference"]))
    return measured, diff


def bench_augment(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Crop + flip + policy + normalise of a data set: batched pipeline vs per-image PIL in a DataLoader.

    Timed on the README's example policy (the headline) and on a hybrid that uses every transform
    of the 50-op list once, since the batched cost differs a lot between transforms.
    """
    pixels = _random_uint8_images(sizes.augment_images)
    record: dict[str, Any] = {"timings": {}}
    for suffix, policy_text in (("", BENCH_POLICY), ("_all_transforms", ALL_TRANSFORMS_POLICY)):
        measured, diff = _augment_one_policy(policy_text, pixels, sizes, device)
        record.update({
            f"augment_speedup{suffix}": measured.seconds("reference") / measured.seconds("library"),
            f"augment_max_abs_diff{suffix}": diff,
            f"augment_images_per_second{suffix}": sizes.augment_images / measured.seconds("library"),
            f"augment_reference_images_per_second{suffix}": sizes.augment_images / measured.seconds("reference"),
        })
        record["timings"][f"augment{suffix}"] = {"images": sizes.augment_images, "policy": policy_text,
                                                  "reference_workers": sizes.augment_workers, **measured.as_json()}
    return record
