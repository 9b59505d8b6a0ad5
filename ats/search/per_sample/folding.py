"""Conv–BatchNorm pairs run as one conv during the statistics pass, with exact statistics for both."""

from __future__ import annotations

import weakref
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ats.search.per_sample.layers import (
    STATISTICS,
    LayerStats,
    batch_norm_from_sums,
    choose_route,
)
from ats.search.per_sample.reductions import (
    conv_per_sample_gradients,
    materialised_stats,
)


class FoldedConvBatchNorm:
    """A conv and the eval-mode BatchNorm that alone reads its output, run as one conv.

    With s = γ/σ (σ² = running variance + eps) the pair computes y = conv(a; s·W) + β + s·(b − μ):
    one convolution instead of a convolution and a normalisation, each with its backward pass
    (the saving is in docs/benchmarks.md). Per
    output channel, the per-sample gradients of all four tensors follow from go = ∂L/∂y and
    H = Σ_t go[t] ⊗ a[t], the per-sample gradient of a conv with output gradient go:

        ∂L/∂W = s·H,  ∂L/∂b = s·Σ go,  ∂L/∂β = Σ go,  ∂L/∂γ = Σ go·(z − μ)/σ = (⟨W, H⟩ + (b − μ)·Σ go)/σ

    with z = conv(a; W) + b, so nothing is divided by γ. A conv whose route is a Gram route (no H)
    runs unfolded and keeps z for ∂L/∂γ.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        self.conv, self.norm = conv, norm
        self.pre_norm_output: Tensor | None = None  # z, when the last forward ran unfolded
        self.conv_route = "materialise"

    def _scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """s = γ/σ per output channel, and b − μ (the conv bias minus the running mean)."""
        conv, norm = self.conv, self.norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return scale, (conv.bias - norm.running_mean if conv.bias is not None else -norm.running_mean)

    def forward(self, layer_input: Tensor) -> Tensor:
        """Replaces ``conv.forward`` during the pass (the BatchNorm's forward is the identity then)."""
        conv, norm = self.conv, self.norm
        self.conv_route = choose_route(conv, layer_input.shape[1:])
        if self.conv_route != "materialise":
            self.pre_norm_output = conv._conv_forward(layer_input, conv.weight, conv.bias)
            return F.batch_norm(self.pre_norm_output, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                False, 0.0, norm.eps)
        self.pre_norm_output = None
        scale, shift = self._scale_and_shift()
        return conv._conv_forward(layer_input, conv.weight * scale.view(-1, 1, 1, 1),
                                  torch.addcmul(norm.bias, shift, scale))

    def statistics(self, layer_input: Tensor, output_grad: Tensor, points: int) -> tuple[LayerStats, LayerStats]:
        """The conv's statistics (weight, bias) and the BatchNorm's (γ, β)."""
        conv, norm = self.conv, self.norm
        scale, shift = self._scale_and_shift()
        if self.pre_norm_output is not None:  # ran unfolded: the two layers' own statistics
            conv_grad = output_grad * scale.view(1, -1, 1, 1)
            return (STATISTICS[nn.Conv2d].statistics(conv, layer_input, conv_grad, points, self.conv_route),
                    STATISTICS[nn.BatchNorm2d].statistics(norm, self.pre_norm_output.detach(), output_grad, points,
                                                          "direct"))
        per_sample, weight, grad_sums = conv_per_sample_gradients(conv, layer_input, output_grad)
        by_image = per_sample.reshape(-1, points, *per_sample.shape[1:])
        channel_dots = torch.linalg.vecdot(by_image, by_image[:, -1:])
        channel_norms_sq = torch.linalg.vector_norm(by_image, dim=-1).square()
        scale_sq = scale.square()
        conv_stats: LayerStats = {"weight": (channel_dots @ scale_sq, channel_norms_sq @ scale_sq)}
        if conv.bias is not None:
            conv_stats["bias"] = materialised_stats(grad_sums * scale, points)
        centred_dot = torch.addcmul(torch.linalg.vecdot(per_sample, weight), shift, grad_sums)
        return conv_stats, batch_norm_from_sums(norm, centred_dot, grad_sums, points)


# Traced (conv, BatchNorm) pairs per model, with the module identities they were found for.
_PAIRS_BY_MODEL: weakref.WeakKeyDictionary[
    nn.Module, tuple[tuple[int, ...], list[tuple[nn.Conv2d, nn.BatchNorm2d]]]] = weakref.WeakKeyDictionary()


def conv_batch_norm_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The (Conv2d, affine BatchNorm2d) pairs that run folded: the BatchNorm alone reads the conv's
    output and each runs once, from a ``torch.fx`` trace that is cached per model and module set
    rather than redone on every pass. None in a model fx cannot trace.
    """
    structure = tuple(map(id, model.modules()))
    cached = _PAIRS_BY_MODEL.get(model)
    if cached is not None and cached[0] == structure:
        return cached[1]
    pairs = []
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow and the like: simply no folding
        graph = None
    if graph is not None:
        modules = dict(model.named_modules())
        calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
        for node in graph.nodes:
            if node.op != "call_module" or calls[node.target] != 1 or len(node.users) != 1:
                continue
            (user,) = node.users
            if user.op != "call_module" or calls[user.target] != 1 or user.args != (node,) or user.kwargs:
                continue
            conv, norm = modules[node.target], modules[user.target]
            if (type(conv) is nn.Conv2d and type(norm) is nn.BatchNorm2d
                    and STATISTICS[nn.Conv2d].refusal(conv) is None and STATISTICS[nn.BatchNorm2d].refusal(norm) is None
                    and norm.weight is not None and norm.bias is not None):
                pairs.append((conv, norm))
    _PAIRS_BY_MODEL[model] = (structure, pairs)
    return pairs

