"""Architecture names, parsed without torch.

The workflow validates ``model.arch`` when it is parsed, on every job start, so the grammar lives
here, free of torch; :mod:`ats.case.models` builds the networks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ARCHITECTURES: tuple[str, ...] = (
    "ResNet20", "ResNet20-4", "ResNet32", "ResNet44", "ResNet56", "ResNet110",
    "ConvNet", "ConvNet8", "ConvNet16", "ConvNet32", "ConvNet64",
)

_RESNET_NAME = re.compile(r"ResNet(?P<depth>\d+)(?:-(?P<multiplier>\d+))?")
_CONVNET_NAME = re.compile(r"ConvNet(?P<width>\d+)?")
_CONVNET_WIDTHS = (8, 16, 32, 64)
_ALLOWED_FORMS = (
    "ResNet{depth} or ResNet{depth}-{width multiplier} with depth = 6n+2 (20, 32, 44, 56, 110, ...), "
    "ConvNet (width 64) or ConvNet{width} with width 8, 16, 32 or 64"
)
_RESNET_BASE_WIDTH = 16
_CONVNET_DEFAULT_WIDTH = 64


@dataclass(frozen=True)
class Architecture:
    """A parsed architecture name.

    ``width`` is the stem width for a ResNet (16 × the width multiplier) and ``w`` for a ConvNet
    (its layers have w, 2w and 4w channels). ``blocks_per_stage`` is ``n`` of a 6n+2-layer ResNet
    and ``None`` for a ConvNet.
    """

    family: Literal["ResNet", "ConvNet"]
    width: int
    blocks_per_stage: int | None = None


def parse_arch(name: str) -> Architecture:
    """Parse an architecture name such as ``"ResNet20-4"`` or ``"ConvNet32"``.

    Raises ``ValueError`` naming ``name`` and the allowed forms.
    """
    resnet = _RESNET_NAME.fullmatch(name)
    if resnet:
        depth = int(resnet["depth"])
        multiplier = int(resnet["multiplier"] or 1)
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"architecture {name!r}: ResNet depth {depth} is not 6n+2 with n >= 1; "
                             f"allowed: {_ALLOWED_FORMS}")
        if multiplier < 1:
            raise ValueError(f"architecture {name!r}: width multiplier must be >= 1; "
                             f"allowed: {_ALLOWED_FORMS}")
        return Architecture("ResNet", _RESNET_BASE_WIDTH * multiplier, (depth - 2) // 6)
    convnet = _CONVNET_NAME.fullmatch(name)
    if convnet:
        width = int(convnet["width"] or _CONVNET_DEFAULT_WIDTH)
        if width not in _CONVNET_WIDTHS:
            raise ValueError(f"architecture {name!r}: ConvNet width {width} is not one of the original's; "
                             f"allowed: {_ALLOWED_FORMS}")
        return Architecture("ConvNet", width)
    raise ValueError(f"unknown architecture {name!r}; allowed: {_ALLOWED_FORMS}")
