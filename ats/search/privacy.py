"""The privacy score S_pri (docs/original-code.md §5.3), vectorised over images and interpolation points.

For an image x with label y, a noise image n and ``bins`` = K, the original code computes the
gradient g* = ∇θ L(x, y) of L = 0.5 · cross-entropy over every parameter tensor, then for
x_i = (i/K)·x + ((K−i)/K)·n, i = 0…K, the gradient g_i and the **unweighted mean over parameter
tensors** of cos(g_i[p], g*[p]). S_pri is the trapezoid mean of that curve over t = i/K ∈ [0, 1]
(the original's interval width cancels). Lower S_pri = gradients of nearby inputs say less about x.

The original runs K + 2 batch-1 forward/backward passes per image. Here every interpolation point
of several images is one sample of a single batched pass, and per-sample gradients are reduced to
per-tensor dot products and norms on the device without host synchronisation. Two facts make this
exact rather than approximate:

* the model is in eval mode, so BatchNorm uses running statistics and every sample's gradient is
  its own batch-1 gradient;
* x_K = 1·x + 0·n is bit-for-bit x, so g* is the per-sample gradient of the last point and needs no
  pass of its own.

Two engines compute the per-sample statistics:

``layerwise`` (the fast path, for models built from Conv2d, Linear and eval-mode BatchNorm — every
architecture of :mod:`ats.case.models`): one forward pass, then a backward pass that computes only
input gradients (no batched weight gradients are wasted). Hooks capture each layer's input and
output gradient; the per-sample weight gradient of a conv/linear layer is a product of the two, so
its norm and its dot product with the reference follow either from materialising it with one
grouped convolution (cheap when there are many spatial positions T) or from T×T Gram matrices
without materialising it (cheap when T is small, e.g. ResNet's last stage and the classifier);
:func:`_conv_route` picks by operation count. A conv whose output only a BatchNorm reads runs folded
with it into one conv for the pass (:class:`_FoldedConvBatchNorm`).

``vmap`` (general): ``torch.func.vmap(grad(...))`` over the samples, which handles any module type
but materialises every per-sample gradient at once.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default, which the original used.
DEFAULT_BINS = 20
GradientMethod = Literal["auto", "layerwise", "vmap"]
GRADIENT_METHODS: tuple[str, ...] = ("auto", "layerwise", "vmap")

# Memory per chunk that default_chunk_size aims for; a CUDA OOM halves the chunk (scoring.py).
_CHUNK_MEMORY_BUDGET_BYTES = {"cpu": 3 << 29, "cuda": 8 << 30}
_MAX_DEFAULT_CHUNK_POINTS = {"cpu": 96, "cuda": 4096}
_MIN_GROUPED_CHANNELS = 8  # input channels below which a conv's per-sample gradient uses im2col + bmm
# _conv_route's cost model, in multiply-adds: writing a materialised per-sample gradient entry and
# reading it back (memory-bound) costs about as much as 20; a multiply-add of the Gram routes' many
# small batched matrix products about 2 of the grouped weight-gradient kernel's.
_MATERIALISED_ENTRY_COST = 20
_GRAM_ROUTE_PENALTY = 2


def uniform_noise(
    shape: Sequence[int], generator: torch.Generator, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """The start of the interpolation path: u ~ U[0, 1) per pixel, normalised as (u − mean)/std.

    ``shape`` ends with (C, H, W); ``mean``/``std`` hold one value per channel. The tensor lives on
    ``generator``'s device; draw on a CPU generator to get the same noise on every device.
    """
    if len(shape) < 3 or len(mean) != shape[-3] or len(std) != shape[-3]:
        raise ValueError(
            f"uniform_noise: shape {tuple(shape)} must end with (C, H, W) and mean/std need C values; "
            f"got {len(mean)} means and {len(std)} stds"
        )
    uniform = torch.rand(tuple(shape), generator=generator, device=generator.device)
    channel = (-1, 1, 1)
    mean_t = torch.tensor(mean, dtype=uniform.dtype, device=uniform.device).view(channel)
    std_t = torch.tensor(std, dtype=uniform.dtype, device=uniform.device).view(channel)
    return (uniform - mean_t) / std_t


def interpolation_path(images: Tensor, noise: Tensor, bins: int) -> Tensor:
    """x_i = (i/bins)·x + ((bins − i)/bins)·n for i = 0…bins, as (N·(bins+1), C, H, W), image-major.

    The weights are exact at i = bins (1 and 0), so the last point of each image is the image itself.
    """
    steps = torch.arange(bins + 1, dtype=torch.float64, device=images.device)
    image_weight = (steps / bins).to(images.dtype).view(1, -1, 1, 1, 1)
    noise_weight = ((bins - steps) / bins).to(images.dtype).view(1, -1, 1, 1, 1)
    path = image_weight * images.unsqueeze(1) + noise_weight * noise.unsqueeze(1)
    return path.reshape(-1, *images.shape[1:])


def trapezoid_mean(curves: Tensor) -> Tensor:
    """S_pri of each row of ``curves`` (N, bins+1): the trapezoid-rule mean over t ∈ [0, 1]."""
    bins = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(dim=1) / (2 * bins)


def require_eval_mode(model: nn.Module, purpose: str) -> None:
    """Raise if any submodule is in training mode.

    Training-mode BatchNorm mixes the samples of a batch, which would make batched scores differ
    from the original batch-1 ones; the original computes both scores in eval mode.
    """
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise ValueError(f"{purpose} needs the model in eval mode (call model.eval()); "
                         f"in training mode: {', '.join(training[:5])}")


def default_chunk_size(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Interpolation points per pass that fit a memory budget on the model's device (1.5 GiB on
    CPU, 8 GiB on CUDA).

    A point costs about 1.25× the model's activations, plus two copies of the parameters when the
    ``vmap`` engine materialises every per-sample gradient. The activations are measured by a
    forward pass of one (C, H, W) = ``input_shape`` input on the ``meta`` device, which computes
    shapes only. On the CPU a pass holds at most 96 points (4 images of 21): per point, larger
    passes were no faster there (ResNet20: 84 points per pass 4–7 % faster than 168 on a 2-core
    CPU; ResNet20-4 about as fast at 84 as at 21), and they hold more memory. A GPU wants large
    passes.
    """
    parameter = next(model.parameters())
    kind = "cuda" if parameter.device.type == "cuda" else "cpu"
    activation_bytes = [0]

    def count(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        activation_bytes[0] += output.numel() * output.element_size()

    shapes_only = {name: torch.empty_like(tensor, device="meta")
                   for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    leaves = [module for module in model.modules() if not any(True for _ in module.children())]
    handles = [module.register_forward_hook(count) for module in leaves]
    try:
        with torch.no_grad():
            functional_call(model, shapes_only, (torch.empty((1, *input_shape), dtype=parameter.dtype, device="meta"),))
    finally:
        for handle in handles:
            handle.remove()
    bytes_per_point = 1.25 * activation_bytes[0]
    if _unsupported_parameters(model):
        bytes_per_point += 2 * sum(p.numel() * p.element_size() for p in model.parameters())
    points = int(_CHUNK_MEMORY_BUDGET_BYTES[kind] // max(bytes_per_point, 1))
    return min(max(points, 1), _MAX_DEFAULT_CHUNK_POINTS[kind])


def privacy_curves(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    noise: Tensor,
    bins: int = DEFAULT_BINS,
    chunk_size: int | None = None,
    method: GradientMethod = "auto",
) -> tuple[Tensor, Tensor]:
    """S_pri of every image and its gradient-similarity curve.

    ``images`` and ``noise`` are normalised float tensors (N, C, H, W) on the model's device,
    ``labels`` (N,) integer classes. Several policies are scored at once by concatenating their
    images. ``chunk_size`` bounds the interpolation points per pass (rounded down to whole images of
    bins+1 points, at least one image; default :func:`default_chunk_size`). ``method`` picks the
    engine (module docstring); ``auto`` uses ``layerwise`` when the model allows it.

    Returns ``(scores (N,), curves (N, bins+1))``: curves[:, i] is the mean per-tensor cosine at
    x_i, curves[:, bins] = 1 up to rounding. Non-finite model outputs give NaN, never an error.
    """
    _check_inputs(images, labels, noise, bins, chunk_size, method)
    require_eval_mode(model, "S_pri")
    if not any(True for _ in model.parameters()):
        raise ValueError("S_pri: the model has no parameters")
    gradient_stats = _choose_engine(model, method)
    points = bins + 1
    chunk_points = chunk_size if chunk_size is not None else default_chunk_size(model, images.shape[1:])
    images_per_chunk = max(1, chunk_points // points)
    curves = images.new_empty(len(images), points)
    with torch.enable_grad():
        for start in range(0, len(images), images_per_chunk):
            stop = min(start + images_per_chunk, len(images))
            inputs = interpolation_path(images[start:stop], noise[start:stop], bins)
            targets = labels[start:stop].repeat_interleave(points)
            curves[start:stop] = _mean_cosine(gradient_stats(model, inputs, targets, points)).to(curves.dtype)
    return trapezoid_mean(curves), curves


def _check_inputs(
    images: Tensor, labels: Tensor, noise: Tensor, bins: int, chunk_size: int | None, method: str
) -> None:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"S_pri: images must be a float tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if noise.shape != images.shape or noise.dtype != images.dtype or noise.device != images.device:
        raise ValueError(f"S_pri: noise {noise.dtype} {tuple(noise.shape)} on {noise.device} must match "
                         f"images {images.dtype} {tuple(images.shape)} on {images.device}")
    if labels.shape != (len(images),) or labels.dtype != torch.int64:
        raise ValueError(f"S_pri: labels must be an int64 tensor of shape ({len(images)},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"S_pri: bins must be an integer >= 1, got {bins!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"S_pri: chunk_size must be a positive integer or None, got {chunk_size!r}")
    if method not in GRADIENT_METHODS:
        raise ValueError(f"S_pri: method must be one of {', '.join(GRADIENT_METHODS)}, got {method!r}")


# Per parameter tensor, (dot product with the reference, squared norm) of every sample: (B, points) each.
GradientStats = list[tuple[Tensor, Tensor]]
Engine = Callable[[nn.Module, Tensor, Tensor, int], GradientStats]


def _choose_engine(model: nn.Module, method: str) -> Engine:
    unsupported = _unsupported_parameters(model)
    if method == "vmap" or (method == "auto" and unsupported):
        return _vmap_gradient_stats
    if unsupported:
        raise ValueError(f"S_pri method 'layerwise' cannot handle parameters {', '.join(unsupported[:5])} "
                         f"(it supports Conv2d without groups, Linear and eval-mode BatchNorm); use 'vmap'")
    return _layerwise_gradient_stats


# ---------------------------------------------------------------------------------------------
# Per-tensor cosine from per-sample dot products and squared norms


def _cosine(dot: Tensor, norm_sq: Tensor) -> Tensor:
    """cos with the reference (last point of each image), as torch's cosine_similarity: (B, P).

    dot / (max(‖g‖, eps)·max(‖g*‖, eps)), written with max(‖g‖, eps) = √max(‖g‖², eps²) so that
    a (rounding-)negative squared norm from a Gram matrix is harmless.
    """
    inverse_norm = norm_sq.clamp_min(COSINE_EPS**2).rsqrt()
    return dot * inverse_norm * inverse_norm[..., -1:]


def _mean_cosine(stats: GradientStats) -> Tensor:
    """The unweighted mean over parameter tensors of the cosine with the reference, (B, points).

    All tensors at once, in float64: a few operations instead of a few per tensor, which matters on
    a busy CPU where every parallel operation waits for its threads.
    """
    dots = torch.stack([dot for dot, _ in stats]).double()
    norms_sq = torch.stack([norm_sq for _, norm_sq in stats]).double()
    return _cosine(dots, norms_sq).mean(dim=0)


def _materialised_stats(per_sample: Tensor, points: int) -> tuple[Tensor, Tensor]:
    """Dot products with the reference and squared norms of per-sample gradients (M, ...).

    Fused reductions that read each gradient once per statistic (``vector_norm``, and ``vecdot``
    with the image's reference broadcast): 3–4× faster on a 2-core CPU than each image's
    points × points Gram matrix product, with pairwise summation (~1e-6 relative error, where a
    float32 matrix product over the ~10⁵ entries of a large layer loses ~1e-5).
    """
    rows = per_sample.reshape(-1, points, per_sample[0].numel())
    return torch.linalg.vecdot(rows, rows[:, -1:]), torch.linalg.vector_norm(rows, dim=-1).square()


def _row_grams(rows: Tensor, points: int) -> tuple[Tensor, Tensor]:
    """For rows (M, T, D) of M = images·points samples: each sample's T×T Gram matrix with itself,
    and with the reference (last point) of its image, both (M, T, T)."""
    positions = rows.shape[1]
    own = torch.bmm(rows, rows.transpose(1, 2))
    by_image = rows.reshape(-1, points * positions, rows.shape[2])
    with_reference = torch.bmm(by_image, by_image[:, -positions:].transpose(1, 2))
    return own, with_reference.reshape(-1, positions, positions)


def _gram_stats(output_grad: Tensor, input_grams: tuple[Tensor, Tensor], points: int) -> tuple[Tensor, Tensor]:
    """The same statistics for per-sample gradients G_m = Σ_t go_m[t] ⊗ a_m[t], never formed.

    ``output_grad`` is (M, T, out); ``input_grams`` are :func:`_row_grams` of the inputs a (M, T, in),
    however computed. ⟨G_m, G_r⟩ = Σ_{t,s} (go_m go_rᵀ)[t,s] · (a_m a_rᵀ)[t,s], so norms and dots
    need T×T Gram matrices only.
    """
    grad_own, grad_with_reference = _row_grams(output_grad, points)
    input_own, input_with_reference = input_grams
    norm_sq = (grad_own * input_own).sum(dim=(1, 2))
    dot = (grad_with_reference * input_with_reference).sum(dim=(1, 2))
    return dot.reshape(-1, points), norm_sq.reshape(-1, points)


def _shifted_receptive_field_grams(conv: nn.Conv2d, layer_input: Tensor, output_hw: tuple[int, int],
                                   points: int) -> tuple[Tensor, Tensor]:
    """:func:`_row_grams` of a conv's receptive fields (im2col columns), without forming them.

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
    for position_gram in _row_grams(padded.reshape(samples, height * width, channels), points):
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


def _conv_route(conv: nn.Conv2d, input_hw: tuple[int, int], output_hw: tuple[int, int]) -> str:
    """How to get a conv's per-sample statistics: the cheapest of three, by multiply-adds per sample.

    * ``materialise``: form each sample's weight gradient (T·out·in·k² operations, plus the cost of
      storing and reading its out·in·k² entries);
    * ``columns``: Gram matrices of the im2col columns (2 Grams of T²·(out + in·k²));
    * ``shifted``: Gram matrices from the padded input positions (2 Grams of U²·in + T²·out, with
      U the padded input positions; cheaper than ``columns`` at stride 1, dearer at stride 2).

    T = output positions; the weights are the constants above. Measured on a 2-core CPU (84–168
    samples), this picks the fastest route for every conv of ResNet20 and ResNet20-4 (the ConvNets
    were not measured). The Gram routes win only where positions are few and channels many
    (ResNet20-4's last stage).
    """
    out_channels, in_channels, kernel_h, kernel_w = conv.weight.shape
    positions = output_hw[0] * output_hw[1]
    padded_positions = (input_hw[0] + 2 * conv.padding[0]) * (input_hw[1] + 2 * conv.padding[1])
    columns = in_channels * kernel_h * kernel_w
    costs = {
        "materialise": (positions + _MATERIALISED_ENTRY_COST) * out_channels * columns,
        "columns": _GRAM_ROUTE_PENALTY * 2 * positions**2 * (out_channels + columns),
        "shifted": _GRAM_ROUTE_PENALTY * 2 * (padded_positions**2 * in_channels + positions**2 * out_channels),
    }
    return min(costs, key=costs.__getitem__)


def _linear_uses_gram(positions: int, out_features: int, in_features: int) -> bool:
    """Gram matrices (2·T²·(out + in)) are cheaper than per-sample gradients (T·out·in)."""
    return 2 * positions * (out_features + in_features) < out_features * in_features


# ---------------------------------------------------------------------------------------------
# Engine 1: layerwise hooks


def _is_supported_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.Conv2d):
        return module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats and module.running_mean is not None
    return isinstance(module, nn.Linear)


def _unsupported_parameters(model: nn.Module) -> list[str]:
    """Parameters the layerwise engine cannot attribute to exactly one supported layer."""
    owners: Counter[int] = Counter()
    unsupported = []
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            owners[id(parameter)] += 1
            if not _is_supported_layer(module) or name not in ("weight", "bias"):
                unsupported.append(f"{module_name}.{name}" if module_name else name)
    shared = [name for name, parameter in model.named_parameters() if owners[id(parameter)] > 1]
    return unsupported + [f"{name} (shared)" for name in shared]


def _conv_columns(conv: nn.Conv2d, layer_input: Tensor) -> Tensor:
    """The (M, T, C·kh·kw) receptive fields of every output position (im2col), columns in (kh, kw, C) order.

    Built from strided views of the padded input, made channels-last so that the final copy reads
    contiguous runs: on CPU ``F.unfold`` is up to 10× slower for some shapes. The column order is
    irrelevant here, since only inner products are used.
    """
    (pad_h, pad_w), (kernel_h, kernel_w) = conv.padding, conv.kernel_size
    (stride_h, stride_w), (dilation_h, dilation_w) = conv.stride, conv.dilation
    padded = F.pad(layer_input, (pad_w, pad_w, pad_h, pad_h)).permute(0, 2, 3, 1).contiguous()
    span_h, span_w = dilation_h * (kernel_h - 1) + 1, dilation_w * (kernel_w - 1) + 1
    windows = padded.unfold(1, span_h, stride_h).unfold(2, span_w, stride_w)[..., ::dilation_h, ::dilation_w]
    samples, rows, cols = windows.shape[:3]
    return windows.permute(0, 1, 2, 4, 5, 3).reshape(samples, rows * cols, -1)


def _conv_output_hw(conv: nn.Conv2d, input_hw: Sequence[int]) -> tuple[int, int]:
    sizes = zip(input_hw, conv.padding, conv.dilation, conv.kernel_size, conv.stride)
    return tuple((size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                 for size, pad, dilation, kernel, stride in sizes)  # type: ignore[return-value]


def _conv_per_sample_gradients(conv: nn.Conv2d, layer_input: Tensor, output_grad: Tensor
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """Every sample's weight gradient (M, out, D), the conv's weight laid out like it (out, D), and
    every sample's output gradient summed over positions (M, out), its bias gradient."""
    samples = layer_input.shape[0]
    out_channels, in_channels, kernel_h, kernel_w = conv.weight.shape
    if in_channels < _MIN_GROUPED_CHANNELS:
        # A first layer: its columns are small, and grouped kernels with so few channels per group
        # fall back to a scalar implementation (40× slower on CPU).
        per_sample = torch.bmm(output_grad.flatten(2), _conv_columns(conv, layer_input))
        return (per_sample, conv.weight.permute(0, 2, 3, 1).reshape(out_channels, -1),
                output_grad.sum(dim=(2, 3)))
    # Samples as groups: one grouped weight-gradient convolution gives every sample's gradient, and
    # its bias gradient sums the output gradient while reading it (0.5–0.9 ms less per ResNet20
    # conv on a 2-core CPU than a separate sum). The weight only lends its shape.
    grouped_shape = (samples * out_channels, in_channels, kernel_h, kernel_w)
    _, per_sample, grad_sums = torch.ops.aten.convolution_backward(
        output_grad.reshape(1, samples * out_channels, *output_grad.shape[2:]),
        layer_input.reshape(1, samples * in_channels, *layer_input.shape[2:]),
        output_grad.new_empty(1).expand(grouped_shape), [samples * out_channels],
        conv.stride, conv.padding, conv.dilation, False, [0, 0], samples, [False, True, True],
    )
    return (per_sample.reshape(samples, out_channels, -1), conv.weight.reshape(out_channels, -1),
            grad_sums.reshape(samples, out_channels))


def _conv_stats(conv: nn.Conv2d, layer_input: Tensor, output_grad: Tensor, points: int
                ) -> Iterator[tuple[Tensor, Tensor]]:
    """(dot, squared norm) of a conv's per-sample weight gradients, by :func:`_conv_route`, then of
    its bias gradients (the output gradient summed over positions)."""
    output_hw = (output_grad.shape[2], output_grad.shape[3])
    route = _conv_route(conv, (layer_input.shape[2], layer_input.shape[3]), output_hw)
    if route == "materialise":
        per_sample, _, grad_sums = _conv_per_sample_gradients(conv, layer_input, output_grad)
        yield _materialised_stats(per_sample, points)
    else:
        input_grams = (_shifted_receptive_field_grams(conv, layer_input, output_hw, points) if route == "shifted"
                       else _row_grams(_conv_columns(conv, layer_input), points))
        yield _gram_stats(output_grad.flatten(2).transpose(1, 2), input_grams, points)
        grad_sums = None if conv.bias is None else output_grad.sum(dim=(2, 3))
    if conv.bias is not None:
        yield _materialised_stats(grad_sums, points)


def _batch_norm_stats(norm: nn.Module, centred_dot: Tensor | None, grad_sums: Tensor, points: int
                      ) -> Iterator[tuple[Tensor, Tensor]]:
    """γ and β statistics of an eval-mode BatchNorm, y = γ·(x − μ)/σ + β with the running μ, σ².

    ``centred_dot`` is Σ go·(x − μ) and ``grad_sums`` Σ go per sample and channel (M, C).
    """
    if norm.weight is not None:
        yield _materialised_stats(centred_dot * torch.rsqrt(norm.running_var + norm.eps), points)
    if norm.bias is not None:
        yield _materialised_stats(grad_sums, points)


def _layer_stats(module: nn.Module, layer_input: Tensor, output_grad: Tensor, points: int
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    """(dot, squared norm) of the per-sample gradient of each parameter tensor of ``module``."""
    samples = layer_input.shape[0]
    if isinstance(module, nn.Conv2d):
        yield from _conv_stats(module, layer_input, output_grad, points)
    elif isinstance(module, nn.Linear):
        rows_in = layer_input.reshape(samples, -1, module.in_features)
        rows_grad = output_grad.reshape(samples, -1, module.out_features)
        if _linear_uses_gram(rows_in.shape[1], module.out_features, module.in_features):
            yield _gram_stats(rows_grad, _row_grams(rows_in, points), points)
        else:
            yield _materialised_stats(torch.bmm(rows_grad.transpose(1, 2), rows_in), points)
        if module.bias is not None:
            yield _materialised_stats(rows_grad.sum(dim=1), points)
    else:
        grad_rows = output_grad.reshape(samples, output_grad.shape[1], -1)
        grad_sums = grad_rows.sum(dim=-1)
        # Σ go·(x − μ) = Σ go·x − μ·Σ go: two passes over the activations instead of three.
        centred_dot = None if module.weight is None else torch.addcmul(
            torch.linalg.vecdot(grad_rows, layer_input.reshape(grad_rows.shape)), module.running_mean, grad_sums,
            value=-1)
        yield from _batch_norm_stats(module, centred_dot, grad_sums, points)


class _FoldedConvBatchNorm:
    """A conv and the eval-mode BatchNorm that alone reads its output, run as one conv during S_pri.

    With s = γ/σ (σ² = running variance + eps) the pair computes y = conv(a; s·W) + β + s·(b − μ):
    one convolution instead of a convolution and a normalisation, each with its backward pass
    (folding saved ≈ 17 % of ResNet20's forward + input-gradient backward on a 2-core CPU). Per
    output channel, the per-sample gradients of all four tensors follow from go = ∂L/∂y and
    H = Σ_t go[t] ⊗ a[t], the per-sample gradient of a conv with output gradient go:

        ∂L/∂W = s·H,  ∂L/∂b = s·Σ go,  ∂L/∂β = Σ go,  ∂L/∂γ = Σ go·(z − μ)/σ = (⟨W, H⟩ + (b − μ)·Σ go)/σ

    with z = conv(a; W) + b, so nothing is divided by γ. Convs whose statistics take a Gram route
    (no H) run unfolded and keep z for ∂L/∂γ.
    """

    def __init__(self, conv: nn.Conv2d, norm: nn.Module) -> None:
        self.conv, self.norm = conv, norm
        self.pre_norm_output: Tensor | None = None  # z, when the last forward ran unfolded

    def _scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """s = γ/σ per output channel, and b − μ (the conv bias minus the running mean)."""
        conv, norm = self.conv, self.norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        return scale, (conv.bias - norm.running_mean if conv.bias is not None else -norm.running_mean)

    def forward(self, layer_input: Tensor) -> Tensor:
        """Replaces ``conv.forward`` during the pass (the BatchNorm's forward is the identity then)."""
        conv, norm = self.conv, self.norm
        input_hw = layer_input.shape[-2:]
        if _conv_route(conv, input_hw, _conv_output_hw(conv, input_hw)) != "materialise":
            self.pre_norm_output = conv._conv_forward(layer_input, conv.weight, conv.bias)
            return F.batch_norm(self.pre_norm_output, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                                False, 0.0, norm.eps)
        self.pre_norm_output = None
        scale, shift = self._scale_and_shift()
        return conv._conv_forward(layer_input, conv.weight * scale.view(-1, 1, 1, 1), torch.addcmul(norm.bias, shift, scale))

    def stats(self, layer_input: Tensor, output_grad: Tensor, points: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(dot, squared norm) of the conv's weight (and bias), then the BatchNorm's γ and β."""
        conv, norm = self.conv, self.norm
        scale, shift = self._scale_and_shift()
        if self.pre_norm_output is not None:  # ran unfolded: the two layers' own statistics
            yield from _layer_stats(conv, layer_input, output_grad * scale.view(1, -1, 1, 1), points)
            yield from _layer_stats(norm, self.pre_norm_output.detach(), output_grad, points)
            return
        per_sample, weight, grad_sums = _conv_per_sample_gradients(conv, layer_input, output_grad)
        by_image = per_sample.reshape(-1, points, *per_sample.shape[1:])
        channel_dots = torch.linalg.vecdot(by_image, by_image[:, -1:])
        channel_norms_sq = torch.linalg.vector_norm(by_image, dim=-1).square()
        scale_sq = scale.square()
        yield channel_dots @ scale_sq, channel_norms_sq @ scale_sq
        if conv.bias is not None:
            yield _materialised_stats(grad_sums * scale, points)
        centred_dot = torch.addcmul(torch.linalg.vecdot(per_sample, weight), shift, grad_sums)
        yield from _batch_norm_stats(norm, centred_dot, grad_sums, points)


# Traced (conv, BatchNorm) pairs per model, with the module identities they were found for.
_PAIRS_BY_MODEL: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], list[tuple[nn.Conv2d, nn.Module]]]] = (
    weakref.WeakKeyDictionary())


def _conv_batch_norm_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.Module]]:
    """The supported (Conv2d, affine BatchNorm2d) pairs in which the BatchNorm alone reads the conv's
    output and each runs once, from a ``torch.fx`` trace (≈ 13 ms for ResNet20, so cached per model
    and module set). A model that fx cannot trace gets no pairs and runs unfolded.
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
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and _is_supported_layer(conv)
                    and _is_supported_layer(norm) and norm.weight is not None and norm.bias is not None):
                pairs.append((conv, norm))
    _PAIRS_BY_MODEL[model] = (structure, pairs)
    return pairs


def _identity(tensor: Tensor) -> Tensor:
    return tensor


def _layerwise_gradient_stats(model: nn.Module, inputs: Tensor, labels: Tensor, points: int) -> GradientStats:
    """Per-sample dot products with the reference and squared norms, for every parameter tensor.

    Forward hooks keep each layer's input and hook its output's gradient; the backward pass asks
    autograd for the input gradient only, so the batched weight gradients are never computed.
    Conv–BatchNorm pairs run folded into one conv (:class:`_FoldedConvBatchNorm`) for the pass.
    """
    folds = {conv: _FoldedConvBatchNorm(conv, norm) for conv, norm in _conv_batch_norm_pairs(model)}
    folded_norms = {fold.norm for fold in folds.values()}
    with_parameters = [module for module in model.modules() if any(True for _ in module.parameters(recurse=False))]
    layers = [module for module in with_parameters if module not in folded_norms]
    expected_tensors = sum(len(list(module.parameters(recurse=False))) for module in with_parameters)
    stats: GradientStats = []
    calls: Counter[nn.Module] = Counter()

    def on_forward(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        calls[module] += 1
        if calls[module] > 1:
            raise RuntimeError(f"S_pri layerwise: {type(module).__name__} runs twice in one forward pass, "
                               f"so its per-sample gradients cannot be attributed; use method='vmap'")
        layer_input, version = args[0].detach(), args[0]._version

        def on_output_grad(output_grad: Tensor) -> None:
            if layer_input._version != version:
                raise RuntimeError(f"S_pri layerwise: the input of {type(module).__name__} was modified "
                                   f"in place after the layer ran; use method='vmap'")
            fold = folds.get(module)
            stats.extend(fold.stats(layer_input, output_grad, points) if fold is not None
                         else _layer_stats(module, layer_input, output_grad, points))

        output.register_hook(on_output_grad)

    handles = [module.register_forward_hook(on_forward) for module in layers]
    for conv, fold in folds.items():
        conv.forward, fold.norm.forward = fold.forward, _identity
    try:
        inputs = inputs.detach().requires_grad_(True)
        loss = 0.5 * F.cross_entropy(model(inputs), labels, reduction="sum")
        torch.autograd.grad(loss, inputs)
    finally:
        for conv, fold in folds.items():
            del conv.forward, fold.norm.forward
        for handle in handles:
            handle.remove()
    if len(stats) != expected_tensors:
        raise RuntimeError(f"S_pri layerwise: gradients reached {len(stats)} of {expected_tensors} "
                           f"parameter tensors (unused layers?); use method='vmap'")
    return stats


# ---------------------------------------------------------------------------------------------
# Engine 2: torch.func


def _vmap_gradient_stats(model: nn.Module, inputs: Tensor, labels: Tensor, points: int) -> GradientStats:
    """The same statistics via ``vmap(grad(...))`` over samples; works for any module type."""
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def sample_loss(params: dict[str, Tensor], image: Tensor, label: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (image.unsqueeze(0),))
        return 0.5 * F.cross_entropy(logits, label.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(parameters, inputs, labels)
    return [_materialised_stats(gradient, points) for gradient in per_sample.values()]

