"""The attack's benchmark: one batched Inverting Gradients reconstruction against one image at a time."""

from __future__ import annotations

from typing import Any

import torch

from ats.attack.configs import ATTACKS
from ats.attack.reconstruct import observed_gradients, reconstruct
from ats.runtime.seeding import torch_generator
from benchmarks import reference
from benchmarks.inputs import (
    IMAGE_SHAPE,
    MEAN,
    SEED,
    STD,
    Sizes,
    arch_key,
    normalised_images,
    random_labels,
    seeded_model,
)
from benchmarks.timing import time_alternating


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
    key = arch_key(arch)
    iterations = sizes.attack_iterations
    targets = normalised_images(sizes.attack_batch, device, f"attack-{arch}")
    labels = random_labels(sizes.attack_batch, device, f"attack-{arch}")
    pair = _AttackPair(seeded_model(arch, device, "attack"), targets, labels, arch)
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
    exact = _AttackPair(seeded_model(arch, device, "attack").double(),
                        normalised_images(checked, device, f"attack-{arch}").double(),
                        random_labels(checked, device, f"attack-{arch}"), arch)
    (images, costs), (reference_images, reference_costs) = exact.library(iterations), exact.reference(iterations)
    headline = arch_key(sizes.attack_archs[0])
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
