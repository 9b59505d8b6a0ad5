"""Architecture names and users' model classes, parsed without torch.

The workflow validates ``model.arch`` (or ``model.class``) when it is parsed, on every job start,
so the grammar lives here, free of torch; :mod:`ats.case.models` builds the networks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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


_CLASS_PATH = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")


@dataclass(frozen=True)
class CustomModel:
    """A user's network: the class ``"package.module:Class"`` built with keyword arguments ``kwargs``.

    :func:`ats.case.models.build_model` builds it instead of one of our architectures (config keys
    ``model.class`` and ``model.kwargs``), so any ``torch.nn.Module`` can be scored, trained and
    attacked. ``num_classes`` and ``num_channels`` come from the data set and are passed to the
    constructor when it names them.
    """

    class_path: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_class_path(self.class_path)
        reserved = sorted({"num_classes", "num_channels"} & set(self.kwargs))
        if reserved:
            raise ValueError(f"model kwargs {reserved} are set from the data set; leave them out")

    @property
    def name(self) -> str:
        """``module:Class`` followed by the keyword arguments, for logs, file attributes and metrics."""
        arguments = ", ".join(f"{key}={value!r}" for key, value in sorted(self.kwargs.items()))
        return f"{self.class_path}({arguments})"


ModelChoice = str | CustomModel
"""What to build: one of our architectures by name (``"ResNet20-4"``) or a user's class."""


def parse_class_path(class_path: str) -> tuple[str, str]:
    """Split ``"package.module:Class"`` into module and (possibly dotted) attribute; ``ValueError`` if malformed."""
    match = _CLASS_PATH.fullmatch(class_path) if isinstance(class_path, str) else None
    if match is None:
        raise ValueError(f"model class {class_path!r} is not of the form 'package.module:Class'")
    return match["module"], match["name"]


def model_choice(model_config: Mapping[str, Any]) -> ModelChoice:
    """The model a config's ``model`` section names: ``class`` (with ``kwargs``) when set, else ``arch``."""
    if model_config.get("class"):
        return CustomModel(model_config["class"], dict(model_config.get("kwargs") or {}))
    return model_config["arch"]


def model_name(arch: ModelChoice) -> str:
    """The name recorded for ``arch`` in checkpoints, metrics and file attributes."""
    return arch.name if isinstance(arch, CustomModel) else arch


def model_settings(arch: ModelChoice) -> dict[str, Any]:
    """The part of a fingerprint that identifies the model.

    ``{"arch": name}`` for our architectures, as before users' classes existed, so that the
    fingerprints (and caches) of existing runs stay valid.
    """
    if isinstance(arch, CustomModel):
        return {"class": arch.class_path, "kwargs": dict(arch.kwargs)}
    return {"arch": arch}
