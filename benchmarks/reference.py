"""Straightforward references that follow the structure of the original ATS code.

Each benchmark times a library fast path against one of these, on the same inputs in the same run.
They are written from the structure of the original scripts (``benchmark/search_transform_attack.py``,
``inversefed/reconstruction_algorithms.py``, ``benchmark/comm.py``) and deliberately keep the
choices that make the original slow, because those choices are what the speed-ups are measured
against:

* **S_pri**: one forward+backward at batch size 1 per interpolation point, a per-tensor
  ``cosine_similarity`` and a host sync (``.item()``) for every value, and a Python trapezoid sum.
* **Attack**: one image at a time, an Adam closure that rebuilds the dummy gradient with
  ``create_graph=True`` and backpropagates the cost to the image *and* to the model parameters
  (the original never freezes them), a ``MultiStepLR`` and a box clamp after each step, and a
  final ``_score_trial``-style matching cost.
* **Augmentation**: a ``Dataset`` that turns one uint8 array into a PIL image, applies crop, flip
  and the policy's PIL ops (:mod:`ats.transforms.ops_pil`, the library's per-op PIL reference), then
  ``ToTensor`` and ``Normalize``, read through a ``DataLoader``.

They are references for speed and for agreement, not for production: no input checks beyond what
the benchmark needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from ats.attack.configs import AttackConfig
from ats.policies import Policy
from ats.transforms.ops_pil import apply_subpolicy_pil
from ats.transforms.pipeline import AugmentationDraw


def half_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """inversefed's ``Classification`` loss, ``0.5 · mean cross-entropy``, used throughout the original."""
    return 0.5 * F.cross_entropy(logits, labels)


def parameter_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The original ``calculate_dw``: gradient of the loss on ``inputs`` w.r.t. every parameter."""
    model.zero_grad()
    loss = half_cross_entropy(model(inputs), labels)
    return torch.autograd.grad(loss, list(model.parameters()))


def _cosine_item(a: torch.Tensor, b: torch.Tensor) -> float:
    """The original ``cal_dis(..., metric='cos')``: one flattened cosine, synced to the host."""
    return F.cosine_similarity(a.flatten().unsqueeze(0), b.flatten().unsqueeze(0)).item()


def privacy_score(model: nn.Module, image: torch.Tensor, label: torch.Tensor, noise: torch.Tensor,
                  bins: int = 20) -> tuple[float, list[float]]:
    """S_pri of one normalised image ``(C, H, W)`` against one normalised noise image.

    Returns the score and the curve of ``bins + 1`` mean per-tensor cosines, from the noise
    (point 0) to the image (point ``bins``). Like the original it computes the reference gradient
    separately, so an image costs ``bins + 2`` passes, and it keeps the interval width that cancels
    out of the area ratio.
    """
    inputs, labels, noise_input = image.unsqueeze(0), label.reshape(1), noise.unsqueeze(0)
    reference = parameter_gradient(model, inputs, labels)
    curve = []
    for step in range(bins + 1):
        point = (1.0 / bins * step * inputs + 1.0 / bins * (bins - step) * noise_input).detach()
        gradient = parameter_gradient(model, point, labels)
        curve.append(sum(_cosine_item(g, r) for g, r in zip(gradient, reference)) / len(reference))
    interval = torch.mean(torch.abs(noise_input - inputs)).item() / bins
    area = sum((previous + current) * interval / 2 for previous, current in pairwise(curve))
    return area / (interval * bins), curve


def privacy_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor,
                   bins: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`privacy_score` for each image in turn, in eval mode: scores ``(N,)``, curves ``(N, bins + 1)``."""
    model.eval()
    results = [privacy_score(model, images[i], labels[i], noise[i], bins) for i in range(images.shape[0])]
    scores = torch.tensor([score for score, _ in results], dtype=torch.float64)
    curves = torch.tensor([curve for _, curve in results], dtype=torch.float64)
    return scores, curves


def batched_forward_backward(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One plain forward+backward of a whole batch (no per-sample gradients).

    Any S_pri implementation needs at least this much arithmetic for the same interpolation
    points, so its time is the floor that ``spri_floor_ratio`` divides by.
    """
    model.eval()
    return parameter_gradient(model, inputs, labels)


def _cosine_matching_cost(gradient: Sequence[torch.Tensor], observed: Sequence[torch.Tensor]) -> torch.Tensor:
    """The original ``reconstruction_costs(..., cost_fn='sim')``: one cosine over all tensors, as a loop."""
    cost = 0
    norms = [0, 0]
    for trial, target in zip(gradient, observed):
        cost -= (trial * target).sum()
        norms[0] += trial.pow(2).sum()
        norms[1] += target.pow(2).sum()
    norm = torch.clamp(norms[0].sqrt() * norms[1].sqrt(), min=1e-8)
    return 1 + cost / norm


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """inversefed's anisotropic total variation of a ``(1, C, H, W)`` image."""
    dx = torch.mean(torch.abs(x[:, :, :, :-1] - x[:, :, :, 1:]))
    dy = torch.mean(torch.abs(x[:, :, :-1, :] - x[:, :, 1:, :]))
    return dx + dy


def attack_one_image(model: nn.Module, observed: Sequence[torch.Tensor], label: torch.Tensor,
                     initial: torch.Tensor, config: AttackConfig, mean: torch.Tensor,
                     std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original ``GradientReconstructor`` trial for one image with an Adam + cosine config.

    ``observed``: the shared gradient, one tensor per parameter. ``initial``: the ``(1, C, H, W)``
    starting image. ``mean``/``std``: per-channel normalisation for the box. Runs
    ``config.iterations`` steps, then scores the trial like the original's ``_score_trial`` (the
    matching cost without TV), and returns the final image and that score.
    """
    if config.optimizer != "adam" or config.cost != "sim":
        raise ValueError(f"the reference attack covers Adam with the cosine cost, not {config.name!r}")
    model.eval()
    lower = (-mean / std).reshape(1, -1, 1, 1)
    upper = ((1 - mean) / std).reshape(1, -1, 1, 1)
    x_trial = initial.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x_trial], lr=config.lr)
    iterations = config.iterations
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[iterations // 2.667, iterations // 1.6, iterations // 1.142], gamma=0.1)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        model.zero_grad()
        loss = half_cross_entropy(model(x_trial), label)
        gradient = torch.autograd.grad(loss, parameters, create_graph=True)
        cost = _cosine_matching_cost(gradient, observed)
        if config.tv_weight > 0:
            cost = cost + config.tv_weight * _total_variation(x_trial)
        cost.backward()
        if config.signed:
            x_trial.grad.sign_()
        return cost

    for _ in range(iterations):
        optimizer.step(closure)
        if config.lr_decay:
            scheduler.step()
        if config.boxed:
            with torch.no_grad():
                x_trial.data = torch.max(torch.min(x_trial, upper), lower)

    model.zero_grad()
    x_trial.grad = None
    loss = half_cross_entropy(model(x_trial), label)
    score = _cosine_matching_cost(torch.autograd.grad(loss, parameters), observed)
    return x_trial.detach(), score.detach()


class PolicyDataset(torch.utils.data.Dataset):
    """The original training-style transform, one image per ``__getitem__``, with PIL.

    Zero-pad 4 and crop 32×32, flip, apply one sub-policy op by op with PIL, then ``ToTensor`` and
    ``Normalize`` (the original's ``RandomCrop``/``RandomHorizontalFlip``/``SubPolicy`` compose).
    Instead of drawing its own random choices it replays row ``index`` of ``draw``, so its output
    can be compared with the batched pipeline's pixel for pixel. ``images``: uint8 ``N×32×32×3``.
    """

    def __init__(self, images: np.ndarray, policy: Policy, draw: AugmentationDraw,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        self.images = images
        self.policy = policy
        self.draw = draw
        self.mean = list(mean)
        self.std = list(std)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = Image.fromarray(self.images[index], "RGB")
        top, left = (int(offset) for offset in self.draw.crop_offsets[index])
        img = TF.crop(TF.pad(img, 4), top, left, 32, 32)
        if bool(self.draw.flips[index]):
            img = TF.hflip(img)
        ops = self.policy[int(self.draw.subpolicy[index])]
        img = apply_subpolicy_pil(img, ops, [int(sign) for sign in self.draw.signs[index, :len(ops)]])
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)
