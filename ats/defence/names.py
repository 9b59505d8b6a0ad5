"""Defence names: what each trained model in the evaluation protects itself with.

A defence name is a Snakemake wildcard and a folder name, so it must be short, readable and free of
``/``. The grammar:

========================  ==================================================================
``none``                  no augmentation at all (the original's ``aug`` mode with an empty policy)
``crop``                  random crop (pad 4) and horizontal flip: the paper's "no defence" baseline
``<policy>``              crop, flip and a transformation policy such as ``3-1-7`` or ``3-1-7+43-18-18``
``prune-<p>``             crop and flip, and the smallest ``p`` % of each gradient tensor zeroed
``gauss-<sigma>``         crop and flip, and Gaussian noise of std ``sigma`` added to the gradient
``laplace-<b>``           crop and flip, and Laplacian noise of scale ``b`` added to the gradient
========================  ==================================================================

This module is torch-free because ``workflow/rules/common.smk`` validates names at parse time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from ats.policies import PolicyError, parse_policy

DefenceKind = Literal["none", "crop", "policy", "prune", "gauss", "laplace"]
AugmentationMode = Literal["plain", "crop", "policy"]

GRADIENT_DEFENCE_KINDS = ("prune", "gauss", "laplace")
_GRADIENT_PATTERN = re.compile(r"^(prune|gauss|laplace)-(.+)$")


class DefenceError(ValueError):
    """A defence name that does not follow the grammar of this module."""


@dataclass(frozen=True)
class DefenceSpec:
    """A parsed defence name."""

    name: str
    kind: DefenceKind
    policy: str | None = None
    strength: float | None = None

    @property
    def augmentation_mode(self) -> AugmentationMode:
        """How training images are augmented: gradient defences keep the crop-and-flip baseline."""
        if self.kind == "none":
            return "plain"
        if self.kind == "policy":
            return "policy"
        return "crop"

    @property
    def acts_on_gradient(self) -> bool:
        return self.kind in GRADIENT_DEFENCE_KINDS


def parse_defence(name: str) -> DefenceSpec:
    """Parse a defence name, raising :class:`DefenceError` that names the culprit."""
    if name in ("none", "crop"):
        return DefenceSpec(name=name, kind=name)  # type: ignore[arg-type]
    match = _GRADIENT_PATTERN.match(name)
    if match:
        kind, value = match.groups()
        try:
            strength = float(value)
        except ValueError:
            raise DefenceError(f"defence {name!r}: {value!r} is not a number") from None
        if not math.isfinite(strength) or strength < 0:
            raise DefenceError(f"defence {name!r}: strength must be a finite number >= 0")
        if kind == "prune" and not 0 <= strength < 100:
            raise DefenceError(f"defence {name!r}: pruning percentage must be in [0, 100)")
        return DefenceSpec(name=name, kind=kind, strength=strength)  # type: ignore[arg-type]
    if name == "":
        raise DefenceError("defence '': the empty policy is called 'none'")
    try:
        parse_policy(name)
    except PolicyError as error:
        raise DefenceError(
            f"defence {name!r} is neither 'none', 'crop', prune-<p>, gauss-<sigma>, laplace-<b> "
            f"nor a valid policy ({error})"
        ) from None
    return DefenceSpec(name=name, kind="policy", policy=name)
