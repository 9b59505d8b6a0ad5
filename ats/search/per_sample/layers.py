"""The registry: one per-sample statistics function per layer type, and the route table.

A layer's statistics are, per parameter tensor (``"weight"``, ``"bias"``), every sample's dot
product with its image's reference and its squared norm, computed from the layer's input and the
gradient of its output alone. Types are matched exactly (``type(layer)``), so a subclass with its
own ``forward`` is never taken for its parent. A new layer type needs a statistics function
registered with :func:`register` and its routes in :data:`ROUTES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ats.search.per_sample.reductions import (
    conv_columns,
    conv_output_hw,
    conv_per_sample_gradients,
    gram_stats,
    materialised_stats,
    row_grams,
    shifted_receptive_field_grams,
)

# Per parameter name of one layer ("weight", "bias"): (dot with the reference, squared norm), each (images, points).
LayerStats = dict[str, tuple[Tensor, Tensor]]
# (layer, its input (M, ...), the gradient of its output, points per image, route) -> statistics.
StatisticsFunction = Callable[[nn.Module, Tensor, Tensor, int, str], LayerStats]
# (layer, one sample's input shape) -> multiply-adds per sample.
RouteCost = Callable[[nn.Module, Sequence[int]], float]

# The cost model, in multiply-adds: writing a materialised per-sample gradient entry and reading it
# back (memory-bound) costs about as much as 20; a multiply-add of the Gram routes' many small
# batched matrix products about 2 of the grouped weight-gradient kernel's.
MATERIALISED_ENTRY_COST = 20
GRAM_ROUTE_PENALTY = 2


def _conv_shapes(conv: nn.Conv2d, input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Output positions T, padded input positions U, im2col columns and output channels of ``conv``."""
    out_channels, in_channels, kernel_h, kernel_w = conv.weight.shape
    output_h, output_w = conv_output_hw(conv, input_shape[-2:])
    padded = (input_shape[-2] + 2 * conv.padding[0]) * (input_shape[-1] + 2 * conv.padding[1])
    return output_h * output_w, padded, in_channels * kernel_h * kernel_w, out_channels


def _conv_materialise_cost(conv: nn.Module, input_shape: Sequence[int]) -> float:
    positions, _, columns, out_channels = _conv_shapes(conv, input_shape)
    return (positions + MATERIALISED_ENTRY_COST) * out_channels * columns


def _conv_columns_cost(conv: nn.Module, input_shape: Sequence[int]) -> float:
    positions, _, columns, out_channels = _conv_shapes(conv, input_shape)
    return GRAM_ROUTE_PENALTY * 2 * positions**2 * (out_channels + columns)


def _conv_shifted_cost(conv: nn.Module, input_shape: Sequence[int]) -> float:
    positions, padded, _, out_channels = _conv_shapes(conv, input_shape)
    return GRAM_ROUTE_PENALTY * 2 * (padded**2 * conv.in_channels + positions**2 * out_channels)


def _linear_positions(linear: nn.Module, input_shape: Sequence[int]) -> int:
    return int(torch.Size(input_shape).numel()) // linear.in_features


def _linear_materialise_cost(linear: nn.Module, input_shape: Sequence[int]) -> float:
    return _linear_positions(linear, input_shape) * linear.out_features * linear.in_features


def _linear_gram_cost(linear: nn.Module, input_shape: Sequence[int]) -> float:
    return 2 * _linear_positions(linear, input_shape) ** 2 * (linear.out_features + linear.in_features)


def _no_choice(layer: nn.Module, input_shape: Sequence[int]) -> float:
    return 0.0


# The route table: per layer type, the ways to compute its statistics and what each costs per
# sample; the cheapest is taken (:func:`choose_route`). For a conv (T output positions, U padded
# input positions, D = in·k² columns):
#   materialise  form each sample's weight gradient, T·out·D, plus storing and re-reading its out·D entries;
#   columns      T×T Gram matrices of the im2col columns and the output gradient, 2·T²·(out + D);
#   shifted      the column Gram from a Gram of the padded input positions, 2·(U²·in + T²·out).
# Measured on a 2-core CPU (84–168 samples), this picks the fastest route for every conv of ResNet20
# and ResNet20-4; tests/test_per_sample.py pins the choice for every shipped architecture.
ROUTES: dict[type[nn.Module], dict[str, RouteCost]] = {
    nn.Conv2d: {"materialise": _conv_materialise_cost, "columns": _conv_columns_cost,
                "shifted": _conv_shifted_cost},
    nn.Linear: {"materialise": _linear_materialise_cost, "gram": _linear_gram_cost},
    nn.BatchNorm2d: {"direct": _no_choice},
}


@dataclass(frozen=True)
class Registration:
    """A layer type's statistics function, and why a given layer of that type cannot use it (or None)."""

    statistics: StatisticsFunction
    refusal: Callable[[nn.Module], str | None]


STATISTICS: dict[type[nn.Module], Registration] = {}


def register(layer_type: type[nn.Module], refusal: Callable[[nn.Module], str | None] = lambda layer: None
             ) -> Callable[[StatisticsFunction], StatisticsFunction]:
    """Register the decorated function as the statistics of ``layer_type`` (whose routes must be in ROUTES)."""
    if layer_type not in ROUTES:
        raise ValueError(f"{layer_type.__name__} has no routes in ats.search.per_sample.layers.ROUTES")

    def decorate(function: StatisticsFunction) -> StatisticsFunction:
        STATISTICS[layer_type] = Registration(function, refusal)
        return function

    return decorate


def choose_route(layer: nn.Module, input_shape: Sequence[int]) -> str:
    """The cheapest route of ``layer`` (a registered type) for one sample's ``input_shape``."""
    routes = ROUTES[type(layer)]
    return min(routes, key=lambda route: routes[route](layer, input_shape))


def _conv_refusal(conv: nn.Module) -> str | None:
    if conv.groups != 1:
        return "grouped convolution"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"padding {conv.padding!r} in mode {conv.padding_mode!r} (only explicit zero padding)"
    return None


@register(nn.Conv2d, _conv_refusal)
def conv2d_statistics(conv: nn.Module, layer_input: Tensor, output_grad: Tensor, points: int, route: str
                      ) -> LayerStats:
    """Weight statistics by ``route``; bias statistics from the output gradient summed over positions."""
    stats: LayerStats = {}
    if route == "materialise":
        per_sample, _, grad_sums = conv_per_sample_gradients(conv, layer_input, output_grad)
        stats["weight"] = materialised_stats(per_sample, points)
    else:
        output_hw = (output_grad.shape[2], output_grad.shape[3])
        input_grams = (shifted_receptive_field_grams(conv, layer_input, output_hw, points) if route == "shifted"
                       else row_grams(conv_columns(conv, layer_input), points))
        stats["weight"] = gram_stats(output_grad.flatten(2).transpose(1, 2), input_grams, points)
        grad_sums = output_grad.sum(dim=(2, 3)) if conv.bias is not None else None
    if conv.bias is not None:
        stats["bias"] = materialised_stats(grad_sums, points)
    return stats


@register(nn.Linear)
def linear_statistics(linear: nn.Module, layer_input: Tensor, output_grad: Tensor, points: int, route: str
                      ) -> LayerStats:
    """Weight statistics from per-sample outer products or, by ``route`` ``gram``, Gram matrices."""
    samples = layer_input.shape[0]
    rows_in = layer_input.reshape(samples, -1, linear.in_features)
    rows_grad = output_grad.reshape(samples, -1, linear.out_features)
    stats: LayerStats = {
        "weight": gram_stats(rows_grad, row_grams(rows_in, points), points) if route == "gram"
        else materialised_stats(torch.bmm(rows_grad.transpose(1, 2), rows_in), points)}
    if linear.bias is not None:
        stats["bias"] = materialised_stats(rows_grad.sum(dim=1), points)
    return stats


def batch_norm_from_sums(norm: nn.Module, centred_dot: Tensor | None, grad_sums: Tensor, points: int
                         ) -> LayerStats:
    """γ and β statistics of an eval-mode BatchNorm, y = γ·(x − μ)/σ + β with the running μ, σ².

    ``centred_dot`` is Σ go·(x − μ) and ``grad_sums`` Σ go per sample and channel (M, C).
    """
    stats: LayerStats = {}
    if norm.weight is not None:
        stats["weight"] = materialised_stats(centred_dot * torch.rsqrt(norm.running_var + norm.eps), points)
    if norm.bias is not None:
        stats["bias"] = materialised_stats(grad_sums, points)
    return stats


def _batch_norm_refusal(norm: nn.Module) -> str | None:
    if not norm.track_running_stats or norm.running_mean is None:
        return "no running statistics (track_running_stats=False)"
    return None


@register(nn.BatchNorm2d, _batch_norm_refusal)
def batch_norm2d_statistics(norm: nn.Module, layer_input: Tensor, output_grad: Tensor, points: int, route: str
                            ) -> LayerStats:
    """γ and β statistics from Σ go·(x − μ) and Σ go per channel (eval mode: running μ, σ²)."""
    grad_rows = output_grad.reshape(output_grad.shape[0], output_grad.shape[1], -1)
    grad_sums = grad_rows.sum(dim=-1)
    # Σ go·(x − μ) = Σ go·x − μ·Σ go: two passes over the activations instead of three.
    centred_dot = None if norm.weight is None else torch.addcmul(
        torch.linalg.vecdot(grad_rows, layer_input.reshape(grad_rows.shape)), norm.running_mean, grad_sums, value=-1)
    return batch_norm_from_sums(norm, centred_dot, grad_sums, points)
