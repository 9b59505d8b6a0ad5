"""Per-image PIL reference implementation of the ATS ops, with the original semantics (docs/original-code.md §2.1).

This is the yardstick for :mod:`ats.transforms.ops_batched`: it calls the same PIL functions with
the same arguments as the original ``autoaugment.py``, except that the random direction of a signed
op is an explicit argument (``sign`` = +1 or -1) instead of a ``random.choice`` inside the op, so a
test or a benchmark can replay exactly the same draw in both implementations.

Images are ``RGB`` or ``L`` PIL images. An ``L`` image is processed the way the original processed
Fashion-MNIST: replicated to RGB (so the black RGB fill colour applies), transformed, and converted
back to ``L`` with PIL's luminance formula. Every op maps a grey RGB image to a grey RGB image, so
this equals transforming the single channel with "the image is its own luminance".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image, ImageEnhance, ImageOps

from ats.policies import TRANSFORMS, operation

BLACK = (0, 0, 0)
ROTATE_FILL = (128, 128, 128, 128)  # the original composites rotations over mid-grey

_TransformFunction = Callable[[Image.Image, float, int], Image.Image]


def _affine(img: Image.Image, coefficients: tuple[float, ...], resample: Image.Resampling) -> Image.Image:
    """PIL affine warp; output pixel (x, y) samples input (a·x + b·y + c, d·x + e·y + f), black fill."""
    return img.transform(img.size, Image.Transform.AFFINE, coefficients, resample, fillcolor=BLACK)


def _rotate_over_grey(img: Image.Image, degrees: float) -> Image.Image:
    """Rotate counter-clockwise about the centre (nearest); the vacated corners become grey 128."""
    rotated = img.convert("RGBA").rotate(degrees)
    grey = Image.new("RGBA", rotated.size, ROTATE_FILL)
    return Image.composite(rotated, grey, rotated).convert(img.mode)


_TRANSFORM_FUNCTIONS: dict[str, _TransformFunction] = {
    "shearX": lambda img, m, s: _affine(img, (1, m * s, 0, 0, 1, 0), Image.Resampling.BICUBIC),
    "shearY": lambda img, m, s: _affine(img, (1, 0, 0, m * s, 1, 0), Image.Resampling.BICUBIC),
    "translateX": lambda img, m, s: _affine(img, (1, 0, m * img.width * s, 0, 1, 0), Image.Resampling.NEAREST),
    "translateY": lambda img, m, s: _affine(img, (1, 0, 0, 0, 1, m * img.height * s), Image.Resampling.NEAREST),
    "rotate": lambda img, m, s: _rotate_over_grey(img, m),
    "color": lambda img, m, s: ImageEnhance.Color(img).enhance(1 + m * s),
    "contrast": lambda img, m, s: ImageEnhance.Contrast(img).enhance(1 + m * s),
    "sharpness": lambda img, m, s: ImageEnhance.Sharpness(img).enhance(1 + m * s),
    "brightness": lambda img, m, s: ImageEnhance.Brightness(img).enhance(1 + m * s),
    "posterize": lambda img, m, s: ImageOps.posterize(img, int(m)),
    "solarize": lambda img, m, s: ImageOps.solarize(img, m),
    "autocontrast": lambda img, m, s: ImageOps.autocontrast(img),
    "equalize": lambda img, m, s: ImageOps.equalize(img),
    "invert": lambda img, m, s: ImageOps.invert(img),
}


def _check_sign(sign: int) -> int:
    """Return ``sign`` if it is +1 or -1, else raise ``ValueError`` naming it."""
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    return int(sign)


def apply_transform_pil(img: Image.Image, transform: str, magnitude: float, sign: int) -> Image.Image:
    """Apply ``transform`` at ``magnitude`` in direction ``sign`` (ignored by unsigned transforms).

    The sign is validated even where it is ignored, so a wrong draw fails loudly everywhere.
    """
    if transform not in _TRANSFORM_FUNCTIONS:
        raise ValueError(f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)}")
    sign = _check_sign(sign)
    if img.mode == "L":
        rgb = _TRANSFORM_FUNCTIONS[transform](img.convert("RGB"), magnitude, sign)
        return rgb.convert("L")
    if img.mode != "RGB":
        raise ValueError(f"PIL reference ops take RGB or L images, got mode {img.mode!r}")
    return _TRANSFORM_FUNCTIONS[transform](img, magnitude, sign)


def apply_op_pil(img: Image.Image, op_index: int, sign: int) -> Image.Image:
    """Apply op ``op_index`` (0…49) of the original list, unconditionally, in direction ``sign``."""
    op = operation(op_index)
    return apply_transform_pil(img, op.transform, op.magnitude, sign)


def apply_subpolicy_pil(img: Image.Image, ops: Sequence[int], signs: Sequence[int]) -> Image.Image:
    """Apply the ops of one sub-policy in order, op ``ops[k]`` with direction ``signs[k]``."""
    if len(ops) != len(signs):
        raise ValueError(f"{len(ops)} ops {tuple(ops)} but {len(signs)} signs {tuple(signs)}")
    for op_index, sign in zip(ops, signs):
        img = apply_op_pil(img, op_index, int(sign))
    return img
