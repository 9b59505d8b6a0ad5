"""The 50 indexed operations of ATS, policy strings, and the seeded candidate sampler.

Vocabulary (the original code calls each of the 50 entries a ``SubPolicy``; we do not, because a
hybrid policy has sub-policies of its own):

* a **transform** is a kind of image operation (``shearX``, ``rotate``, ``equalize``, …) whose
  strength is picked from a 10-step magnitude range (docs/original-code.md §2.1);
* an **op** is one of the 50 indexed (transform, magnitude index) pairs of the original
  ``policy.py`` (docs/original-code.md §2.3), addressed by its index 0…49;
* a **sub-policy** is an ordered tuple of op indices, applied in order, e.g. ``(3, 1, 7)``;
* a **policy** is a tuple of sub-policies; training draws one of them uniformly per image
  (a *hybrid* when there is more than one). The empty policy ``()`` means "no transformation".

Policy strings: ops are joined by ``-`` and sub-policies by ``+`` (``"3-1-7+43-18-18"``); the empty
policy is the empty string. The grammar is strict so that every accepted string is the canonical
spelling of its policy (``format_policy(parse_policy(s)) == s``), which matters because policy
strings name result files and cache entries: ``"7"`` and ``"007"`` must not be two names for one
policy.

This module is imported by the Snakemake parser on every job, so it uses the standard library only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ats.runtime.seeding import derive_seed

Policy = tuple[tuple[int, ...], ...]

MAGNITUDE_STEPS = 10


def _numpy_linspace(start: float, stop: float, num: int = MAGNITUDE_STEPS) -> tuple[float, ...]:
    """Values bit-identical to ``numpy.linspace(start, stop, num)``, which the original used.

    NumPy computes ``i * step + start`` and sets the last value to ``stop`` exactly; reproducing the
    same float operations keeps magnitudes (and hence pixels) identical without importing NumPy.
    """
    step = (stop - start) / (num - 1)
    return tuple(i * step + start for i in range(num - 1)) + (float(stop),)


# Magnitude ranges of docs/original-code.md §2.1, indexed by magnitude index 0…9. Photometric ranges are 0…0.5
# (not AutoAugment's 0…0.9); translations are fractions of the image side; rotation is in degrees.
TRANSFORM_MAGNITUDES: dict[str, tuple[float, ...]] = {
    "shearX": _numpy_linspace(0.0, 0.3),
    "shearY": _numpy_linspace(0.0, 0.3),
    "translateX": _numpy_linspace(0.0, 150 / 331),
    "translateY": _numpy_linspace(0.0, 150 / 331),
    "rotate": _numpy_linspace(0.0, 30.0),
    "color": _numpy_linspace(0.0, 0.5),
    "posterize": tuple(float(round(value)) for value in _numpy_linspace(8.0, 4.0)),
    "solarize": _numpy_linspace(256.0, 0.0),
    "contrast": _numpy_linspace(0.0, 0.5),
    "sharpness": _numpy_linspace(0.0, 0.5),
    "brightness": _numpy_linspace(0.0, 0.5),
    "autocontrast": (0.0,) * MAGNITUDE_STEPS,
    "equalize": (0.0,) * MAGNITUDE_STEPS,
    "invert": (0.0,) * MAGNITUDE_STEPS,
}
TRANSFORMS: tuple[str, ...] = tuple(TRANSFORM_MAGNITUDES)

# Transforms whose direction is a random sign s = ±1 drawn per application (enhance factor 1 + s·m,
# shear s·m, translation s·m·size). Rotation is *not* signed in the original: always +θ, CCW.
SIGNED_TRANSFORMS: frozenset[str] = frozenset(
    {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}
)
# Enhancement transforms blend the image with a "degenerate" image using the factor 1 + s·m.
ENHANCE_TRANSFORMS: frozenset[str] = frozenset({"color", "contrast", "sharpness", "brightness"})


@dataclass(frozen=True)
class Operation:
    """One of the 50 indexed ops: a transform at a fixed magnitude.

    ``probability`` is the value written in the original list; the original never uses it (every op
    is applied unconditionally, docs/original-code.md §2.2), and neither do we. It is kept for documentation
    only.
    """

    transform: str
    magnitude_index: int
    probability: float

    @property
    def magnitude(self) -> float:
        """The raw magnitude the transform receives (shear factor, fraction of the side, degrees, …)."""
        return TRANSFORM_MAGNITUDES[self.transform][self.magnitude_index]

    @property
    def signed(self) -> bool:
        """Whether the op draws a random direction (sign) each time it is applied."""
        return self.transform in SIGNED_TRANSFORMS


# The original ``policy.py`` list, in order (docs/original-code.md §2.3): (probability, transform, magnitude index).
_ORIGINAL_LIST: tuple[tuple[float, str, int], ...] = (
    (0.1, "invert", 7), (0.2, "contrast", 6), (0.7, "rotate", 2), (0.3, "translateX", 9),
    (0.8, "sharpness", 1), (0.9, "sharpness", 3), (0.5, "shearY", 2), (0.7, "translateY", 2),
    (0.5, "autocontrast", 5), (0.9, "equalize", 2), (0.2, "shearY", 5), (0.3, "posterize", 5),
    (0.4, "color", 3), (0.6, "brightness", 5), (0.3, "sharpness", 9), (0.7, "brightness", 9),
    (0.6, "equalize", 5), (0.5, "equalize", 1), (0.6, "contrast", 7), (0.6, "sharpness", 5),
    (0.7, "color", 5), (0.5, "translateX", 5), (0.3, "equalize", 7), (0.4, "autocontrast", 8),
    (0.4, "translateY", 3), (0.2, "sharpness", 6), (0.9, "brightness", 6), (0.2, "color", 8),
    (0.5, "solarize", 0), (0.0, "invert", 0), (0.2, "equalize", 0), (0.6, "autocontrast", 0),
    (0.2, "equalize", 8), (0.6, "equalize", 4), (0.9, "color", 5), (0.6, "equalize", 5),
    (0.8, "autocontrast", 4), (0.2, "solarize", 4), (0.1, "brightness", 3), (0.7, "color", 0),
    (0.4, "solarize", 1), (0.9, "autocontrast", 0), (0.9, "translateY", 3), (0.7, "translateY", 3),
    (0.9, "autocontrast", 1), (0.8, "solarize", 1), (0.8, "equalize", 5), (0.1, "invert", 0),
    (0.7, "translateY", 3), (0.9, "autocontrast", 1),
)
OPERATIONS: tuple[Operation, ...] = tuple(
    Operation(transform, magnitude_index, probability)
    for probability, transform, magnitude_index in _ORIGINAL_LIST
)
NUM_OPERATIONS = len(OPERATIONS)  # 50
# How many distinct non-empty policies of one to three ops the candidate sampler can produce.
DISTINCT_CANDIDATES = NUM_OPERATIONS + NUM_OPERATIONS**2 + NUM_OPERATIONS**3


class PolicyError(ValueError):
    """A policy string or tuple is malformed or names an op outside 0…49."""


def operation(op_index: int) -> Operation:
    """The op with index ``op_index``; :class:`PolicyError` naming it when out of range."""
    if isinstance(op_index, bool) or not isinstance(op_index, int) or not 0 <= op_index < NUM_OPERATIONS:
        raise PolicyError(f"op index {op_index!r} is not an integer in 0..{NUM_OPERATIONS - 1}")
    return OPERATIONS[op_index]


def effective_parameter(op_index: int, image_size: int = 32) -> float | None:
    """The parameter op ``op_index`` effectively applies to a ``image_size``-pixel square image.

    shear: the shear factor ±m; translate: the shift ±m·size in pixels; rotate: the angle in
    degrees (counter-clockwise, unsigned); colour/contrast/sharpness/brightness: m, the factor being
    1 ± m; posterize: the number of bits kept; solarize: the threshold; ``None`` for the
    magnitude-free transforms (autocontrast, equalize, invert).
    """
    op = operation(op_index)
    if op.transform in ("autocontrast", "equalize", "invert"):
        return None
    if op.transform in ("translateX", "translateY"):
        return op.magnitude * image_size
    return op.magnitude


def describe_operation(op_index: int, image_size: int = 32) -> str:
    """A short human-readable description such as ``"translateX ±14.5px"``."""
    op = operation(op_index)
    value = effective_parameter(op_index, image_size)
    name = op.transform
    if value is None:
        return name
    if name in ("translateX", "translateY"):
        return f"{name} ±{value:.1f}px"
    if name in ("shearX", "shearY"):
        return f"{name} ±{value:.3f}"
    if name == "rotate":
        return f"rotate {value:.1f}° CCW"
    if name in ENHANCE_TRANSFORMS:
        identity = " (identity)" if value == 0 else ""
        return f"{name} ×(1±{value:.3f}){identity}"
    if name == "posterize":
        return f"posterize {int(value)} bits"
    identity = " (identity)" if value >= 256 else ""
    return f"solarize ≥{value:.1f}{identity}"


_OP_INDEX = r"(?:0|[1-9][0-9]*)"
_SUB_POLICY_PATTERN = re.compile(rf"{_OP_INDEX}(?:-{_OP_INDEX})*")


def parse_policy(text: str) -> Policy:
    """Parse a policy string: ``""`` → ``()``, ``"3-1-7+43-18-18"`` → ``((3, 1, 7), (43, 18, 18))``.

    Accepted: decimal op indices 0…49 without leading zeros, joined by ``-`` into sub-policies,
    which are joined by ``+``. Everything else (whitespace, signs, empty parts such as ``"3--1"`` or
    ``"3-1+"``, leading zeros such as ``"007"``, indices ≥ 50) raises :class:`PolicyError` naming
    the string. Repeated sub-policies are allowed: they weight the uniform per-image choice.
    """
    if not isinstance(text, str):
        raise PolicyError(f"policy must be a string, got {text!r}")
    if text == "":
        return ()
    policy = []
    for part in text.split("+"):
        if not _SUB_POLICY_PATTERN.fullmatch(part):
            raise PolicyError(
                f"malformed policy {text!r}: sub-policy {part!r} is not op indices 0..{NUM_OPERATIONS - 1} "
                f"joined by '-' (no spaces, signs or leading zeros)"
            )
        indices = tuple(int(token) for token in part.split("-"))
        out_of_range = [index for index in indices if index >= NUM_OPERATIONS]
        if out_of_range:
            raise PolicyError(
                f"policy {text!r} names op {out_of_range[0]}, but ops are numbered 0..{NUM_OPERATIONS - 1}"
            )
        policy.append(indices)
    return tuple(policy)


def format_policy(policy: Policy) -> str:
    """The canonical string of ``policy`` (inverse of :func:`parse_policy`)."""
    if not isinstance(policy, tuple) or not all(isinstance(sub, tuple) and sub for sub in policy):
        raise PolicyError(f"policy {policy!r} is not a tuple of non-empty tuples of op indices")
    for sub_policy in policy:
        for index in sub_policy:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_OPERATIONS:
                raise PolicyError(f"policy {policy!r} contains {index!r}, not an op index 0..{NUM_OPERATIONS - 1}")
    return "+".join("-".join(str(index) for index in sub_policy) for sub_policy in policy)


def describe_policy(text: str, image_size: int = 32) -> str:
    """Human-readable form, e.g. ``"translateX ±14.5px → contrast ×(1±0.333) → translateY ±3.2px"``.

    Sub-policies of a hybrid are shown in brackets joined by ``" | "`` (one is chosen uniformly per
    image); the empty policy reads ``"no transformation"``.
    """
    policy = parse_policy(text)
    if not policy:
        return "no transformation"
    chains = [" → ".join(describe_operation(index, image_size) for index in sub) for sub in policy]
    if len(chains) == 1:
        return chains[0]
    return " | ".join(f"[{chain}]" for chain in chains)


def candidate_policies(count: int, seed: int, extra: Sequence[str] = ()) -> list[str]:
    """``count`` distinct random candidate policies, then the ``extra`` ones not already drawn.

    Like the original ``batch_generate.py`` (docs/original-code.md §3.1), each candidate is three independent uniform
    draws from {no-op, 0, …, 49}; no-ops are dropped, so candidates have 1–3 ops. Unlike the
    original, the range excludes the non-existent op 50, the stream is seeded, exact duplicates and
    the empty policy are skipped. The stream depends only on ``seed``, so a larger ``count`` extends
    a smaller one (earlier candidates are a prefix). ``extra`` strings are validated with
    :func:`parse_policy` (``""``, the no-transform reference, is allowed).
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= DISTINCT_CANDIDATES:
        raise ValueError(f"candidate count {count!r} must be an integer in 0..{DISTINCT_CANDIDATES}")
    for text in extra:
        parse_policy(text)
    rng = random.Random(derive_seed(seed, "candidate-policies"))
    candidates: list[str] = []
    seen: set[str] = set()
    while len(candidates) < count:
        draws = (rng.randint(-1, NUM_OPERATIONS - 1) for _ in range(3))
        text = "-".join(str(index) for index in draws if index >= 0)
        if text and text not in seen:
            seen.add(text)
            candidates.append(text)
    for text in extra:
        if text not in seen:
            seen.add(text)
            candidates.append(text)
    return candidates
