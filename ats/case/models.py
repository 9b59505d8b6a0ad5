"""The victim models: CIFAR-style ResNets and the inversefed ConvNet.

Two constraints shape this module:

* **Checkpoint compatibility.** The ``state_dict`` keys are exactly those of the original code's
  ``inversefed.nn.models`` classes (``conv1``, ``bn1``, ``layers.{stage}.{block}.conv1``, …,
  ``fc``; ``model.conv0`` … ``model.linear``), so the authors' released checkpoints load with
  ``load_state_dict(strict=True)`` and no key conversion.
* **Same initial weights for the same seed.** Modules are created in the same order as in the
  original (including one ConvNet layer that the original builds and then discards), so that with
  the same torch seed and version both codes draw the same initial weights.

The original ResNet subclassed ``torchvision.models.ResNet`` and used torchvision's
``BasicBlock``; the small block below reproduces that block's parameters and forward pass so that
this module depends on torch only.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ats.case.architectures import CustomModel, ModelChoice, parse_arch, parse_class_path
from ats.runtime.checkpoints import load_checkpoint

INPUT_SIZE = 32  # every model sees the transform pipeline's 32×32 images


def build_model(arch: ModelChoice, num_classes: int, num_channels: int) -> nn.Module:
    """Build a freshly initialised model (initial weights come from torch's global generator).

    ``arch`` is one of our architecture names or a user's :class:`CustomModel`. ``num_channels``
    is the number of input channels (3 for CIFAR, 1 for Fashion-MNIST); inputs are 32×32 (the
    ConvNet's linear layer assumes it; the ResNet pools globally).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_channels < 1:
        raise ValueError(f"num_channels must be >= 1, got {num_channels}")
    if isinstance(arch, CustomModel):
        return _build_custom_model(arch, num_classes, num_channels)
    architecture = parse_arch(arch)
    if architecture.family == "ResNet":
        assert architecture.blocks_per_stage is not None
        return ResNet(architecture.blocks_per_stage, architecture.width, num_classes, num_channels)
    return ConvNet(architecture.width, num_classes, num_channels)


def resolve_model_class(class_path: str) -> type[nn.Module]:
    """Import the class ``"package.module:Class"``; ``ValueError`` unless it is a ``torch.nn.Module`` subclass.

    The module must be importable by the jobs: installed, or on ``PYTHONPATH``.
    """
    module_name, attribute = parse_class_path(class_path)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"model class {class_path!r}: cannot import module {module_name!r} ({error}); "
                         "install it or put its folder on PYTHONPATH") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"model class {class_path!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not (inspect.isclass(target) and issubclass(target, nn.Module)):
        raise ValueError(f"model class {class_path!r} is {target!r}, not a torch.nn.Module subclass")
    return target


def custom_model_arguments(model: CustomModel, num_classes: int, num_channels: int) -> dict[str, Any]:
    """The keyword arguments the class of ``model`` is called with; ``ValueError`` if its constructor refuses them.

    ``num_classes`` and ``num_channels`` are added for each of the two that the constructor names.
    """
    model_class = resolve_model_class(model.class_path)
    parameters = inspect.signature(model_class).parameters
    arguments = dict(model.kwargs)
    arguments.update({name: value for name, value in (("num_classes", num_classes), ("num_channels", num_channels))
                      if name in parameters})
    try:
        inspect.signature(model_class).bind(**arguments)
    except TypeError as error:
        raise ValueError(f"model class {model.class_path!r} does not take the arguments {sorted(arguments)}: "
                         f"{error}") from None
    return arguments


def _build_custom_model(model: CustomModel, num_classes: int, num_channels: int) -> nn.Module:
    """Build a user's class and check that it maps 32×32 images of the data set to ``num_classes`` logits."""
    network = resolve_model_class(model.class_path)(**custom_model_arguments(model, num_classes, num_channels))
    was_training = network.training
    with torch.no_grad():
        logits = network.eval()(torch.zeros(1, num_channels, INPUT_SIZE, INPUT_SIZE))
    network.train(was_training)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, num_classes):
        raise ValueError(f"model class {model.class_path!r} maps a 1×{num_channels}×{INPUT_SIZE}×{INPUT_SIZE} "
                         f"input to {getattr(logits, 'shape', type(logits).__name__)}, expected logits of shape "
                         f"(1, {num_classes})")
    return network


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with an identity (or 1×1 conv–BN) shortcut, ReLU after the sum.

    Parameter names and forward pass match ``torchvision.models.resnet.BasicBlock``, which the
    original code used.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): three stages of ``blocks_per_stage`` blocks.

    Stage widths are ``width``, 2·``width``, 4·``width`` with strides 1, 2, 2; the stem is a single
    3×3 conv–BN–ReLU without max-pooling. Convolutions get Kaiming-normal (fan-out) weights, batch
    norms γ = 1 and β = 0, and the linear layer keeps PyTorch's default init, as in the original.
    """

    def __init__(self, blocks_per_stage: int, width: int, num_classes: int, num_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(num_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layers = nn.ModuleList()
        in_channels = width
        for stage, stride in enumerate((1, 2, 2)):
            out_channels = width * 2**stage
            self.layers.append(self._make_stage(in_channels, out_channels, blocks_per_stage, stride))
            in_channels = out_channels
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    @staticmethod
    def _make_stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage; the shortcut of its first block is projected when the shape changes.

        The projection is created before its block, as torchvision does, to keep the original's
        order of draws from the random generator.
        """
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        stage = [BasicBlock(in_channels, out_channels, stride, downsample)]
        stage += [BasicBlock(out_channels, out_channels, 1, None) for _ in range(blocks - 1)]
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class ConvNet(nn.Module):
    """inversefed's ``ConvNet`` as it effectively runs: eight 3×3 conv–BN–ReLU layers.

    Channels c→w→2w→2w→4w→4w→4w, MaxPool(3), 4w→4w→4w, MaxPool(3), then a linear layer from
    4w·3·3 = 36w features (32×32 inputs). The original listed the ``conv6/bn6/relu6`` entry twice in
    an ordered dict, so only the second survives; all layers keep PyTorch's default init.
    """

    def __init__(self, width: int, num_classes: int, num_channels: int):
        super().__init__()
        channels = [num_channels, width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for index, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
            layers.update(self._conv_bn_relu(index, c_in, c_out))
        layers["pool0"] = nn.MaxPool2d(3)
        # The original built a first conv6 that the duplicate dict key then replaced. Building (and
        # dropping) it here draws the same random numbers, so the same seed gives the same weights.
        nn.Conv2d(4 * width, 4 * width, 3, padding=1)
        layers.update(self._conv_bn_relu(6, 4 * width, 4 * width))
        layers.update(self._conv_bn_relu(7, 4 * width, 4 * width))
        layers["pool1"] = nn.MaxPool2d(3)
        layers["flatten"] = nn.Flatten()
        layers["linear"] = nn.Linear(36 * width, num_classes)
        self.model = nn.Sequential(layers)

    @staticmethod
    def _conv_bn_relu(index: int, c_in: int, c_out: int) -> OrderedDict[str, nn.Module]:
        return OrderedDict([
            (f"conv{index}", nn.Conv2d(c_in, c_out, 3, padding=1)),
            (f"bn{index}", nn.BatchNorm2d(c_out)),
            (f"relu{index}", nn.ReLU()),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not fit the model it is supposed to initialise."""


def check_state_dict_compatible(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, source: str | os.PathLike
) -> None:
    """Raise :class:`CheckpointMismatchError` naming ``source`` unless keys and shapes match exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{name} {tuple(state_dict[name].shape)} (model {tuple(expected[name].shape)})"
        for name in sorted(set(expected) & set(state_dict))
        if state_dict[name].shape != expected[name].shape
    ]
    problems = [
        f"{label}: {_first(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("wrong shapes", wrong_shape))
        if items
    ]
    if problems:
        raise CheckpointMismatchError(f"{source}: does not fit the model; " + "; ".join(problems))


def _first(items: Sequence[str], shown: int = 8) -> str:
    more = f", … ({len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def load_model(
    checkpoint: str | os.PathLike,
    arch: ModelChoice,
    num_classes: int,
    num_channels: int,
    *,
    expected_fingerprint: str | None = None,
) -> nn.Module:
    """Build ``arch`` and load a verified checkpoint into it, in eval mode, on the CPU.

    Keys and shapes must fit exactly: a partially loaded model would silently bias every score and
    attack computed on it.
    """
    return load_model_with_meta(checkpoint, arch, num_classes, num_channels,
                                expected_fingerprint=expected_fingerprint)[0]


def load_model_with_meta(
    checkpoint: str | os.PathLike,
    arch: ModelChoice,
    num_classes: int,
    num_channels: int,
    *,
    expected_fingerprint: str | None = None,
) -> tuple[nn.Module, dict]:
    """:func:`load_model`, plus the ``meta`` the checkpoint records (empty for a plain state_dict)."""
    payload = load_checkpoint(checkpoint, expected_fingerprint=expected_fingerprint)
    model = build_model(arch, num_classes, num_channels)
    check_state_dict_compatible(payload["state_dict"], model, source=checkpoint)
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval(), dict(payload["meta"])
