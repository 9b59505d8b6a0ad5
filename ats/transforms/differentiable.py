"""The augmentation pipeline as a differentiable function T_θ(x) of the image and of its random draw.

A policy-aware attacker (``docs/attacks.md``) knows the policy string but not the per-image draw,
so it learns the draw θ together with the untransformed image x. This module is the pipeline of
:mod:`ats.transforms.pipeline` (zero-pad 4 and crop, flip, one sub-policy) written for images in
[0, 1] of any float dtype and device, with the draw relaxed into a :class:`RelaxedDraw`:

* **crop offsets** are real numbers; the window is resampled with a linear (tent) kernel and zero
  fill, so at integer offsets it is the exact crop;
* **flips** stay booleans: a flip is applied exactly (columns reversed), never learned. Flipping
  commutes with the crop (``flip ∘ crop(o) = crop(o′) ∘ flip`` with the left offset mirrored) and
  precedes the policy, so T(x; flip) = T(flip(x); no flip, o′): no gradient can tell x from its
  mirror image, and a learned flip would have nothing to learn;
* **signs** are real numbers a ∈ [−1, 1] in place of ±1, the fraction of the op's known
  magnitude in its drawn direction:

  - translations shift by the integer PIL applies in either direction (⌊½ ± m·side⌋ pixels),
    interpolated linearly in a, resampled with the tent kernel and black fill: exact at a = ±1;
  - shears use the shear factor a·m with PIL's own cubic (a = −1 cubic convolution, edge-clamped
    taps, black outside): exact at a = ±1 but for PIL's final truncation to an integer;
  - colour, contrast, brightness and sharpness blend with the factor 1 + a·m, with PIL's
    degenerate images computed without rounding; the final truncation is dropped as well.

* ops without a random direction are known steps: the rotation (a fixed angle) is the exact
  nearest-neighbour gather of :mod:`ats.transforms.ops_batched`, linear in x; invert (1 − x) and
  solarize (x or 1 − x) are exact piecewise-linear maps; posterize, autocontrast and equalize run
  as the exact ``uint8`` op on the truncated image with a straight-through gradient (identity),
  because their exact forms are step functions whose gradient is zero almost everywhere;
* the sub-policy of a hybrid stays an integer: it is a discrete choice, which the attack tries
  one by one (:func:`draw_hypotheses`).

Error bound at the drawn parameters (:meth:`RelaxedDraw.from_draw`), against
``Preprocessor.augment`` / 255, for one op after the crop and flip: **0** (up to float rounding,
1e-6 in float32) for the crop, flip, translations, rotation and the unsigned ops, **below 1/255**
for shears and brightness (only the truncation differs), and **below 1.5/255** for colour,
contrast and sharpness (the truncation plus PIL's rounded degenerate image, scaled by
|1 − factor| ≤ 0.5). Ops in sequence can add their errors. A straight-through op truncates its
input as PIL truncated the previous op's output, so it mostly sees PIL's levels, but a level left
different by an approximate op before it can land on another step of its lookup table (equalize
can then move that pixel by tens of levels). The tests
(``tests/test_differentiable_transforms.py``) check every op 0…49 against these bounds; measured
figures are in ``docs/transforms.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ats.policies import ENHANCE_TRANSFORMS, Policy, operation
from ats.transforms.ops_batched import ROTATE_FILL, _gather_nearest, _nearest_tables, apply_op_batch
from ats.transforms.pipeline import CROP_PADDING, OUTPUT_SIZE, AugmentationDraw, _effective_mode, _max_crop_offset

#: PIL's luminance weights (``L = (19595 R + 38470 G + 7471 B) / 2¹⁶``), without its rounding.
LUMINANCE_WEIGHTS = (19595 / 65536, 38470 / 65536, 7471 / 65536)
#: Grey levels added before truncating a float image to ``uint8`` (see ``_grey_levels``).
LEVEL_ALLOWANCE = 1e-3


@dataclass(eq=False)
class RelaxedDraw:
    """The random choices of N augmentations with the continuous ones relaxed (tensors on one device).

    * ``crop_offsets``: N×2 float, (top, left) of the 32×32 window in the zero-padded image;
    * ``flips``: N bool (applied exactly, never learned: see the module docstring);
    * ``subpolicy``: N int64, the sub-policy each image gets;
    * ``signs``: N×max_ops float in [−1, 1]: op k of image n acts with ``signs[n, k]`` times its
      magnitude (±1 are the drawn directions; unsigned ops ignore their column).
    """

    crop_offsets: torch.Tensor
    flips: torch.Tensor
    subpolicy: torch.Tensor
    signs: torch.Tensor

    @staticmethod
    def from_draw(draw: AugmentationDraw, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> RelaxedDraw:
        """The drawn parameters ``draw`` as a relaxed draw, at which T_θ reproduces the pipeline."""
        return RelaxedDraw(draw.crop_offsets.to(device, dtype), draw.flips.to(device),
                           draw.subpolicy.to(device), draw.signs.to(device, dtype))

    def __len__(self) -> int:
        return self.flips.shape[0]

    def __getitem__(self, index: slice | torch.Tensor) -> RelaxedDraw:
        return RelaxedDraw(self.crop_offsets[index], self.flips[index], self.subpolicy[index], self.signs[index])

    @staticmethod
    def concat(draws: Sequence[RelaxedDraw]) -> RelaxedDraw:
        return RelaxedDraw(*(torch.cat(parts) for parts in zip(
            *((d.crop_offsets, d.flips, d.subpolicy, d.signs) for d in draws))))


# --------------------------------------------------------------------------------------------
# Resampling along one axis
# --------------------------------------------------------------------------------------------


def _taps(images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``images[..., h, positions[n, h, w]]`` for N×C×H×W images and N×H×W' integer positions."""
    batch, channels, height = images.shape[:3]
    index = positions.expand(batch, height, positions.shape[-1]).unsqueeze(1).expand(-1, channels, -1, -1)
    return images.gather(3, index)


def _linear_along_width(images: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Output column j samples input column ``source[n, h, j]`` (a real pixel index) with the tent
    kernel; taps outside the image are black. Exact (one tap of weight 1) at integer positions."""
    width = images.shape[-1]
    first = source.detach().floor()
    fraction = source - first
    first = first.long()
    result = 0
    for offset, weight in ((0, 1 - fraction), (1, fraction)):
        position = first + offset
        inside = (position >= 0) & (position < width)
        result = result + _taps(images, position.clamp(0, width - 1)) * (weight * inside).unsqueeze(1)
    return result


def _pil_cubic_along_width(images: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """PIL's ``BICUBIC`` (a = −1 cubic convolution, edge-clamped taps) at pixel index ``source``;
    the same Horner form as :func:`ats.transforms.ops_batched._cubic`, without truncation."""
    width = images.shape[-1]
    first = source.detach().floor()
    d = (source - first).unsqueeze(1)
    first = first.long()
    v1, v2, v3, v4 = (_taps(images, (first + offset).clamp(0, width - 1)) for offset in (-1, 0, 1, 2))
    p2, p3, p4 = v3 - v1, 2 * (v1 - v2) + v3 - v4, v2 - v1 + v4 - v3
    return v2 + d * (p2 + d * (p3 + d * p4))


def _along(axis: str, resample, images: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Resample along ``"x"`` (width) or ``"y"`` (height); ``source`` is shaped like the output
    plane (N×H×W', or broadcastable), transposed for ``"y"`` as the images are."""
    if axis == "x":
        return resample(images, source)
    return resample(images.transpose(-1, -2), source.transpose(-1, -2)).transpose(-1, -2)


# --------------------------------------------------------------------------------------------
# The ops
# --------------------------------------------------------------------------------------------


def _translate(images: torch.Tensor, axis: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """Shift by the pixels PIL's nearest translation moves in each direction, interpolated in a."""
    side = images.shape[-1] if axis == "x" else images.shape[-2]
    forward = float(int((0.5 + magnitude * side) // 1))  # ⌊½ + m·side⌋, the shift at a = +1
    backward = float(int((0.5 - magnitude * side) // 1))  # at a = −1
    shift = backward + (signs + 1) / 2 * (forward - backward)
    steps = torch.arange(side, dtype=images.dtype, device=images.device)
    source = (steps + shift[:, None]).unsqueeze(1 if axis == "x" else 2)  # N×1×W or N×H×1
    return _along(axis, _linear_along_width, images, source)


def _shear(images: torch.Tensor, axis: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """Output (x, y) samples input (x + s·(y + ½), y) (shearX) or (x, y + s·(x + ½)) (shearY),
    s = a·m, with PIL's cubic; black where the sample lies outside the image."""
    height, width = images.shape[-2:]
    ys = torch.arange(height, dtype=images.dtype, device=images.device)[:, None]
    xs = torch.arange(width, dtype=images.dtype, device=images.device)[None, :]
    shear = (signs * magnitude).view(-1, 1, 1)
    moving, across, size = (xs, ys, width) if axis == "x" else (ys, xs, height)
    source = moving + shear * (across + 0.5)  # pixel index: PIL's coordinate minus ½
    inside = (source.detach() + 0.5 >= 0) & (source.detach() + 0.5 < size)
    sampled = _along(axis, _pil_cubic_along_width, images, source)
    return sampled.clamp(0, 1) * inside.unsqueeze(1)


def _rotate(images: torch.Tensor, magnitude: float) -> torch.Tensor:
    """The exact nearest-neighbour rotation (a known angle), grey fill: a gather, linear in x."""
    height, width = images.shape[-2:]
    if magnitude % 360.0 == 0:
        return images
    source = _nearest_tables(height, width, "rotate", float(magnitude), images.device)[0]
    return _gather_nearest(images, source.expand(images.shape[0], -1), ROTATE_FILL / 255)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """PIL's luminance of RGB images (N×1×H×W) without its rounding; grey images are their own."""
    if images.shape[1] == 1:
        return images
    red, green, blue = images.unbind(1)
    weights = LUMINANCE_WEIGHTS
    return (red * weights[0] + green * weights[1] + blue * weights[2]).unsqueeze(1)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """PIL's 3×3 ``SMOOTH`` filter (1 1 1 / 1 5 1 / 1 1 1, ÷13) inside, the border copied."""
    height, width = images.shape[-2:]
    if height < 3 or width < 3:
        return images
    channels = images.shape[1]
    kernel = torch.ones(3, 3, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(channels, 1, 3, 3)
    inner = F.conv2d(images, kernel, groups=channels)
    return torch.cat([images[:, :, :1], torch.cat([images[:, :, 1:-1, :1], inner, images[:, :, 1:-1, -1:]], 3),
                      images[:, :, -1:]], 2)


def _enhance(images: torch.Tensor, transform: str, magnitude: float, signs: torch.Tensor) -> torch.Tensor:
    """``blend(degenerate, image, 1 + a·m)``, clipped to [0, 1] as PIL clips."""
    if transform == "color":
        degenerate = luminance(images)
    elif transform == "contrast":
        degenerate = luminance(images).mean(dim=(1, 2, 3), keepdim=True)
    elif transform == "brightness":
        degenerate = torch.zeros_like(images)
    else:  # sharpness
        degenerate = _smooth(images)
    factors = (1 + signs * magnitude).view(-1, 1, 1, 1)
    return (degenerate + factors * (images - degenerate)).clamp(0, 1)


def _grey_levels(images: torch.Tensor) -> torch.Tensor:
    """``images`` (in [0, 1]) as ``uint8`` levels, truncated as PIL truncates every op's output.

    The approximate ops above skip that truncation, so truncating here hands the next exact op the
    levels PIL would have; the small allowance keeps values already on a level (k/255 up to float
    rounding) on it.
    """
    return (images.detach().clamp(0, 1) * 255 + LEVEL_ALLOWANCE).floor().clamp(max=255).to(torch.uint8)


def _straight_through(images: torch.Tensor, op_index: int) -> torch.Tensor:
    """The exact op on the rounded image, with the gradient of the identity."""
    exact = apply_op_batch(_grey_levels(images), op_index, torch.ones(images.shape[0], device=images.device))
    return exact.to(images.dtype) / 255 + (images - images.detach())


def differentiable_op(images: torch.Tensor, op_index: int, signs: torch.Tensor) -> torch.Tensor:
    """Op ``op_index`` on images in [0, 1] (N×C×H×W float), image n with relaxed sign ``signs[n]``."""
    op = operation(op_index)
    transform, magnitude = op.transform, op.magnitude
    if transform in ("translateX", "translateY"):
        return _translate(images, transform[-1].lower(), magnitude, signs)
    if transform in ("shearX", "shearY"):
        return _shear(images, transform[-1].lower(), magnitude, signs)
    if transform == "rotate":
        return _rotate(images, magnitude)
    if transform in ENHANCE_TRANSFORMS:
        return _enhance(images, transform, magnitude, signs)
    if transform == "invert":
        return 1 - images
    if transform == "solarize":
        return torch.where(_grey_levels(images) < magnitude, images, 1 - images)
    return _straight_through(images, op_index)  # posterize, autocontrast, equalize


def differentiable_subpolicy(images: torch.Tensor, ops: Sequence[int], signs: torch.Tensor) -> torch.Tensor:
    """The ops of one sub-policy in order; ``signs[n, k]`` directs op k on image n."""
    for column, op_index in enumerate(ops):
        images = differentiable_op(images, op_index, signs[:, column])
    return images


def _crop(images: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The 32×32 window at real (top, left) ``offsets`` of the zero-padded images (tent kernel)."""
    steps = torch.arange(OUTPUT_SIZE, dtype=images.dtype, device=images.device) - CROP_PADDING
    rows = (steps + offsets[:, :1]).unsqueeze(2)  # N×32×1 source rows
    columns = (steps + offsets[:, 1:]).unsqueeze(1)  # N×1×32 source columns
    return _along("x", _linear_along_width, _along("y", _linear_along_width, images, rows), columns)


def differentiable_augment(images: torch.Tensor, mode: str, policy: Policy, draw: RelaxedDraw | None) -> torch.Tensor:
    """T_θ(x): ``Preprocessor.augment`` for images in [0, 1] (N×C×S×S float), differentiable in the
    images and in ``draw``'s crop offsets and signs; N×C×32×32.

    ``"plain"`` needs no draw: it is the identity, or a bilinear resize for S ≠ 32.
    """
    mode = _effective_mode(mode, policy)
    if mode == "plain":
        if images.shape[-1] == OUTPUT_SIZE:
            return images
        return F.interpolate(images, size=(OUTPUT_SIZE, OUTPUT_SIZE), mode="bilinear", align_corners=False)
    if draw is None or len(draw) != images.shape[0]:
        raise ValueError(f"mode {mode!r} needs a draw for each of the {images.shape[0]} images")
    windows = _crop(images, draw.crop_offsets)
    windows = torch.where(draw.flips.view(-1, 1, 1, 1), windows.flip(-1), windows)
    if mode == "crop":
        return windows
    if len(policy) == 1:
        return differentiable_subpolicy(windows, policy[0], draw.signs)
    result = windows
    for choice, sub_policy in enumerate(policy):
        members = (draw.subpolicy == choice).nonzero().squeeze(1)
        if members.numel():
            transformed = differentiable_subpolicy(windows[members], sub_policy, draw.signs[members])
            result = result.index_put((members,), transformed)
    return result


# --------------------------------------------------------------------------------------------
# What a policy-aware attacker does not know
# --------------------------------------------------------------------------------------------


def has_unknown_draw(mode: str, policy: Policy) -> bool:
    """Whether the preprocessing has random choices (everything but ``"plain"``)."""
    return _effective_mode(mode, policy) != "plain"


def centred_crop_offset(image_size: int) -> float:
    """The middle of the crop offsets 0…image_size+8−32, where an attack starts its crop."""
    return _max_crop_offset(image_size) / 2


def learned_sign_columns(policy: Policy, subpolicy: torch.Tensor, columns: int) -> torch.Tensor:
    """N×columns bool: which sign columns are unknown for images given sub-policies ``subpolicy``.

    Unknown: the direction of a signed op of non-zero magnitude. Columns of unsigned ops, of
    zero-magnitude ops (``color`` at 0 is the identity either way) and beyond the sub-policy's
    length are known or unused.
    """
    table = torch.zeros(max(len(policy), 1), columns, dtype=torch.bool)
    for choice, sub_policy in enumerate(policy):
        for column, op_index in enumerate(sub_policy):
            table[choice, column] = operation(op_index).signed and operation(op_index).magnitude != 0
    return table.to(subpolicy.device)[subpolicy]


def draw_hypotheses(mode: str, policy: Policy, image_size: int, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> RelaxedDraw:
    """The starting draws a policy-aware attack tries, in a fixed order.

    The discrete unknowns are enumerated: every sub-policy, and for each every direction (±1) of
    its signed ops (``learned_sign_columns``), first all +1. The crop starts centred and unflipped.
    ``"crop"`` mode has one hypothesis (no signs); ``"plain"`` has none to learn and is rejected.
    """
    mode = _effective_mode(mode, policy)
    if mode == "plain":
        raise ValueError("plain preprocessing has no random draw to learn")
    sub_policies = policy if mode == "policy" else ()
    columns = max((len(sub) for sub in sub_policies), default=0)
    choices, sign_rows = [], []
    for choice in range(len(sub_policies)):
        unknown = learned_sign_columns(policy, torch.tensor([choice]), columns)[0].tolist()
        alternatives = [(1.0, -1.0) if free else (1.0,) for free in unknown]
        for signs in itertools.product(*alternatives):
            choices.append(choice)
            sign_rows.append(signs)
    if not sub_policies:
        choices, sign_rows = [0], [()]
    count = len(choices)
    return RelaxedDraw(
        crop_offsets=torch.full((count, 2), centred_crop_offset(image_size), dtype=dtype, device=device),
        flips=torch.zeros(count, dtype=torch.bool, device=device),
        subpolicy=torch.tensor(choices, dtype=torch.int64, device=device),
        signs=torch.tensor(sign_rows, dtype=dtype, device=device).reshape(count, columns),
    )
