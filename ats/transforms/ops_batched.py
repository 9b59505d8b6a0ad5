"""Batched torch implementation of the ATS ops, reproducing PIL's arithmetic (docs/original-code.md §2.1).

Every function takes ``uint8`` tensors ``N×C×H×W`` on any device and transforms the whole batch
with tensor operations (no Python loop over images), each image with its own random direction
(``signs``, one ±1 per image). The results are meant to be *pixel-identical* to
:mod:`ats.transforms.ops_pil`, so every op replays PIL's own arithmetic rather than a "similar"
torchvision op:

* enhancements (colour, contrast, brightness, sharpness) blend in ``float32`` and truncate, as
  ``ImagingBlend`` does; the sharpness "degenerate" image is PIL's 3×3 ``SMOOTH`` filter with its
  float32 summation order, +0.5 rounding bias and untouched one-pixel border;
* luminance is PIL's fixed-point ``L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16``;
* autocontrast and equalize rebuild ``ImageOps``'s lookup tables per image and channel;
* geometric ops gather pixels through sampling tables computed on the CPU with PIL's own
  coordinate arithmetic: 16.16 fixed point for the nearest-neighbour rotation, sequential double
  accumulation for translations, and PIL's double-precision bicubic polynomial (edge-clamped
  taps, truncation) for shears.

Channels: ops act on RGB (C = 3) images, or on grey images (C = 1) whose luminance is the image
itself, which is what the original's grey→RGB→op→grey round trip computes for Fashion-MNIST. Any
other channel count is processed channel by channel, each channel as a grey image.

Divisions are always tensor ÷ tensor: torch evaluates ``scalar / tensor`` as a reciprocal times
the scalar, and on CUDA ``tensor / scalar`` likewise, and neither is correctly rounded like the
C and Python divisions PIL performs.

Eager mode only: the float operations are issued one by one so no multiply-add gets fused; code
that ``torch.compile``s these functions may lose bit-exactness.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

from ats.policies import ENHANCE_TRANSFORMS, TRANSFORMS, operation

PIL_PRECISION_BITS = 22  # fixed-point precision of PIL's resampling coefficients (8-bit images)
ROTATE_FILL = 128  # grey the original composites rotations over (ops_pil.ROTATE_FILL)


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


def luminance(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``convert("L")`` of RGB images (``uint8`` N×1×H×W); grey images are returned as is."""
    if images.shape[1] == 1:
        return images
    red, green, blue = images.to(torch.int32).unbind(1)
    grey = (red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16
    return grey.to(torch.uint8).unsqueeze(1)


def _blend(degenerate: torch.Tensor, images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """``Image.blend(degenerate, images, factor)``: ``degenerate + factor·(images − degenerate)``.

    PIL computes in ``float32`` (the factor is a C ``float``) and truncates after clipping to
    [0, 255]; ``factors`` is one ``float32`` per image, shaped to broadcast (N×1×1×1).
    """
    base = degenerate.to(torch.float32)
    blended = base + factors * (images.to(torch.float32) - base)
    return blended.clamp_(0, 255).floor_().to(torch.uint8)


def _enhance_factors(magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """``1 + m·s`` computed in double like Python, then rounded to ``float32`` like PIL's C call."""
    return (1.0 + magnitude * signs.to(torch.float64)).to(torch.float32).view(-1, 1, 1, 1)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageFilter.SMOOTH`` (3×3 kernel 1 1 1 / 1 5 1 / 1 1 1, divided by 13).

    Float32 with PIL's operation order: bias 0.5, then the row below, the centre row and the row
    above, each as ``(left·k + centre·k) + right·k``; truncation. The one-pixel border is copied,
    and images smaller than 3×3 are returned unchanged, as PIL does.
    """
    height, width = images.shape[-2:]
    if height < 3 or width < 3:
        return images
    pixels = images.to(torch.float32)
    edge_weight = float(np.float32(1) / np.float32(13))  # PIL divides the float32 kernel by 13
    centre_weight = float(np.float32(5) / np.float32(13))
    left, middle, right = pixels[..., :-2], pixels[..., 1:-1], pixels[..., 2:]
    edge_rows = left * edge_weight + middle * edge_weight + right * edge_weight
    centre_rows = left * edge_weight + middle * centre_weight + right * edge_weight
    total = 0.5 + edge_rows[:, :, 2:]
    total += centre_rows[:, :, 1:-1]
    total += edge_rows[:, :, :-2]
    smoothed = images.clone()
    smoothed[:, :, 1:-1, 1:-1] = total.clamp_(0, 255).floor_().to(torch.uint8)
    return smoothed


def _enhance(images: torch.Tensor, transform: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.<transform>(img).enhance(1 + m·s)`` for every image."""
    if transform == "color":
        degenerate = luminance(images)
    elif transform == "contrast":
        grey = luminance(images).flatten(1).to(torch.int64)
        sums = grey.sum(1).to(torch.float64)
        mean = sums / torch.full_like(sums, grey.shape[1])  # tensor ÷ tensor, see the module docstring
        degenerate = torch.floor(mean + 0.5).view(-1, 1, 1, 1)
    elif transform == "brightness":
        degenerate = torch.zeros((), device=images.device)
    else:  # sharpness
        degenerate = _smooth(images)
    return _blend(degenerate, images, _enhance_factors(magnitude, signs))


def _posterize(images: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the ``bits`` most significant bits of every value (``ImageOps.posterize``)."""
    return images & (~((1 << (8 - bits)) - 1) & 0xFF)


def _solarize(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert every value at or above ``threshold`` (``ImageOps.solarize``).

    For integers ``v < threshold`` ⇔ ``v < ceil(threshold)``, an integer comparison on ``uint8``.
    """
    limit = math.ceil(threshold)
    if limit > 255:
        return images
    return torch.where(images < limit, images, 255 - images)


def _apply_tables(images: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Map every value through its image's and channel's 256-entry table (N×C×256), like PIL's ``point``."""
    flat = images.flatten(2).to(torch.int64)
    return tables.gather(2, flat).to(torch.uint8).view_as(images)


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0): stretch each channel's [min, max] to [0, 255].

    PIL's table entry is ``int(i·scale + offset)`` in double with ``scale = 255/(hi − lo)`` and
    ``offset = −lo·scale``, clipped to [0, 255]; a flat channel keeps the identity table.
    """
    flat = images.flatten(2)
    low = flat.amin(2, keepdim=True).to(torch.float64)
    high = flat.amax(2, keepdim=True).to(torch.float64)
    scale = torch.full_like(high, 255.0) / (high - low).clamp(min=1)  # tensor ÷ tensor, see the module docstring
    offset = -low * scale
    levels = torch.arange(256, dtype=torch.float64, device=images.device)
    stretched = (levels * scale + offset).trunc_().clamp_(0, 255)
    return _apply_tables(images, torch.where(high > low, stretched, levels).to(torch.int64))


def _equalize(images: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize``: per channel, ``table[i] = (step//2 + #values below i) // step``.

    ``step = (pixel count − count of the brightest value) // 255``; a channel with ``step == 0``
    (for example a constant one) keeps the identity table; entries are clipped to 255 as PIL's
    ``point`` does.
    """
    flat = images.flatten(2).to(torch.int64)
    counts = torch.zeros(*flat.shape[:2], 256, dtype=torch.int64, device=images.device)
    counts.scatter_add_(2, flat, torch.ones_like(flat))
    brightest_count = counts.gather(2, flat.amax(2, keepdim=True))
    step = (flat.shape[2] - brightest_count) // 255
    below = counts.cumsum(2) - counts
    equalizing = ((step // 2 + below) // step.clamp(min=1)).clamp_(max=255)
    identity = torch.arange(256, device=images.device)
    return _apply_tables(images, torch.where(step > 0, equalizing, identity))


# --------------------------------------------------------------------------------------------
# Geometric ops: sampling tables computed once per (size, parameters) with PIL's arithmetic
# --------------------------------------------------------------------------------------------


def _pil_coordinate(value: float) -> int:
    """PIL's ``COORD``: ``-1`` for negative values (outside), truncation otherwise."""
    return -1 if value < 0.0 else int(value)


def _nearest_affine_table(height: int, width: int, a: tuple[float, ...]) -> np.ndarray:
    """Flat source index (or -1 = fill) of every output pixel of PIL's nearest affine transform.

    PIL has two nearest-neighbour engines: pure scale/translation matrices go through
    ``ImagingScaleAffine`` (coordinates accumulated in double), all others through
    ``affine_fixed`` (16.16 fixed point). Both are replayed exactly.
    """
    if a[1] == 0 and a[3] == 0:
        columns = []
        position = a[2] + a[0] * 0.5
        for _ in range(width):
            columns.append(_pil_coordinate(position))
            position += a[0]
        rows = []
        position = a[5] + a[4] * 0.5
        for _ in range(height):
            rows.append(_pil_coordinate(position))
            position += a[4]
        source_x = np.broadcast_to(np.array(columns), (height, width))
        source_y = np.broadcast_to(np.array(rows)[:, None], (height, width))
    else:
        def fixed(value: float) -> int:
            return math.floor(value * 65536.0 + 0.5)

        corners = [(0, 0), (width, height), (0, height), (width, 0)]
        if not all(abs(x * a[0] + y * a[1] + a[2]) < 32768 and abs(x * a[3] + y * a[4] + a[5]) < 32768
                   for x, y in corners):
            raise ValueError(f"{width}×{height} image too large for PIL's fixed-point affine transform")
        x_step, x_row_step = fixed(a[0]), fixed(a[1])
        y_step, y_row_step = fixed(a[3]), fixed(a[4])
        x_start = fixed(a[2] + a[0] * 0.5 + a[1] * 0.5)
        y_start = fixed(a[5] + a[3] * 0.5 + a[4] * 0.5)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.int64)
        source_x = (x_start + ys * x_row_step + xs * x_step) >> 16
        source_y = (y_start + ys * y_row_step + xs * y_step) >> 16
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    return np.where(inside, source_y * width + source_x, -1).reshape(-1)


def _rotation_matrix(height: int, width: int, degrees: float) -> tuple[float, ...]:
    """The inverse affine matrix that PIL's ``Image.rotate`` builds (rotation about the centre).

    Same float operations as PIL: the angle reduced modulo 360, the trigonometric terms rounded
    to 15 decimals, and the translation ``M·(−centre) + centre``.
    """
    radians = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(radians), 15), round(math.sin(radians), 15)
    minus_sin = round(-math.sin(radians), 15)
    centre_x, centre_y = width / 2, height / 2
    offset_x = cos * -centre_x + sin * -centre_y + 0.0 + centre_x
    offset_y = minus_sin * -centre_x + cos * -centre_y + 0.0 + centre_y
    return (cos, sin, offset_x, minus_sin, cos, offset_y)


@functools.lru_cache(maxsize=256)
def _nearest_tables(height: int, width: int, transform: str, magnitude: float, device: torch.device) -> torch.Tensor:
    """Source-index tables (2×HW, row 0 for sign +1, row 1 for sign −1) of a nearest-neighbour op."""
    tables = []
    for sign in (1, -1):
        if transform == "translateX":
            matrix = (1.0, 0.0, magnitude * width * sign, 0.0, 1.0, 0.0)
        elif transform == "translateY":
            matrix = (1.0, 0.0, 0.0, 0.0, 1.0, magnitude * height * sign)
        else:  # rotate: unsigned, both rows equal
            matrix = _rotation_matrix(height, width, magnitude)
        tables.append(_nearest_affine_table(height, width, matrix))
    return torch.from_numpy(np.stack(tables)).to(device)


def _gather_nearest(images: torch.Tensor, source: torch.Tensor, fill: int) -> torch.Tensor:
    """Output pixel k of image n = input pixel ``source[n, k]``, or ``fill`` where it is -1."""
    batch, channels, height, width = images.shape
    flat = images.reshape(batch, channels, height * width)
    padded = torch.cat([flat, flat.new_full((batch, channels, 1), fill)], dim=2)
    index = torch.where(source < 0, height * width, source)
    return padded.gather(2, index.unsqueeze(1).expand(batch, channels, -1)).view_as(images)


def _nearest(images: torch.Tensor, transform: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """Translations (black fill) and the rotation (grey 128 fill), nearest neighbour."""
    height, width = images.shape[-2:]
    if transform == "rotate" and magnitude % 360.0 == 0:
        return images  # PIL returns a copy for a zero rotation
    tables = _nearest_tables(height, width, transform, float(magnitude), images.device)
    source = tables[(signs < 0).long()]
    return _gather_nearest(images, source, ROTATE_FILL if transform == "rotate" else 0)


@functools.lru_cache(maxsize=256)
def _shear_tables(height: int, width: int, transform: str, magnitude: float,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PIL's bicubic sampling plan of a shear, for signs +1 (index 0) and −1 (index 1).

    A shear moves pixels along one axis only (x for shearX, y for shearY): along the other axis the
    sampling position is a pixel centre, PIL's fractional offset there is exactly 0 and its cubic
    returns the centre tap unchanged. So only the cubic along the shear axis is evaluated. Returns
    ``taps`` (2×4×HW flat source indices along that axis, edge-clamped), ``offsets`` (2×HW
    fractional positions between taps 1 and 2, double) and ``inside`` (2×HW; outside → black).
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    taps, offsets, insides = [], [], []
    for sign in (1, -1):
        shear = magnitude * sign
        a = (1.0, shear, 0.0, 0.0, 1.0, 0.0) if transform == "shearX" else (1.0, 0.0, 0.0, shear, 1.0, 0.0)
        # PIL's affine_transform: (a0·(x+½) + a1·(y+½)) + a2, in double, one operation at a time.
        source_x = a[0] * (xs + 0.5) + a[1] * (ys + 0.5) + a[2]
        source_y = a[3] * (xs + 0.5) + a[4] * (ys + 0.5) + a[5]
        insides.append(((source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)).reshape(-1))
        moving, size = (source_x, width) if transform == "shearX" else (source_y, height)
        centre = moving - 0.5
        first = np.floor(centre)
        offsets.append((centre - first).reshape(-1))
        positions = np.clip(first.astype(np.int64)[None] + np.arange(-1, 3)[:, None, None], 0, size - 1)
        if transform == "shearX":
            flat = ys.astype(np.int64)[None] * width + positions
        else:
            flat = positions * width + xs.astype(np.int64)[None]
        taps.append(flat.reshape(4, -1))
    return tuple(torch.from_numpy(np.stack(values)).to(device) for values in (taps, offsets, insides))


def _cubic(taps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """PIL's ``BICUBIC`` macro (the a = −1 cubic convolution) on four integer taps.

    ``taps`` is ``…×4×HW`` integer pixel values, ``offsets`` the double fractional positions. PIL
    forms the polynomial coefficients from the integer taps (exact in any order) and then
    evaluates ``p1 + d·(p2 + d·(p3 + d·p4))`` in double; the Horner steps below are the same
    double operations in the same order.
    """
    v1, v2, v3, v4 = taps.to(torch.int16).unbind(-2)
    p2 = (v3 - v1).to(torch.float64)
    p3 = (2 * (v1 - v2) + v3 - v4).to(torch.float64)
    p4 = (v2 - v1 + v4 - v3).to(torch.float64)
    return p4.mul_(offsets).add_(p3).mul_(offsets).add_(p2).mul_(offsets).add_(v2)


def _bicubic_shear(images: torch.Tensor, transform: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """``img.transform(AFFINE, shear, BICUBIC, fillcolor=black)`` for every image."""
    batch, channels, height, width = images.shape
    taps, offsets, inside = _shear_tables(height, width, transform, float(magnitude), images.device)
    choice = (signs < 0).long()
    index = taps[choice].reshape(batch, 1, 4 * height * width).expand(batch, channels, -1)
    values = images.reshape(batch, channels, height * width).gather(2, index)
    sampled = _cubic(values.unflatten(2, (4, height * width)), offsets[choice].unsqueeze(1))
    result = sampled.clamp_(0, 255).floor_().to(torch.uint8)
    return torch.where(inside[choice].unsqueeze(1), result, 0).view_as(images)


# --------------------------------------------------------------------------------------------
# Resizing (used by the pipeline for Fashion-MNIST's 28 → 32 rescale)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _bilinear_coefficients(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    """PIL's fixed-point bilinear resampling weights as an out×in matrix (``float64``, integer valued).

    Mirrors ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` of PIL's ``Resample.c``: a triangle
    filter widened by the downscaling factor, normalised per output pixel, scaled by 2²² and rounded.
    """
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for out_index in range(out_size):
        centre = (out_index + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        weights = [max(0.0, 1.0 - abs((x - centre + 0.5) * (1.0 / filter_scale))) for x in range(first, last)]
        total = sum(weights)
        for x, weight in zip(range(first, last), weights):
            normalised = weight / total if total else weight
            matrix[out_index, x] = math.trunc(normalised * (1 << PIL_PRECISION_BITS)
                                              + (0.5 if normalised >= 0 else -0.5))
    return torch.from_numpy(matrix).to(device)


def _resample_last_axis(images: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """One PIL resampling pass along the last axis: fixed-point sum, +2²¹ rounding, clip to uint8."""
    sums = torch.matmul(images.to(torch.float64), coefficients.T).to(torch.int64)  # exact: < 2⁵³
    return ((sums + (1 << (PIL_PRECISION_BITS - 1))) >> PIL_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def resize_bilinear(images: torch.Tensor, size: int) -> torch.Tensor:
    """``img.resize((size, size), BILINEAR)`` for a batch: horizontal pass, then vertical, as PIL."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    horizontal = _resample_last_axis(images, _bilinear_coefficients(width, size, images.device))
    vertical = _resample_last_axis(horizontal.transpose(-1, -2), _bilinear_coefficients(height, size, images.device))
    return vertical.transpose(-1, -2).contiguous()


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _apply(images: torch.Tensor, transform: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """Dispatch one transform on RGB or grey images with validated per-image signs on their device."""
    if transform in ENHANCE_TRANSFORMS:
        return _enhance(images, transform, magnitude, signs)
    if transform in ("translateX", "translateY", "rotate"):
        return _nearest(images, transform, magnitude, signs)
    if transform in ("shearX", "shearY"):
        return _bicubic_shear(images, transform, magnitude, signs)
    if transform == "posterize":
        return _posterize(images, int(magnitude))
    if transform == "solarize":
        return _solarize(images, magnitude)
    if transform == "autocontrast":
        return _autocontrast(images)
    if transform == "equalize":
        return _equalize(images)
    return 255 - images  # invert


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        described = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise ValueError(f"expected a uint8 N×C×H×W tensor, got {described}")


def _check_signs(signs: torch.Tensor, expected_shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Signs as a tensor on ``device``; ``ValueError`` naming them unless shaped right and all ±1."""
    signs = torch.as_tensor(signs, device=device)
    if tuple(signs.shape) != expected_shape:
        raise ValueError(f"signs have shape {tuple(signs.shape)}, expected {expected_shape}")
    if signs.numel() and not bool((signs.abs() == 1).all()):
        raise ValueError(f"signs must all be +1 or -1, got values {torch.unique(signs).tolist()}")
    return signs


def apply_subpolicy_batch(images: torch.Tensor, ops: Sequence[int], signs: torch.Tensor) -> torch.Tensor:
    """Apply the ops of one sub-policy in order to every image; ``signs[n, k]`` directs op k on image n.

    ``images``: ``uint8`` N×C×H×W; ``signs``: N×len(ops) of ±1 (any dtype, any device). Returns a
    ``uint8`` tensor of the same shape on the images' device.
    """
    _check_images(images)
    transforms = [(operation(op_index).transform, operation(op_index).magnitude) for op_index in ops]
    batch, channels, height, width = images.shape
    signs = _check_signs(signs, (batch, len(transforms)), images.device)
    if channels not in (1, 3):  # each channel becomes a grey image of its own
        images = images.reshape(batch * channels, 1, height, width)
        signs = signs.repeat_interleave(channels, dim=0)
    for column, (transform, magnitude) in enumerate(transforms):
        images = _apply(images, transform, magnitude, signs[:, column])
    return images.reshape(batch, channels, height, width)


def apply_transform_batch(images: torch.Tensor, transform: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """Apply one ``transform`` at ``magnitude`` to every image, image n in direction ``signs[n]``.

    The transform-level twin of :func:`ats.transforms.ops_pil.apply_transform_pil`; it also serves
    transforms the 50-op list does not use (``shearX``) and magnitudes it does not use.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)}")
    _check_images(images)
    batch, channels, height, width = images.shape
    signs = _check_signs(signs, (batch,), images.device)
    if channels not in (1, 3):
        images = images.reshape(batch * channels, 1, height, width)
        signs = signs.repeat_interleave(channels)
    return _apply(images, transform, magnitude, signs).reshape(batch, channels, height, width)


def apply_op_batch(images: torch.Tensor, op_index: int, signs: torch.Tensor) -> torch.Tensor:
    """Apply op ``op_index`` (0…49) to every image, image n in direction ``signs[n]``."""
    op = operation(op_index)
    return apply_transform_batch(images, op.transform, op.magnitude, signs)
