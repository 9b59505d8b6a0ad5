"""``make bench``: time the library's fast paths against the straightforward references.

Every figure is a ratio measured in one run, on the same inputs, against a reference in
:mod:`benchmarks.reference` that follows the original code's structure. Each benchmark times the
library and the reference in alternating rounds (after a warm-up), so that load from other
processes on a shared machine hits both sides alike, and reports the median of the rounds.

The table goes to stdout and everything (machine, device, versions, date, load average, sizes,
every round's wall and CPU time, targets and whether they are met) to
``results/benchmarks/bench.json``.

Usage::

    python -m benchmarks.run [--device cpu|cuda] [--quick] [--only spri attack ...] [--output PATH]
                             [--threads N]

``--quick`` runs every benchmark on tiny sizes with one thread in a few seconds; the smoke test
uses it to check the keys and the agreement with the references. Its timings mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ats.attack.configs import ATTACKS
from ats.attack.reconstruct import observed_gradients, reconstruct
from ats.case.datasets import DatasetNotFoundError, build_dataset_file, load_dataset
from ats.case.models import build_model
from ats.case.normalisation import normalisation_constants
from ats.policies import parse_policy
from ats.runtime.atomic import write_json
from ats.runtime.memory import retain_freed_host_memory
from ats.runtime.seeding import derive_seed, torch_generator
from ats.search.accuracy import accuracy_score
from ats.search.privacy import (
    default_chunk_size,
    interpolation_path,
    privacy_curves,
    uniform_noise,
)
from ats.transforms.pipeline import AugmentationDraw, Preprocessor, sample_draw
from benchmarks import reference

DEFAULT_OUTPUT = Path("results/benchmarks/bench.json")
BENCHMARKS = ("spri", "attack", "augment", "policy")
SEED = 23333
NUM_CLASSES = 100  # the paper's CIFAR-100 setting
IMAGE_SHAPE = (3, 32, 32)
# CIFAR-10 constants, which the original used for CIFAR-100 (docs/original-code.md §2.6).
MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
# The README's example hybrid policy, and a hybrid that uses each of the 13 transforms of the
# 50-op list once (rotate, shearY, equalize / posterize, solarize, invert / color, brightness,
# sharpness / autocontrast, contrast, translateX, translateY).
BENCH_POLICY = "3-1-7+43-18-18"
ALL_TRANSFORMS_POLICY = "2-6-9+11-37-0+12-13-14+8-1-21-7"
AUGMENT_BATCH = 128  # the training batch size of the original recipe
# The paper's scale of one policy's scoring (docs/original-code.md §5.1, §6.2) and of the search, per data set:
# 5 privacy images per class; S_acc runs of the distinct labels among 100 consecutive test images
# (about 63 for CIFAR-100, all 10 for Fashion-MNIST).
PAPER_PRIVACY_IMAGES = {"cifar100": 100 * 5, "fashion-mnist": 10 * 5}
PAPER_ACCURACY_RUNS = 10
PAPER_ACCURACY_BATCH = {"cifar100": 63, "fashion-mnist": 10}
PAPER_SEARCH_POLICIES = 1600
# S_pri is timed on every shipped architecture, each in the setting of the configs that use it:
# (input channels, classes) of its data set, and the paper config each model's timing stands for.
SPRI_DATASETS = {"cifar100": (3, 100), "fashion-mnist": (1, 10)}
SPRI_MODELS = {"ResNet20": "fashion-mnist", "ResNet20-4": "cifar100", "ConvNet": "cifar100",
               "ConvNet32": "fashion-mnist"}
PAPER_CONFIGS = {"cifar100-resnet20-4": ("cifar100", "ResNet20-4"), "cifar100-convnet": ("cifar100", "ConvNet"),
                 "fashion-mnist-resnet20": ("fashion-mnist", "ResNet20"),
                 "fashion-mnist-convnet": ("fashion-mnist", "ConvNet")}

# Targets of the issue, per device kind: (key, comparison, bound).
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "cpu": [
        ("spri_speedup_resnet20", ">=", 2.5),
        ("spri_speedup_resnet20_4", ">=", 1.4),
        ("spri_floor_ratio", "<=", 1.3),
        ("attack_speedup", ">=", 1.1),
        ("augment_speedup", ">=", 2.0),
        ("spri_max_abs_diff", "<=", 1e-4),
        ("spri_float32_error", "<=", 2e-5),
        ("attack_max_abs_diff", "<=", 1e-4),
    ],
    "cuda": [
        ("spri_speedup_resnet20", ">=", 30.0),
        ("spri_speedup_resnet20_4", ">=", 30.0),
        ("spri_floor_ratio", "<=", 2.0),
        ("attack_speedup", ">=", 20.0),
        ("augment_speedup", ">=", 10.0),
        ("spri_max_abs_diff", "<=", 1e-4),
        ("spri_float32_error", "<=", 2e-5),
        ("attack_max_abs_diff", "<=", 1e-4),
        ("search_1600_policies_hours", "<=", 1.0),
    ],
}


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; chosen so that the CPU suite stays under 10 minutes.

    ``rounds``: timed rounds after the warm-up (the median is reported). ``spri_images``: images
    per model for S_pri (each costs the reference ``bins + 2`` batch-1 passes). ``attack_archs``:
    the victims, the first one giving the headline ``attack_speedup``; ``attack_check_targets`` of
    ``attack_check_arch`` are re-run in float64 for the agreement. ``augment_workers``: the
    reference DataLoader's workers (the original used 4). ``policy_privacy_images`` and
    ``policy_accuracy_runs`` (of ``accuracy_batch`` images): the measured fraction of one policy.
    ``spri_calibration_images``: the images whose statistics the S_pri models' BatchNorms get.
    """

    rounds: int
    spri_images: dict[str, int]
    bins: int
    attack_archs: tuple[str, ...]
    attack_batch: int
    attack_iterations: int
    attack_check_targets: int
    augment_images: int
    augment_workers: int
    policy_privacy_images: int
    policy_accuracy_runs: int
    attack_check_arch: str = "ResNet20"
    spri_calibration_images: int = 32
    accuracy_batch: int = PAPER_ACCURACY_BATCH["cifar100"]


SIZES: dict[str, Sizes] = {
    "cpu": Sizes(rounds=5, spri_images={"ResNet20": 8, "ResNet20-4": 4, "ConvNet": 2, "ConvNet32": 4},
                 bins=20,
                 attack_archs=("ResNet20-4", "ResNet20"), attack_batch=32, attack_iterations=2,
                 attack_check_targets=4, augment_images=2048,
                 augment_workers=min(4, len(os.sched_getaffinity(0))),
                 policy_privacy_images=5, policy_accuracy_runs=2),
    "cuda": Sizes(rounds=5, spri_images={"ResNet20": 64, "ResNet20-4": 32, "ConvNet": 32, "ConvNet32": 64},
                  bins=20,
                  attack_archs=("ResNet20-4", "ResNet20"), attack_batch=64, attack_iterations=10,
                  attack_check_targets=8, augment_images=20_000, augment_workers=4,
                  policy_privacy_images=100, policy_accuracy_runs=10),
    "quick": Sizes(rounds=1, spri_images={"ResNet20": 1, "ResNet20-4": 1, "ConvNet": 1, "ConvNet32": 1},
                   bins=2,
                   attack_archs=("ResNet20",), attack_batch=2, attack_iterations=1,
                   attack_check_targets=2, augment_images=16, augment_workers=0,
                   policy_privacy_images=1, policy_accuracy_runs=1, accuracy_batch=4),
}


# ---------------------------------------------------------------------------------------------
# Timing


@dataclass
class Measurement:
    """Per-round wall and process CPU seconds of each timed function, and its last result.

    On a machine shared with other jobs the wall time of a round can jump several-fold. The CPU
    time of this process does not count time spent waiting for a core, so with one thread it
    stays steady and shows the work ratio; with more threads it also counts OpenMP threads
    spinning for a descheduled partner. It does not count DataLoader worker processes.
    """

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def seconds(self, name: str) -> float:
        """Median wall seconds of ``name``."""
        return float(statistics.median(self.wall[name]))

    def cpu_seconds(self, name: str) -> float:
        """Median process CPU seconds of ``name``."""
        return float(statistics.median(self.cpu[name]))

    def as_json(self) -> dict[str, dict[str, list[float]]]:
        return {"seconds": self.wall, "cpu_seconds": self.cpu}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(functions: dict[str, Callable[[], Any]], device: torch.device, rounds: int,
                     warmups: dict[str, Callable[[], Any]] | None = None, warmup_calls: int = 1) -> Measurement:
    """Warm every function up, then time ``rounds`` rounds that call each function in turn.

    The warm-up (``warmup_calls`` calls of ``warmups[name]``, a cheaper version of the same work
    with the same tensor shapes, or else of the function itself) pays for one-off costs: allocator
    growth, oneDNN primitive creation, CUDA kernel loading and cuDNN autotuning. Alternating
    (rather than timing all rounds of one function, then the next) spreads load from other
    processes over both sides of a ratio.
    """
    for _ in range(warmup_calls):
        for name, function in functions.items():
            (warmups or {}).get(name, function)()
    measurement = Measurement({name: [] for name in functions}, {name: [] for name in functions})
    for _ in range(rounds):
        for name, function in functions.items():
            _synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            measurement.results[name] = function()
            _synchronize(device)
            measurement.wall[name].append(time.perf_counter() - wall)
            measurement.cpu[name].append(time.process_time() - cpu)
    return measurement


# ---------------------------------------------------------------------------------------------
# Inputs


def _key(arch: str) -> str:
    """``"ResNet20-4"`` → ``"resnet20_4"``, the spelling of architectures in JSON keys."""
    return arch.lower().replace("-", "_")


def _model(arch: str, device: torch.device, purpose: str) -> torch.nn.Module:
    """A freshly initialised model in eval mode; weights seeded by ``(arch, purpose)``.

    Untrained weights cost exactly as much as trained ones, and the agreement checks only need
    both sides to see the same model.
    """
    torch.manual_seed(derive_seed(SEED, "bench", purpose, arch))
    return build_model(arch, NUM_CLASSES, IMAGE_SHAPE[0]).to(device).eval()


def _normalised_images(count: int, device: torch.device, purpose: str) -> torch.Tensor:
    """Random pixels in [0, 1], normalised with the CIFAR constants, ``(count, 3, 32, 32)``."""
    pixels = torch.rand((count, *IMAGE_SHAPE), generator=torch_generator(SEED, "bench", purpose))
    mean = torch.tensor(MEAN).reshape(1, -1, 1, 1)
    std = torch.tensor(STD).reshape(1, -1, 1, 1)
    return ((pixels - mean) / std).to(device)


def _labels(count: int, device: torch.device, purpose: str) -> torch.Tensor:
    generator = torch_generator(SEED, "bench", purpose, "labels")
    return torch.randint(0, NUM_CLASSES, (count,), generator=generator).to(device)


# ---------------------------------------------------------------------------------------------
# Benchmarks


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
        return _normalised_images(count, device, purpose)[:, :channels], "random pixels"
    generator = torch_generator(SEED, "bench", purpose, "indices")
    chosen = pixels[torch.randperm(len(pixels), generator=generator)[:count].numpy()]
    mean, std = normalisation_constants(dataset)
    preprocessor = Preprocessor(channels, mean, std, device)
    return preprocessor(np.repeat(chosen, channels, axis=-1), "plain", ()), "Fashion-MNIST test images"


def _spri_one_model(arch: str, count: int, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The S_pri figures of one model on ``count`` images (keys suffixed with the model).

    Besides the timings: the agreement with the batch-1 loop in float32, and the float32 error of
    the library and of the loop against the library in float64 on the same model and inputs.
    """
    key, dataset = _key(arch), SPRI_MODELS[arch]
    channels, classes = SPRI_DATASETS[dataset]
    torch.manual_seed(derive_seed(SEED, "bench", "spri", arch))
    model = build_model(arch, classes, channels).to(device)
    calibration, _ = _spri_images(dataset, sizes.spri_calibration_images, device, f"spri-calibration-{arch}")
    model = _realistic_batch_norms(model, calibration, arch)
    images, source = _spri_images(dataset, count, device, f"spri-{arch}")
    labels = torch.randint(0, classes, (count,), generator=torch_generator(SEED, "bench", "spri-labels", arch)
                           ).to(device)
    noise = torch.stack([uniform_noise(images.shape[1:], torch_generator(SEED, "bench", "spri-noise", arch, index),
                                       *normalisation_constants(dataset)) for index in range(count)]).to(device)
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
    exact_scores, _ = privacy_curves(model.double(), images.double(), labels, noise.double(), bins=sizes.bins)
    exact_scores = exact_scores.cpu()
    model.float()
    library_s, reference_s, floor_s = (measured.seconds(side) for side in ("library", "reference", "floor"))
    return {
        f"spri_speedup_{key}": reference_s / library_s,
        f"spri_floor_ratio_{key}": library_s / floor_s,
        f"spri_ceiling_{key}": reference_s / floor_s,
        f"spri_speedup_{key}_cpu_time": measured.cpu_seconds("reference") / measured.cpu_seconds("library"),
        f"spri_floor_ratio_{key}_cpu_time": measured.cpu_seconds("library") / measured.cpu_seconds("floor"),
        f"spri_max_abs_diff_{key}": float((library_scores - reference_scores).abs().max()),
        f"spri_curve_max_abs_diff_{key}": float((library_curves - reference_curves).abs().max()),
        f"spri_float32_error_{key}": float((library_scores - exact_scores).abs().max()),
        f"spri_float32_error_loop_{key}": float((reference_scores - exact_scores).abs().max()),
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
    keys = [_key(arch) for arch in sizes.spri_images]
    for figure in ("spri_max_abs_diff", "spri_floor_ratio", "spri_float32_error"):
        record[figure] = max(record[f"{figure}_{key}"] for key in keys)
    for config, (dataset, arch) in PAPER_CONFIGS.items():
        if arch in sizes.spri_images:
            key = _key(arch)
            seconds = (PAPER_PRIVACY_IMAGES[dataset] * record[f"spri_seconds_per_image_{key}"]
                       + PAPER_ACCURACY_RUNS * PAPER_ACCURACY_BATCH[dataset] * record[f"sacc_seconds_per_image_{key}"])
            record[f"search_1600_hours_{_key(config)}"] = seconds * PAPER_SEARCH_POLICIES / 3600
    record["search_1600_hours_method"] = (
        f"{PAPER_SEARCH_POLICIES} × (privacy images × S_pri seconds per image + {PAPER_ACCURACY_RUNS} S_acc "
        f"runs × their images × S_acc seconds per image, timed on {sizes.accuracy_batch} images) of the config's "
        f"model, as timed here (bins {sizes.bins}; each model in one setting, see timings: the Fashion-MNIST "
        f"ConvNet is timed with the CIFAR-100 ConvNet's 3 channels and 100 classes); augmentation and training "
        f"not included")
    return record


class _AttackPair:
    """The library's batched attack and the one-at-a-time reference on the same targets and starts."""

    def __init__(self, model: torch.nn.Module, targets: torch.Tensor, labels: torch.Tensor, arch: str) -> None:
        self.model = model
        self.labels = labels
        self.arch = arch
        self.observed = observed_gradients(model, targets, labels)
        dtype, device = targets.dtype, targets.device
        self.mean = torch.tensor(MEAN, dtype=dtype, device=device)
        self.std = torch.tensor(STD, dtype=dtype, device=device)

    def _generators(self) -> list[torch.Generator]:
        """Fresh per-target CPU generators, so that both sides (and every call) start from the same images."""
        return [torch_generator(SEED, "bench", "attack", self.arch, index) for index in range(len(self.labels))]

    def library(self, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
        config = ATTACKS["inversed"].with_iterations(iterations)
        result = reconstruct(self.model, self.observed, self.labels, config, IMAGE_SHAPE, MEAN, STD,
                             self._generators())
        return result.images, result.final_cost

    def reference(self, iterations: int, targets: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``targets`` attacks (default: all), one after the other."""
        config = ATTACKS["inversed"].with_iterations(iterations)
        images, scores = [], []
        for index, generator in enumerate(self._generators()[:targets]):
            initial = torch.randn((config.restarts, *IMAGE_SHAPE), generator=generator, dtype=self.mean.dtype)
            image, score = reference.attack_one_image(
                self.model, [g[index] for g in self.observed], self.labels[index:index + 1],
                initial.to(self.mean.device), config, self.mean, self.std)
            images.append(image)
            scores.append(score)
        return torch.cat(images), torch.stack(scores)


def _attack_one_model(arch: str, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """The timed float32 attack figures of one victim model (keys suffixed with the model)."""
    key = _key(arch)
    iterations = sizes.attack_iterations
    targets = _normalised_images(sizes.attack_batch, device, f"attack-{arch}")
    labels = _labels(sizes.attack_batch, device, f"attack-{arch}")
    pair = _AttackPair(_model(arch, device, "attack"), targets, labels, arch)
    measured = time_alternating(
        {"library": lambda: pair.library(iterations), "reference": lambda: pair.reference(iterations)},
        device, sizes.rounds,
        warmups={"library": lambda: pair.library(1), "reference": lambda: pair.reference(1, targets=1)})
    float32_diff = (measured.results["library"][0] - measured.results["reference"][0]).abs()
    return {
        f"attack_speedup_{key}": measured.seconds("reference") / measured.seconds("library"),
        f"attack_speedup_{key}_cpu_time": measured.cpu_seconds("reference") / measured.cpu_seconds("library"),
        f"attack_float32_max_abs_diff_{key}": float(float32_diff.max()),
        f"attack_float32_pixels_differing_{key}": float((float32_diff > 1e-4).double().mean()),
        f"attack_seconds_per_attack_iteration_{key}": (
            measured.seconds("library") / (sizes.attack_batch * iterations)),
        "timings": {f"attack_{key}": {"batch": sizes.attack_batch, "iterations": iterations,
                                      **measured.as_json()}},
    }


def bench_attack(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Inverting Gradients: one batched ``reconstruct`` vs the reference attacking one image at a time.

    Agreement: the attack steps along the *sign* of the image gradient, so a pixel whose gradient
    is within float32 rounding of zero can step the other way (a difference of 2·lr = 0.2) in two
    correct implementations. ``attack_max_abs_diff`` is therefore measured in float64, with the
    same starts and iterations, on the first ``attack_check_targets`` targets of
    ``attack_check_arch`` (float64 convolutions take a slow path on the CPU, so not on the wide
    model); the float32 differences of every timed run are recorded beside it.
    """
    record: dict[str, Any] = {"timings": {}}
    for arch in sizes.attack_archs:
        results = _attack_one_model(arch, sizes, device)
        record["timings"].update(results.pop("timings"))
        record.update(results)

    arch, checked, iterations = sizes.attack_check_arch, sizes.attack_check_targets, sizes.attack_iterations
    exact = _AttackPair(_model(arch, device, "attack").double(),
                        _normalised_images(checked, device, f"attack-{arch}").double(),
                        _labels(checked, device, f"attack-{arch}"), arch)
    (images, costs), (reference_images, reference_costs) = exact.library(iterations), exact.reference(iterations)
    headline = _key(sizes.attack_archs[0])
    record.update({
        "attack_speedup": record[f"attack_speedup_{headline}"],
        "attack_speedup_arch": sizes.attack_archs[0],
        "attack_max_abs_diff": float((images - reference_images).abs().max()),
        "attack_final_cost_max_abs_diff": float((costs - reference_costs).abs().max()),
        "attack_max_abs_diff_method": (
            f"float64, {arch}, first {checked} targets, same starts and {iterations} iterations as the "
            f"timed float32 runs (sign steps amplify float32 rounding; see attack_float32_* keys)"),
    })
    return record


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


def bench_policy(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Seconds to score one policy at the paper's scale on ResNet20-4, from a measured fraction.

    One policy costs S_pri on 100 classes × 5 images on the tiny-data model and 10 S_acc runs of
    about 63 images on the untrained model (docs/original-code.md §5, §6). Both are timed here (after a warm-up) on
    ``policy_privacy_images`` images and ``policy_accuracy_runs`` runs, then scaled linearly.
    """
    model = _model("ResNet20-4", device, "policy")
    count = sizes.policy_privacy_images
    images = _normalised_images(count, device, "policy")
    labels = _labels(count, device, "policy")
    noise = _normalised_images(count, device, "policy-noise")
    accuracy_images = _normalised_images(sizes.accuracy_batch, device, "policy-accuracy")

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


RUNNERS: dict[str, Callable[[Sizes, torch.device], dict[str, Any]]] = {
    "spri": bench_spri, "attack": bench_attack, "augment": bench_augment, "policy": bench_policy,
}


# ---------------------------------------------------------------------------------------------
# Report


def _cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and its vector extensions (AVX2, AVX-512, AMX decide CPU conv speed)."""
    model, flags = platform.processor() or "unknown", []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = sorted(flag for flag in line.split(":", 1)[1].split()
                               if flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"))
                break
    return model, flags


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on; the load average flags a machine shared with other work."""
    cpu_model, cpu_flags = _cpu_info()
    description: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_flags": cpu_flags,
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        description["gpu"] = properties.name
        description["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
    return description


def evaluate_targets(record: dict[str, Any], device_kind: str) -> dict[str, dict[str, Any]]:
    """Each target of the issue that this run measured: the bound, the value and whether it is met."""
    checks = {}
    for key, comparison, bound in TARGETS[device_kind]:
        if key in record:
            value = record[key]
            met = value >= bound if comparison == ">=" else value <= bound
            checks[key] = {"target": f"{comparison} {bound:g}", "value": value, "met": bool(met)}
    return checks


def format_table(record: dict[str, Any]) -> str:
    """Every numeric result with its target, if it has one, as an aligned text table."""
    targets = record.get("targets", {})
    rows = [("key", "value", "target", "met")]
    for key in sorted(record):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        target = targets.get(key)
        rows.append((key, f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.3f}",
                     target["target"] if target else "", ("yes" if target["met"] else "NO") if target else ""))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def contention_warning(record: dict[str, Any]) -> str | None:
    """A warning when other processes competed for the cores this run used, else ``None``.

    With more runnable threads than cores, OpenMP threads that spin-wait for a descheduled
    partner make multi-threaded runs of small operations (the batch-1 references, the batched
    augmentation) several times slower, erratically, so the ratios of such a run are unreliable.
    """
    cores = record["machine"]["cpu_cores_usable"]
    load = max(record["load_average_start"][0], record["load_average_end"][0])
    if record["device"] != "cpu" or load <= cores + 1:  # this run alone keeps `threads` (+ workers) busy
        return None
    threads = record["machine"]["torch_threads"]
    advice = "" if threads == 1 else " Rerun when the machine is idle, or compare with --threads 1."
    return (f"the 1-minute load average reached {load:.1f} on {cores} usable cores: other processes competed "
            f"for the CPU, so timings are noisy{' and multi-threaded ratios unreliable' if threads > 1 else ''}."
            f"{advice}")


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, timings meaningless")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice, one per core; 1 with --quick)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (``None``: unchanged), then restore the previous setting.

    ``--quick`` uses one thread: on a machine shared with other jobs, OpenMP threads that
    spin-wait for a busy core can make a two-thread run many times slower, and the smoke test must
    stay fast; its timings mean nothing anyway.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, print the table, write the JSON and return its content."""
    arguments = parse_arguments(argv)
    if arguments.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    threads = arguments.threads if arguments.threads is not None else (1 if arguments.quick else None)
    # As in the workflow's stages, for every side of every ratio alike.
    retain_freed_host_memory()
    with torch_threads(threads):
        return _run(arguments, torch.device(arguments.device))


def _run(arguments: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    sizes = SIZES["quick" if arguments.quick else device.type]
    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "torch_version": torch.__version__,
        "machine": machine_description(device),
        "quick": arguments.quick,
        "benchmarks": [name for name in BENCHMARKS if name in arguments.only],
        "sizes": asdict(sizes),
        "load_average_start": os.getloadavg(),
        "timings": {},
    }
    started = time.perf_counter()
    for name in record["benchmarks"]:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        benchmark_started = time.perf_counter()
        results = RUNNERS[name](sizes, device)
        record["timings"].update(results.pop("timings"))
        record["timings"][f"{name}_wall_seconds"] = time.perf_counter() - benchmark_started
        record.update(results)
        print(f"[bench] {name} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    record["timings"]["total_wall_seconds"] = time.perf_counter() - started
    record["load_average_end"] = os.getloadavg()
    record["targets"] = evaluate_targets(record, device.type)
    warning = contention_warning(record)
    if warning:
        record["warning"] = warning
    write_json(arguments.output, record)
    print(format_table(record))
    if warning:
        print(f"\nWARNING: {warning}")
    print(f"\nwritten to {arguments.output}")
    return record


if __name__ == "__main__":
    main()
