"""The privacy score S_pri (docs/original-code.md §5.3), vectorised over images and interpolation points.

For an image x with label y, a noise image n and ``bins`` = K, the original code computes the
gradient g* = ∇θ L(x, y) of L = 0.5 · cross-entropy over every parameter tensor, then for
x_i = (i/K)·x + ((K−i)/K)·n, i = 0…K, the gradient g_i and the **unweighted mean over parameter
tensors** of cos(g_i[p], g*[p]). S_pri is the trapezoid mean of that curve over t = i/K ∈ [0, 1]
(the original's interval width cancels). Lower S_pri = gradients of nearby inputs say less about x.

The original runs K + 2 batch-1 forward/backward passes per image. Here every interpolation point
of several images is one sample of a single batched pass, and :mod:`ats.search.per_sample` reduces
the per-sample gradients to per-tensor dot products and norms on the device. Two facts make this
exact rather than approximate:

* the model is in eval mode, so BatchNorm uses running statistics and every sample's gradient is
  its own batch-1 gradient;
* x_K = 1·x + 0·n is bit-for-bit x, so g* is the per-sample gradient of the last point and needs no
  pass of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ats.search.per_sample import (
    GRADIENT_METHODS,
    GradientMethod,
    GradientStats,
    gradient_stats,
)

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default, which the original used.
DEFAULT_BINS = 20

# Memory per chunk that default_chunk_size aims for; a CUDA OOM halves the chunk (scoring.py).
_CHUNK_MEMORY_BUDGET_BYTES = {"cpu": 3 << 29, "cuda": 8 << 30}
_MAX_DEFAULT_CHUNK_POINTS = {"cpu": 96, "cuda": 4096}


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


def default_chunk_size(model: nn.Module, input_shape: Sequence[int], method: GradientMethod = "layerwise") -> int:
    """Interpolation points per pass that fit a memory budget on the model's device (1.5 GiB on
    CPU, 8 GiB on CUDA).

    A point costs about 1.25× the model's activations, plus two copies of the parameters when the
    ``vmap`` engine (``method``) materialises every per-sample gradient. The activations are measured by a
    forward pass of one (C, H, W) = ``input_shape`` input on the ``meta`` device, which computes
    shapes only. On the CPU a pass holds at most 96 points (4 images of 21): per point, larger
    passes were no faster there (docs/benchmarks.md), and they hold more memory. A GPU wants large
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
    if method == "vmap":
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
    method: GradientMethod = "layerwise",
) -> tuple[Tensor, Tensor]:
    """S_pri of every image and its gradient-similarity curve.

    ``images`` and ``noise`` are normalised float tensors (N, C, H, W) on the model's device,
    ``labels`` (N,) integer classes. Several policies are scored at once by concatenating their
    images. ``chunk_size`` bounds the interpolation points per pass (rounded down to whole images of
    bins+1 points, at least one image; default :func:`default_chunk_size`). ``method`` picks the
    engine of :mod:`ats.search.per_sample`: ``layerwise`` (registered layer types only; any other
    layer with parameters raises :class:`~ats.search.per_sample.UnregisteredLayerError`) or ``vmap``.

    Returns ``(scores (N,), curves (N, bins+1))``: curves[:, i] is the mean per-tensor cosine at
    x_i, curves[:, bins] = 1 up to rounding. Non-finite model outputs give NaN, never an error.
    """
    _check_inputs(images, labels, noise, bins, chunk_size, method)
    require_eval_mode(model, "S_pri")
    if not any(True for _ in model.parameters()):
        raise ValueError("S_pri: the model has no parameters")
    points = bins + 1
    chunk_points = chunk_size if chunk_size is not None else default_chunk_size(model, images.shape[1:], method)
    images_per_chunk = max(1, chunk_points // points)
    curves = images.new_empty(len(images), points)
    with torch.enable_grad():
        for start in range(0, len(images), images_per_chunk):
            stop = min(start + images_per_chunk, len(images))
            inputs = interpolation_path(images[start:stop], noise[start:stop], bins)
            targets = labels[start:stop].repeat_interleave(points)
            curves[start:stop] = _mean_cosine(gradient_stats(model, inputs, targets, points, method)).to(curves.dtype)
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
    dots = torch.stack([dot for dot, _ in stats.values()]).double()
    norms_sq = torch.stack([norm_sq for _, norm_sq in stats.values()]).double()
    return _cosine(dots, norms_sq).mean(dim=0)
