"""What the attacks optimise, written for one sample so that ``torch.func.vmap`` can batch it.

Every function here sees a single image ``(C, H, W)`` and a single label; batching over many
independent attacks is done by :func:`torch.func.vmap` in :mod:`ats.attack.reconstruct`, so each
attack in a batch computes exactly what it would compute alone.

The training loss is the original's ``0.5 · mean cross-entropy`` (inversefed ``Classification``),
used both for the shared gradient and inside the reconstructor (the first commit used plain
cross-entropy inside, a factor-2 mismatch for the ``l1``/``l2`` costs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from ats.attack.configs import CostName

#: Floor of the norm product in the cosine cost (HEAD), so a zero gradient gives cost 1, not NaN.
COSINE_NORM_FLOOR = 1e-8

ParameterDict = dict[str, torch.Tensor]


def attacked_parameters(model: nn.Module) -> ParameterDict:
    """The parameters whose gradient is shared, in ``named_parameters`` order (detached).

    As in the original ('def' indices), these are all parameters with ``requires_grad``; the
    observed-gradient lists of this package follow this order.
    """
    parameters = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no parameter with requires_grad=True to attack")
    return parameters


def training_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original training loss, ``0.5 · mean cross-entropy``."""
    return 0.5 * F.cross_entropy(logits, labels)


def per_sample_gradient_fn(
    model: nn.Module,
) -> Callable[[ParameterDict, torch.Tensor, torch.Tensor], ParameterDict]:
    """Return ``g(params, image, label)``: the gradient of the training loss of one sample.

    The model is evaluated with :func:`torch.func.functional_call` on the parameters given and its
    own buffers (batch-norm running statistics: the model must be in eval mode, as in the original).
    """

    def sample_loss(params: ParameterDict, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, params, (image.unsqueeze(0),))
        return training_loss(logits, label.unsqueeze(0))

    return grad(sample_loss)


def gradient_matching_cost(
    trial: Mapping[str, torch.Tensor] | list[torch.Tensor],
    target: list[torch.Tensor],
    cost: CostName,
) -> torch.Tensor:
    """Distance between one trial gradient and one observed gradient (lists in the same order).

    ``sim`` is one global cosine over the concatenation of all tensors (equal weights):
    ``1 − <g, g*> / max(‖g‖·‖g*‖, 1e-8)``; ``l2`` and ``l1`` are sums over all entries.
    """
    trial_tensors = list(trial.values()) if isinstance(trial, Mapping) else trial
    if cost == "sim":
        inner = sum((g * t).sum() for g, t in zip(trial_tensors, target))
        trial_norm_sq = sum(g.pow(2).sum() for g in trial_tensors)
        target_norm_sq = sum(t.pow(2).sum() for t in target)
        norm_product = (trial_norm_sq.sqrt() * target_norm_sq.sqrt()).clamp(min=COSINE_NORM_FLOOR)
        return 1 - inner / norm_product
    if cost == "l2":
        return sum((g - t).pow(2).sum() for g, t in zip(trial_tensors, target))
    if cost == "l1":
        return sum((g - t).abs().sum() for g, t in zip(trial_tensors, target))
    raise ValueError(f"unknown gradient-matching cost {cost!r}; expected 'sim', 'l1' or 'l2'")


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of one image ``(C, H, W)``: mean |horizontal| + mean |vertical|
    differences of neighbouring pixels (the original's ``inversefed.metrics.total_variation``)."""
    horizontal = (image[..., :, 1:] - image[..., :, :-1]).abs().mean()
    vertical = (image[..., 1:, :] - image[..., :-1, :]).abs().mean()
    return horizontal + vertical
