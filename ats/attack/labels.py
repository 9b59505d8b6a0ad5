"""Analytic label recovery from a shared gradient (iDLG, Zhao et al. 2020).

For one image with cross-entropy loss, the gradient of the last linear layer's weight is
``dL/dW[k] = c · (softmax_k − onehot_k) · h``, with ``h`` the layer's input and ``c > 0`` (0.5 here).
When ``h ≥ 0`` (it follows a ReLU, pooling of ReLU outputs, as in every model of this package), the
row of the true class is the only one whose sum is ≤ 0, so the label is the row with the smallest
sum. The original code carries this rule but disables it (``if False``); here it is an option of the
attack stage (``label_recovery``). It is exact for one image per gradient, which is the setting of
this package (every target shares its own gradient); a gradient defence (noise, pruning) can break it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ats.attack.objectives import attacked_parameters


def last_linear_weight_index(model: nn.Module) -> int:
    """Position, in the observed-gradient list, of the weight of the model's last ``nn.Linear``.

    "Last" is the last one registered (``model.modules()`` order), which is the classifier head in
    every model of this package.
    """
    linear_layers = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linear_layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; iDLG label recovery needs one")
    weight = linear_layers[-1].weight
    for index, parameter in enumerate(p for p in model.parameters() if p.requires_grad):
        if parameter is weight:
            return index
    raise ValueError(f"the last nn.Linear weight of {type(model).__name__} does not require grad, so it is "
                     f"not part of the shared gradient; iDLG label recovery needs it")


def recover_labels(model: nn.Module, observed_gradients: Sequence[torch.Tensor]) -> torch.Tensor:
    """The iDLG label of each target: the class whose last-layer weight-gradient row sum is smallest.

    ``observed_gradients`` holds one tensor per attacked parameter with a leading batch dimension of
    targets (as from :func:`ats.attack.reconstruct.observed_gradients`); returns a LongTensor ``(B,)``.
    """
    index = last_linear_weight_index(model)
    expected = len(attacked_parameters(model))
    if len(observed_gradients) != expected:
        raise ValueError(f"{len(observed_gradients)} observed gradient tensors for {expected} attacked parameters")
    weight_gradient = observed_gradients[index]
    if weight_gradient.dim() != 3:
        raise ValueError(f"the last-layer weight gradient must be (B, classes, features), got shape "
                         f"{tuple(weight_gradient.shape)}")
    return weight_gradient.sum(dim=-1).argmin(dim=-1)
