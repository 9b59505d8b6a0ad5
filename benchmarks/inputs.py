"""What every benchmark works on: the seeded models, images and labels, and how much work each does."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ats.case.models import build_model
from ats.runtime.seeding import derive_seed, torch_generator

SEED = 23333
NUM_CLASSES = 100  # the paper's CIFAR-100 setting
IMAGE_SHAPE = (3, 32, 32)
# CIFAR-10 constants, which the original used for CIFAR-100 (docs/original-code.md §2.6).
MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)


# The paper's scale of one policy's scoring (docs/original-code.md §5.1, §6.2) and of the search, per data set:
# 5 privacy images per class; S_acc runs of the distinct labels among 100 consecutive test images
# (about 63 for CIFAR-100, all 10 for Fashion-MNIST).
PAPER_PRIVACY_IMAGES = {"cifar100": 100 * 5, "fashion-mnist": 10 * 5}
PAPER_ACCURACY_RUNS = 10
PAPER_ACCURACY_BATCH = {"cifar100": 63, "fashion-mnist": 10}
PAPER_SEARCH_POLICIES = 1600


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does; chosen so that the CPU suite takes about 10 minutes on 2 AVX2 cores.

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


def arch_key(arch: str) -> str:
    """``"ResNet20-4"`` → ``"resnet20_4"``, the spelling of architectures in JSON keys."""
    return arch.lower().replace("-", "_")


def seeded_model(arch: str, device: torch.device, purpose: str) -> torch.nn.Module:
    """A freshly initialised model in eval mode; weights seeded by ``(arch, purpose)``.

    Untrained weights cost exactly as much as trained ones, and the agreement checks only need
    both sides to see the same model.
    """
    torch.manual_seed(derive_seed(SEED, "bench", purpose, arch))
    return build_model(arch, NUM_CLASSES, IMAGE_SHAPE[0]).to(device).eval()


def normalised_images(count: int, device: torch.device, purpose: str) -> torch.Tensor:
    """Random pixels in [0, 1], normalised with the CIFAR constants, ``(count, 3, 32, 32)``."""
    pixels = torch.rand((count, *IMAGE_SHAPE), generator=torch_generator(SEED, "bench", purpose))
    mean = torch.tensor(MEAN).reshape(1, -1, 1, 1)
    std = torch.tensor(STD).reshape(1, -1, 1, 1)
    return ((pixels - mean) / std).to(device)


def random_labels(count: int, device: torch.device, purpose: str) -> torch.Tensor:
    generator = torch_generator(SEED, "bench", purpose, "labels")
    return torch.randint(0, NUM_CLASSES, (count,), generator=generator).to(device)
