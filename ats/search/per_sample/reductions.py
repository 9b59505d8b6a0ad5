"""Per-sample gradient statistics from a layer's input and output gradient, as tensor algebra.

Each function returns, for M = images·points samples laid out image-major, the dot product of every
sample's gradient with its image's reference (the last point) and its squared norm, both
(images, points); or a piece of that computation. :mod:`.layers` picks which to use per layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_GROUPED_CHANNELS = 8  # input channels below which a conv's per-sample gradient uses im2col + bmm


def materialised_stats(per_sample: Tensor, points: int) -> tuple[Tensor, Tensor]:
    """Dot products with the reference and squared norms of per-sample gradients (M, ...).

    Fused reductions that read each gradient once per statistic (``vector_norm``, and ``vecdot``
    with the image's reference broadcast): faster than each image's points × points Gram matrix
    product (docs/benchmarks.md), with pairwise summation (~1e-6 relative error, where a
    float32 matrix product over the ~10⁵ entries of a large layer loses ~1e-5).
    """
    rows = per_sample.reshape(-1, points, per_sample[0].numel())
    return torch.linalg.vecdot(rows, rows[:, -1:]), torch.linalg.vector_norm(rows, dim=-1).square()


def row_grams(rows: Tensor, points: int) -> tuple[Tensor, Tensor]:
    """For rows (M, T, D) of M = images·points samples: each sample's T×T Gram matrix with itself,
    and with the reference (last point) of its image, both (M, T, T)."""
    positions = rows.shape[1]
    own = torch.bmm(rows, rows.transpose(1, 2))
    by_image = rows.reshape(-1, points * positions, rows.shape[2])
    with_reference = torch.bmm(by_image, by_image[:, -positions:].transpose(1, 2))
    return own, with_reference.reshape(-1, positions, positions)


def gram_stats(output_grad: Tensor, input_grams: tuple[Tensor, Tensor], points: int) -> tuple[Tensor, Tensor]:
    """The same statistics for per-sample gradients G_m = Σ_t go_m[t] ⊗ a_m[t], never formed.

    ``output_grad`` is (M, T, out); ``input_grams`` are :func:`row_grams` of the inputs a (M, T, in),
    however computed. ⟨G_m, G_r⟩ = Σ_{t,s} (go_m go_rᵀ)[t,s] · (a_m a_rᵀ)[t,s], so norms and dots
    need T×T Gram matrices only.
    """
    grad_own, grad_with_reference = row_grams(output_grad, points)
    input_own, input_with_reference = input_grams
    norm_sq = (grad_own * input_own).sum(dim=(1, 2))
    dot = (grad_with_reference * input_with_reference).sum(dim=(1, 2))
    return dot.reshape(-1, points), norm_sq.reshape(-1, points)


def shifted_receptive_field_grams(conv: nn.Conv2d, layer_input: Tensor, output_hw: tuple[int, int],
                                   points: int) -> tuple[Tensor, Tensor]:
    """:func:`row_grams` of a conv's receptive fields (im2col columns), without forming them.

    The inner product of the fields at output positions t and s is a sum over kernel offsets k of
    inner products of single input positions, a(t + k)·a(s + k). So one Gram matrix over the padded
    input positions, Q[u, v] = a(u)·a(v), gives them all: the field Gram is the sum over the k×k
    offsets of shifted (and, with a stride, subsampled) views of Q. With stride 1 this takes about
    C·(H·W)² operations instead of 9·C·(H·W)² for the columns, and no copy of the columns.
    """
    (pad_h, pad_w), (kernel_h, kernel_w) = conv.padding, conv.kernel_size
    (stride_h, stride_w), (dilation_h, dilation_w) = conv.stride, conv.dilation
    padded = F.pad(layer_input, (pad_w, pad_w, pad_h, pad_h)).permute(0, 2, 3, 1).contiguous()
    samples, height, width, channels = padded.shape
    out_h, out_w = output_hw
    grams = []
    for position_gram in row_grams(padded.reshape(samples, height * width, channels), points):
        position_gram = position_gram.view(samples, height, width, height, width)
        field_gram = None
        for row in range(kernel_h):
            rows = slice(row * dilation_h, row * dilation_h + stride_h * (out_h - 1) + 1, stride_h)
            for col in range(kernel_w):
                cols = slice(col * dilation_w, col * dilation_w + stride_w * (out_w - 1) + 1, stride_w)
                shifted = position_gram[:, rows, cols, rows, cols]
                field_gram = shifted.contiguous() if field_gram is None else field_gram.add_(shifted)
        grams.append(field_gram.reshape(samples, out_h * out_w, out_h * out_w))
    return grams[0], grams[1]


def conv_columns(conv: nn.Conv2d, layer_input: Tensor) -> Tensor:
    """The (M, T, C·kh·kw) receptive fields of every output position (im2col), columns in (kh, kw, C) order.

    Built from strided views of the padded input, made channels-last so that the final copy reads
    contiguous runs: on CPU ``F.unfold`` is much slower for some shapes (docs/benchmarks.md). The
    column order is irrelevant here, since only inner products are used.
    """
    (pad_h, pad_w), (kernel_h, kernel_w) = conv.padding, conv.kernel_size
    (stride_h, stride_w), (dilation_h, dilation_w) = conv.stride, conv.dilation
    padded = F.pad(layer_input, (pad_w, pad_w, pad_h, pad_h)).permute(0, 2, 3, 1).contiguous()
    span_h, span_w = dilation_h * (kernel_h - 1) + 1, dilation_w * (kernel_w - 1) + 1
    windows = padded.unfold(1, span_h, stride_h).unfold(2, span_w, stride_w)[..., ::dilation_h, ::dilation_w]
    samples, rows, cols = windows.shape[:3]
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(samples, rows * cols, -1)


def conv_output_hw(conv: nn.Conv2d, input_hw: Sequence[int]) -> tuple[int, int]:
    sizes = zip(input_hw, conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    return tuple((size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                 for size, pad, dilation, kernel, stride in sizes)  # type: ignore[return-value]


def conv_per_sample_gradients(conv: nn.Conv2d, layer_input: Tensor, output_grad: Tensor
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """Every sample's weight gradient (M, out, D), the conv's weight laid out like it (out, D), and
    every sample's output gradient summed over positions (M, out), its bias gradient."""
    samples = layer_input.shape[0]
    out_channels, in_channels, kernel_h, kernel_w = conv.weight.shape
    if in_channels < MIN_GROUPED_CHANNELS:
        # A first layer: its columns are small, and grouped kernels with so few channels per group
        # fall back to a slow scalar implementation on CPU.
        per_sample = torch.bmm(output_grad.flatten(2), conv_columns(conv, layer_input))
        return (per_sample, conv.weight.permute(0, 2, 3, 1).reshape(out_channels, -1),
                output_grad.sum(dim=(2, 3)))
    # Samples as groups: one grouped weight-gradient convolution gives every sample's gradient, and
    # its bias gradient sums the output gradient while reading it, which is cheaper than a
    # separate sum. The weight only lends its shape.
    grouped_shape = (samples * out_channels, in_channels, kernel_h, kernel_w)
    _, per_sample, grad_sums = torch.ops.aten.convolution_backward(
        output_grad.reshape(1, samples * out_channels, *output_grad.shape[2:]),
        layer_input.reshape(1, samples * in_channels, *layer_input.shape[2:]),
        output_grad.new_empty(1).expand(grouped_shape), [samples * out_channels],
        conv.stride, conv.padding, conv.dilation, False, [0, 0], samples, [False, True, True],
    )
    return (per_sample.reshape(samples, out_channels, -1), conv.weight.reshape(out_channels, -1),
            grad_sums.reshape(samples, out_channels))
