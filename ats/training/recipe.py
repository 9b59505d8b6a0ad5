"""The original code's "conservative" training recipe, constant for constant.

Every model in ATS (the tiny-data search model and each defended model) is trained with the recipe
of inversefed's ``training_strategy('conservative')`` as used by ``benchmark/cifar100_train.py``:
SGD with Nesterov momentum, a three-step learning-rate decay and *half* the mean cross-entropy. The
numbers are kept exactly, including two quirks that change results and therefore must not be
"cleaned up":

* the milestones are computed by *float* floor division (``E // 2.667`` etc.), which gives 124 and
  not 125 for ``E = 200`` because ``200 / 1.6`` is ``124.999…`` in binary floating point;
* the loss is ``0.5 · mean CE``; with weight decay this is *not* the same as halving the learning
  rate, because the decay term is not halved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and loss constants of one training recipe."""

    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 128
    lr_decay_factor: float = 0.1
    milestone_divisors: tuple[float, ...] = (2.667, 1.6, 1.142)
    loss_scale: float = 0.5


CONSERVATIVE = Recipe()
"""The recipe used for every training run of the original code."""


def lr_milestones(epochs: int, recipe: Recipe = CONSERVATIVE) -> list[int]:
    """Epochs after which the learning rate is multiplied by ``recipe.lr_decay_factor``.

    Float floor division exactly as the original: 200 → [74, 124, 175], 100 → [37, 62, 87],
    50 → [18, 31, 43].
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    return [int(epochs // divisor) for divisor in recipe.milestone_divisors]


def build_optimizer(model: nn.Module, recipe: Recipe = CONSERVATIVE) -> torch.optim.SGD:
    """SGD over all parameters of ``model`` (weight decay on every tensor, as in the original)."""
    return torch.optim.SGD(
        model.parameters(),
        lr=recipe.learning_rate,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, recipe: Recipe = CONSERVATIVE
) -> torch.optim.lr_scheduler.MultiStepLR:
    """Step decay, to be stepped once at the end of every epoch."""
    return torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=lr_milestones(epochs, recipe), gamma=recipe.lr_decay_factor
    )


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, recipe: Recipe = CONSERVATIVE, reduction: str = "mean"
) -> torch.Tensor:
    """``recipe.loss_scale`` × cross-entropy (inversefed's ``Classification`` loss).

    ``reduction="sum"`` gives the scaled per-sample losses summed, for exact dataset means over
    batches of unequal size.
    """
    return recipe.loss_scale * functional.cross_entropy(logits.float(), labels, reduction=reduction)
