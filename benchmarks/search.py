"""The search's benchmarks: S_pri per architecture against the per-image loop and the batched floor,
and one policy's scoring at the paper's scale."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ats.case.datasets import DatasetNotFoundError, build_dataset_file, load_dataset
from ats.case.models import build_model
from ats.case.normalisation import normalisation_constants
from ats.runtime.seeding import derive_seed, torch_generator
from ats.search.accuracy import accuracy_score
from ats.search.privacy import (
    default_chunk_size,
    interpolation_path,
    privacy_curves,
    uniform_noise,
)
from ats.transforms.pipeline import Preprocessor
from benchmarks import reference
from benchmarks.decisions import (
    decision_count,
    differing_decisions,
    per_sample_decisions,
    recorded_decisions,
    replayed_decisions,
)
from benchmarks.inputs import (
    IMAGE_SHAPE,
    PAPER_ACCURACY_BATCH,
    PAPER_ACCURACY_RUNS,
    PAPER_PRIVACY_IMAGES,
    PAPER_SEARCH_POLICIES,
    SEED,
    Sizes,
    arch_key,
    normalised_images,
    random_labels,
    seeded_model,
)
from benchmarks.timing import time_alternating

# S_pri is timed on every shipped architecture, each in the setting of the configs that use it:
# (input channels, classes) of its data set, and the paper config each model's timing stands for.
SPRI_DATASETS = {"cifar100": (3, 100), "fashion-mnist": (1, 10)}
SPRI_MODELS = {"ResNet20": "fashion-mnist", "ResNet20-4": "cifar100", "ConvNet": "cifar100",
               "ConvNet32": "fashion-mnist"}
PAPER_CONFIGS = {"cifar100-resnet20-4": ("cifar100", "ResNet20-4"), "cifar100-convnet": ("cifar100", "ConvNet"),
                 "fashion-mnist-resnet20": ("fashion-mnist", "ResNet20"),
                 "fashion-mnist-convnet": ("fashion-mnist", "ConvNet")}


def _realistic_batch_norms(model: torch.nn.Module, images: torch.Tensor, purpose: str) -> torch.nn.Module:
    """Give every BatchNorm trained-looking parameters and running statistics, then eval mode.

    γ ∈ [0.5, 1.5) and β ~ N(0, 0.1²) from a seeded generator; the running means and variances are
    those of ``images`` passing through the model (a cumulative average), so that eval-mode
    normalisation is neither the identity of a fresh model nor unrelated to the inputs.
    """
    generator = torch_generator(SEED, "bench", "batch-norms", purpose)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) + 0.5)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.1)
            norm.reset_running_stats()
            norm.momentum = None
        model.train()(images)
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


@functools.cache
def _fashion_mnist_test_images() -> np.ndarray | None:
    """The Fashion-MNIST test images (uint8 N×28×28×1) where :mod:`ats.case.datasets` finds them
    without downloading (the system data folder), or None."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            build_dataset_file("fashion-mnist", Path(folder) / "fashion-mnist.h5", download=False)
        except DatasetNotFoundError:
            return None
        return load_dataset(Path(folder) / "fashion-mnist.h5").test_images


def _spri_images(dataset: str, count: int, device: torch.device, purpose: str) -> tuple[torch.Tensor, str]:
    """``count`` model inputs of ``dataset``'s shape and normalisation, and where they came from.

    Real Fashion-MNIST test images (resized to 32×32 as the pipeline does; the same gray image in
    every channel for the CIFAR-shaped models), or, without the data, random pixels.
    """
    channels, _ = SPRI_DATASETS[dataset]
    pixels = _fashion_mnist_test_images()
    if pixels is None:
        return normalised_images(count, device, purpose)[:, :channels], "random pixels"
    generator = torch_generator(SEED, "bench", purpose, "indices")
    chosen = pixels[torch.randperm(len(pixels), generator=generator)[:count].numpy()]
    mean, std = normalisation_constants(dataset)
    preprocessor = Preprocessor(channels, mean, std, device)
    return preprocessor(np.repeat(chosen, channels, axis=-1), "plain", ()), "Fashion-MNIST test images"


def loop_order(decisions: list[torch.Tensor], images: int, bins: int) -> list[torch.Tensor]:
    """A record of the library's batched passes over ``images`` images, in the order the batch-1
    loop (:func:`benchmarks.reference.privacy_scores`) makes the same choices: per image, the
    reference pass on the image itself (the last path point), then the points 0 … ``bins``."""
    points = bins + 1
    by_sample = per_sample_decisions(decisions, images * points)
    return [choice for image in range(images)
            for sample in (image * points + bins, *range(image * points, (image + 1) * points))
            for choice in by_sample[sample]]


@dataclass(frozen=True)
class SpriCase:
    """A model with trained-looking BatchNorms and the seeded inputs S_pri is measured on."""

    model: torch.nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    noise: torch.Tensor
    dataset: str
    source: str  # where the images came from (real test images or random pixels)


def spri_case(arch: str, count: int, calibration_images: int, device: torch.device, variant: str = "") -> SpriCase:
    """``arch`` in its benchmark setting (:data:`SPRI_MODELS`) with ``count`` images, labels and noise,
    its BatchNorms calibrated on ``calibration_images`` other images.

    Every draw is seeded by the architecture and ``variant``; the empty variant is ``make bench``'s
    case, others (``benchmarks.flips``) give independent models and inputs of the same kind.
    """
    dataset = SPRI_MODELS[arch]
    channels, classes = SPRI_DATASETS[dataset]
    suffix = f"-{variant}" if variant else ""
    torch.manual_seed(derive_seed(SEED, "bench", "spri", arch + suffix))
    model = build_model(arch, classes, channels).to(device)
    calibration, _ = _spri_images(dataset, calibration_images, device, f"spri-calibration-{arch}{suffix}")
    model = _realistic_batch_norms(model, calibration, arch + suffix)
    images, source = _spri_images(dataset, count, device, f"spri-{arch}{suffix}")
    labels = torch.randint(0, classes, (count,), generator=torch_generator(SEED, "bench", "spri-labels", arch + suffix)
                           ).to(device)
    noise = torch.stack([uniform_noise(images.shape[1:],
                                       torch_generator(SEED, "bench", "spri-noise", arch + suffix, index),
                                       *normalisation_constants(dataset)) for index in range(count)]).to(device)
    return SpriCase(model, images, labels, noise, dataset, source)


def _float64_comparison(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                        bins: int, chunk_size: int) -> dict[str, Any]:
    """What separates float32 S_pri from float64 on the same model and inputs (``exact``).

    ``flips``: the ReLU units and max-pool windows (of ``decisions``) whose choice differs between
    the library's float32 and float64 passes. ``library`` and ``loop``: the float32 scores of the
    library and of the batch-1 loop, each replaying the float64 pass's choices
    (:mod:`benchmarks.decisions`; the loop's batch-1 passes take their sample's rows, the reference
    pass those of the image itself), so that only arithmetic separates them from ``exact``. All
    library passes use the timed chunk size, so that they run the same batches.
    """
    with recorded_decisions() as float64_choices:
        exact, _ = privacy_curves(model.double(), images.double(), labels, noise.double(), bins=bins,
                                  chunk_size=chunk_size)
    model.float()
    with recorded_decisions() as float32_choices:
        privacy_curves(model, images, labels, noise, bins=bins, chunk_size=chunk_size)
    with replayed_decisions(float64_choices):
        library, _ = privacy_curves(model, images, labels, noise, bins=bins, chunk_size=chunk_size)
    with replayed_decisions(loop_order(float64_choices, len(images), bins)):
        loop, _ = reference.privacy_scores(model, images, labels, noise, bins=bins)
    return {"exact": exact.cpu(), "library": library.double().cpu(), "loop": loop,
            "flips": differing_decisions(float32_choices, float64_choices),
            "decisions": decision_count(float64_choices)}


def _spri_one_model(arch: str, count: int, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The S_pri figures of one model on ``count`` images (keys suffixed with the model).

    Besides the timings: the agreement with the batch-1 loop in float32, and the float32 error of
    the library and of the loop against the library in float64 on the same model and inputs.
    """
    key = arch_key(arch)
    case = spri_case(arch, count, sizes.spri_calibration_images, device)
    model, images, labels, noise, dataset, source = (case.model, case.images, case.labels, case.noise, case.dataset,
                                                     case.source)
    path = sizes.bins + 1
    points = interpolation_path(images, noise, sizes.bins)
    point_labels = labels.repeat_interleave(path)
    # Sized once, as score_shard does for a whole shard of policies.
    chunk_size = default_chunk_size(model, images.shape[1:])
    measured = time_alternating({
        "library": lambda: privacy_curves(model, images, labels, noise, bins=sizes.bins, chunk_size=chunk_size),
        "reference": lambda: reference.privacy_scores(model, images, labels, noise, bins=sizes.bins),
        "floor": lambda: reference.batched_forward_backward(model, points, point_labels),
    }, device, sizes.rounds, warmups={
        # The batched sides warm up on the timed shapes: oneDNN and cuDNN build their kernels per
        # shape (per group count for the grouped per-sample convolutions), which one image would
        # leave to the first timed round. The batch-1 reference sees the same shapes either way.
        "reference": lambda: reference.privacy_scores(model, images[:1], labels[:1], noise[:1], bins=sizes.bins),
    })
    accuracy_images, _ = _spri_images(dataset, sizes.accuracy_batch, device, f"sacc-{arch}")
    accuracy = time_alternating({"accuracy": lambda: accuracy_score(model, accuracy_images)}, device, 1)
    library_scores, library_curves = (t.detach().double().cpu() for t in measured.results["library"])
    reference_scores, reference_curves = measured.results["reference"]
    same_choices = _float64_comparison(model, images, labels, noise, sizes.bins, chunk_size)
    exact_scores = same_choices["exact"]
    library_s, reference_s, floor_s = (measured.seconds(side) for side in ("library", "reference", "floor"))
    return {
        f"spri_speedup_{key}": reference_s / library_s,
        f"spri_floor_ratio_{key}": library_s / floor_s,
        f"spri_ceiling_{key}": reference_s / floor_s,
        f"spri_speedup_{key}_cpu_time": measured.cpu_seconds("reference") / measured.cpu_seconds("library"),
        f"spri_floor_ratio_{key}_cpu_time": measured.cpu_seconds("library") / measured.cpu_seconds("floor"),
        f"spri_max_abs_diff_{key}": float((library_scores - reference_scores).abs().max()),
        f"spri_curve_max_abs_diff_{key}": float((library_curves - reference_curves).abs().max()),
        f"spri_max_abs_diff_same_choices_{key}": float((same_choices["library"] - same_choices["loop"]).abs().max()),
        f"spri_float32_error_{key}": float((library_scores - exact_scores).abs().max()),
        f"spri_float32_error_loop_{key}": float((reference_scores - exact_scores).abs().max()),
        f"spri_float32_arithmetic_error_{key}": float((same_choices["library"] - exact_scores).abs().max()),
        f"spri_float32_arithmetic_error_loop_{key}": float((same_choices["loop"] - exact_scores).abs().max()),
        f"spri_decision_flips_{key}": same_choices["flips"],
        f"spri_decisions_{key}": same_choices["decisions"],
        f"spri_seconds_per_image_{key}": library_s / count,
        f"spri_reference_seconds_per_image_{key}": reference_s / count,
        f"sacc_seconds_per_image_{key}": accuracy.seconds("accuracy") / sizes.accuracy_batch,
        "timings": {f"spri_{key}": {"images": count, "bins": sizes.bins, "dataset": dataset, "inputs": source,
                                    **measured.as_json()}},
    }


def bench_spri(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """S_pri per model: library ``privacy_curves`` vs the per-image loop vs the batched floor.

    The floor is one plain forward+backward of all ``N·(bins + 1)`` interpolation points (the
    library's own ``interpolation_path``): per-sample gradients cannot take less arithmetic, so
    loop/floor (``spri_ceiling_*``) bounds the speed-up. ``spri_floor_ratio``, ``spri_max_abs_diff``
    and ``spri_float32_error`` are the worst over the models. Each paper config's search gets its
    extrapolated hours: 1600 candidates × (S_pri of its privacy images + its S_acc runs).
    """
    record: dict[str, Any] = {"timings": {}}
    for arch, count in sizes.spri_images.items():
        results = _spri_one_model(arch, count, sizes, device)
        record["timings"].update(results.pop("timings"))
        record.update(results)
    keys = [arch_key(arch) for arch in sizes.spri_images]
    for figure in ("spri_max_abs_diff", "spri_max_abs_diff_same_choices", "spri_floor_ratio", "spri_float32_error",
                   "spri_float32_arithmetic_error"):
        record[figure] = max(record[f"{figure}_{key}"] for key in keys)
    for config, (dataset, arch) in PAPER_CONFIGS.items():
        if arch in sizes.spri_images:
            key = arch_key(arch)
            seconds = (PAPER_PRIVACY_IMAGES[dataset] * record[f"spri_seconds_per_image_{key}"]
                       + PAPER_ACCURACY_RUNS * PAPER_ACCURACY_BATCH[dataset] * record[f"sacc_seconds_per_image_{key}"])
            record[f"search_1600_hours_{arch_key(config)}"] = seconds * PAPER_SEARCH_POLICIES / 3600
    record["search_1600_hours_method"] = (
        f"{PAPER_SEARCH_POLICIES} × (privacy images × S_pri seconds per image + {PAPER_ACCURACY_RUNS} S_acc "
        f"runs × their images × S_acc seconds per image, timed on {sizes.accuracy_batch} images) of the config's "
        f"model, as timed here (bins {sizes.bins}; each model in one setting, see timings: the Fashion-MNIST "
        f"ConvNet is timed with the CIFAR-100 ConvNet's 3 channels and 100 classes); augmentation and training "
        f"not included")
    return record


def bench_policy(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Seconds to score one policy at the paper's scale on ResNet20-4, from a measured fraction.

    One policy costs S_pri on 100 classes × 5 images on the tiny-data model and 10 S_acc runs of
    about 63 images on the untrained model (docs/original-code.md §5, §6). Both are timed here (after a warm-up) on
    ``policy_privacy_images`` images and ``policy_accuracy_runs`` runs, then scaled linearly.
    """
    model = seeded_model("ResNet20-4", device, "policy")
    count = sizes.policy_privacy_images
    images = normalised_images(count, device, "policy")
    labels = random_labels(count, device, "policy")
    noise = normalised_images(count, device, "policy-noise")
    accuracy_images = normalised_images(sizes.accuracy_batch, device, "policy-accuracy")

    chunk_size = default_chunk_size(model, IMAGE_SHAPE)  # once per shard in score_shard
    privacy = time_alternating(
        {"privacy": lambda: privacy_curves(model, images, labels, noise, bins=sizes.bins, chunk_size=chunk_size)},
        device, 1)
    accuracy = time_alternating(
        {"accuracy": lambda: accuracy_score(model, accuracy_images)}, device, sizes.policy_accuracy_runs)
    paper_images = PAPER_PRIVACY_IMAGES["cifar100"]
    seconds = (paper_images * privacy.seconds("privacy") / count
               + PAPER_ACCURACY_RUNS * accuracy.seconds("accuracy"))
    return {
        "policy_seconds_resnet20_4": seconds,
        "policy_seconds_resnet20_4_method": (
            f"extrapolated: S_pri timed on {count} of {paper_images} images (bins {sizes.bins}, "
            f"library default chunking) and scaled x{paper_images / count:g}; S_acc timed as the "
            f"median of {sizes.policy_accuracy_runs} run(s) of {sizes.accuracy_batch} images and scaled to "
            f"{PAPER_ACCURACY_RUNS} runs; ResNet20-4, 100 classes; augmentation not included"),
        "search_1600_policies_hours": seconds * PAPER_SEARCH_POLICIES / 3600,
        "timings": {"policy_privacy": {"images": count, **privacy.as_json()},
                    "policy_accuracy": {"images": sizes.accuracy_batch, **accuracy.as_json()}},
    }
