"""Models: architecture names, parameter counts, state_dict keys of the original, init and forward."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from ats.case.architectures import ARCHITECTURES, Architecture, parse_arch
from ats.case.models import build_model
from ats.runtime.checkpoints import load_checkpoint

# Keys of inversefed"s ResNet(BasicBlock, [3, 3, 3], base_width=16) ("ResNet20") in the original code:
# stem conv1/bn1, ModuleList "layers" of three Sequential stages of torchvision BasicBlocks (conv1,
# bn1, conv2, bn2, downsample.0/.1 on the first block of stages 2 and 3), linear "fc".
RESNET20_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
    "bn1.num_batches_tracked", "layers.0.0.conv1.weight", "layers.0.0.bn1.weight",
    "layers.0.0.bn1.bias", "layers.0.0.bn1.running_mean", "layers.0.0.bn1.running_var",
    "layers.0.0.bn1.num_batches_tracked", "layers.0.0.conv2.weight", "layers.0.0.bn2.weight",
    "layers.0.0.bn2.bias", "layers.0.0.bn2.running_mean", "layers.0.0.bn2.running_var",
    "layers.0.0.bn2.num_batches_tracked", "layers.0.1.conv1.weight", "layers.0.1.bn1.weight",
    "layers.0.1.bn1.bias", "layers.0.1.bn1.running_mean", "layers.0.1.bn1.running_var",
    "layers.0.1.bn1.num_batches_tracked", "layers.0.1.conv2.weight", "layers.0.1.bn2.weight",
    "layers.0.1.bn2.bias", "layers.0.1.bn2.running_mean", "layers.0.1.bn2.running_var",
    "layers.0.1.bn2.num_batches_tracked", "layers.0.2.conv1.weight", "layers.0.2.bn1.weight",
    "layers.0.2.bn1.bias", "layers.0.2.bn1.running_mean", "layers.0.2.bn1.running_var",
    "layers.0.2.bn1.num_batches_tracked", "layers.0.2.conv2.weight", "layers.0.2.bn2.weight",
    "layers.0.2.bn2.bias", "layers.0.2.bn2.running_mean", "layers.0.2.bn2.running_var",
    "layers.0.2.bn2.num_batches_tracked", "layers.1.0.conv1.weight", "layers.1.0.bn1.weight",
    "layers.1.0.bn1.bias", "layers.1.0.bn1.running_mean", "layers.1.0.bn1.running_var",
    "layers.1.0.bn1.num_batches_tracked", "layers.1.0.conv2.weight", "layers.1.0.bn2.weight",
    "layers.1.0.bn2.bias", "layers.1.0.bn2.running_mean", "layers.1.0.bn2.running_var",
    "layers.1.0.bn2.num_batches_tracked", "layers.1.0.downsample.0.weight",
    "layers.1.0.downsample.1.weight", "layers.1.0.downsample.1.bias",
    "layers.1.0.downsample.1.running_mean", "layers.1.0.downsample.1.running_var",
    "layers.1.0.downsample.1.num_batches_tracked", "layers.1.1.conv1.weight",
    "layers.1.1.bn1.weight", "layers.1.1.bn1.bias", "layers.1.1.bn1.running_mean",
    "layers.1.1.bn1.running_var", "layers.1.1.bn1.num_batches_tracked", "layers.1.1.conv2.weight",
    "layers.1.1.bn2.weight", "layers.1.1.bn2.bias", "layers.1.1.bn2.running_mean",
    "layers.1.1.bn2.running_var", "layers.1.1.bn2.num_batches_tracked", "layers.1.2.conv1.weight",
    "layers.1.2.bn1.weight", "layers.1.2.bn1.bias", "layers.1.2.bn1.running_mean",
    "layers.1.2.bn1.running_var", "layers.1.2.bn1.num_batches_tracked", "layers.1.2.conv2.weight",
    "layers.1.2.bn2.weight", "layers.1.2.bn2.bias", "layers.1.2.bn2.running_mean",
    "layers.1.2.bn2.running_var", "layers.1.2.bn2.num_batches_tracked", "layers.2.0.conv1.weight",
    "layers.2.0.bn1.weight", "layers.2.0.bn1.bias", "layers.2.0.bn1.running_mean",
    "layers.2.0.bn1.running_var", "layers.2.0.bn1.num_batches_tracked", "layers.2.0.conv2.weight",
    "layers.2.0.bn2.weight", "layers.2.0.bn2.bias", "layers.2.0.bn2.running_mean",
    "layers.2.0.bn2.running_var", "layers.2.0.bn2.num_batches_tracked",
    "layers.2.0.downsample.0.weight", "layers.2.0.downsample.1.weight",
    "layers.2.0.downsample.1.bias", "layers.2.0.downsample.1.running_mean",
    "layers.2.0.downsample.1.running_var", "layers.2.0.downsample.1.num_batches_tracked",
    "layers.2.1.conv1.weight", "layers.2.1.bn1.weight", "layers.2.1.bn1.bias",
    "layers.2.1.bn1.running_mean", "layers.2.1.bn1.running_var",
    "layers.2.1.bn1.num_batches_tracked", "layers.2.1.conv2.weight", "layers.2.1.bn2.weight",
    "layers.2.1.bn2.bias", "layers.2.1.bn2.running_mean", "layers.2.1.bn2.running_var",
    "layers.2.1.bn2.num_batches_tracked", "layers.2.2.conv1.weight", "layers.2.2.bn1.weight",
    "layers.2.2.bn1.bias", "layers.2.2.bn1.running_mean", "layers.2.2.bn1.running_var",
    "layers.2.2.bn1.num_batches_tracked", "layers.2.2.conv2.weight", "layers.2.2.bn2.weight",
    "layers.2.2.bn2.bias", "layers.2.2.bn2.running_mean", "layers.2.2.bn2.running_var",
    "layers.2.2.bn2.num_batches_tracked", "fc.weight", "fc.bias",
]

# Keys of inversefed"s ConvNet: a Sequential "model" of conv0..conv7 with bn0..bn7 and "linear".
CONVNET_KEYS = [
    "model.conv0.weight", "model.conv0.bias", "model.bn0.weight", "model.bn0.bias",
    "model.bn0.running_mean", "model.bn0.running_var", "model.bn0.num_batches_tracked",
    "model.conv1.weight", "model.conv1.bias", "model.bn1.weight", "model.bn1.bias",
    "model.bn1.running_mean", "model.bn1.running_var", "model.bn1.num_batches_tracked",
    "model.conv2.weight", "model.conv2.bias", "model.bn2.weight", "model.bn2.bias",
    "model.bn2.running_mean", "model.bn2.running_var", "model.bn2.num_batches_tracked",
    "model.conv3.weight", "model.conv3.bias", "model.bn3.weight", "model.bn3.bias",
    "model.bn3.running_mean", "model.bn3.running_var", "model.bn3.num_batches_tracked",
    "model.conv4.weight", "model.conv4.bias", "model.bn4.weight", "model.bn4.bias",
    "model.bn4.running_mean", "model.bn4.running_var", "model.bn4.num_batches_tracked",
    "model.conv5.weight", "model.conv5.bias", "model.bn5.weight", "model.bn5.bias",
    "model.bn5.running_mean", "model.bn5.running_var", "model.bn5.num_batches_tracked",
    "model.conv6.weight", "model.conv6.bias", "model.bn6.weight", "model.bn6.bias",
    "model.bn6.running_mean", "model.bn6.running_var", "model.bn6.num_batches_tracked",
    "model.conv7.weight", "model.conv7.bias", "model.bn7.weight", "model.bn7.bias",
    "model.bn7.running_mean", "model.bn7.running_var", "model.bn7.num_batches_tracked",
    "model.linear.weight", "model.linear.bias",
]


class OriginalStyleResNet(nn.Module):
    """The original's ResNet rebuilt from torchvision parts (torchvision's BasicBlock and
    ``ResNet._make_layer``), with its attribute names and init, as an independent reference."""

    def __init__(self, blocks_per_stage: int, width: int, num_classes: int, num_channels: int):
        torchvision = pytest.importorskip("torchvision")
        super().__init__()
        # Attributes that torchvision's _make_layer reads from its ResNet instance.
        builder = torchvision.models.ResNet.__new__(torchvision.models.ResNet)
        nn.Module.__init__(builder)
        builder._norm_layer, builder.dilation, builder.groups, builder.base_width = nn.BatchNorm2d, 1, 1, 64
        builder.inplanes = width
        self.conv1 = nn.Conv2d(num_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        block = torchvision.models.resnet.BasicBlock
        self.layers = nn.ModuleList(
            builder._make_layer(block, width * 2**stage, blocks_per_stage, stride=stride)
            for stage, stride in enumerate([1, 2, 2])
        )
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(4 * width, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for stage in self.layers:
            x = stage(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def original_style_convnet(width: int, num_classes: int, num_channels: int) -> nn.Sequential:
    """The original ConvNet's layer list, including its duplicated conv6/bn6/relu6 entry."""

    def conv(c_in: int, c_out: int) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)

    w = width
    entries = [
        ("conv0", conv(num_channels, w)), ("bn0", nn.BatchNorm2d(w)), ("relu0", nn.ReLU()),
        ("conv1", conv(w, 2 * w)), ("bn1", nn.BatchNorm2d(2 * w)), ("relu1", nn.ReLU()),
        ("conv2", conv(2 * w, 2 * w)), ("bn2", nn.BatchNorm2d(2 * w)), ("relu2", nn.ReLU()),
        ("conv3", conv(2 * w, 4 * w)), ("bn3", nn.BatchNorm2d(4 * w)), ("relu3", nn.ReLU()),
        ("conv4", conv(4 * w, 4 * w)), ("bn4", nn.BatchNorm2d(4 * w)), ("relu4", nn.ReLU()),
        ("conv5", conv(4 * w, 4 * w)), ("bn5", nn.BatchNorm2d(4 * w)), ("relu5", nn.ReLU()),
        ("pool0", nn.MaxPool2d(3)),
        ("conv6", conv(4 * w, 4 * w)), ("bn6", nn.BatchNorm2d(4 * w)), ("relu6", nn.ReLU()),
        ("conv6", conv(4 * w, 4 * w)), ("bn6", nn.BatchNorm2d(4 * w)), ("relu6", nn.ReLU()),
        ("conv7", conv(4 * w, 4 * w)), ("bn7", nn.BatchNorm2d(4 * w)), ("relu7", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3)), ("flatten", nn.Flatten()), ("linear", nn.Linear(36 * w, num_classes)),
    ]
    return nn.Sequential(OrderedDict(entries))


def assert_same_state(ours: nn.Module, reference: nn.Module) -> None:
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(ours_state[key], value), key


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("ResNet20", Architecture("ResNet", 16, 3)),
    ("ResNet20-4", Architecture("ResNet", 64, 3)),
    ("ResNet32-10", Architecture("ResNet", 160, 5)),
    ("ResNet110", Architecture("ResNet", 16, 18)),
    ("ConvNet", Architecture("ConvNet", 64)),
    ("ConvNet64", Architecture("ConvNet", 64)),
    ("ConvNet8", Architecture("ConvNet", 8)),
])
def test_parse_arch(name: str, expected: Architecture) -> None:
    assert parse_arch(name) == expected


@pytest.mark.parametrize(("name", "culprit"), [
    ("ResNet18", "depth 18 is not 6n+2"),
    ("ResNet2", "depth 2 is not 6n+2"),
    ("ResNet20-0", "width multiplier must be >= 1"),
    ("ConvNet0", "ConvNet width 0 is not one of the original's"),
    ("ConvNet12", "ConvNet width 12 is not one of the original's"),
    ("resnet20", "unknown architecture"),
    ("ResNet20-4-unpooled", "unknown architecture"),
])
def test_bad_arch_names_name_the_culprit_and_the_allowed_forms(name: str, culprit: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_arch(name)
    message = str(caught.value)
    assert f"architecture {name!r}" in message
    assert culprit in message
    assert "allowed: ResNet{depth} or ResNet{depth}-{width multiplier} with depth = 6n+2" in message


def test_every_listed_architecture_parses() -> None:
    assert {parse_arch(name).family for name in ARCHITECTURES} == {"ResNet", "ConvNet"}


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        build_model("ResNet20", 0, 3)
    with pytest.raises(ValueError, match="num_channels must be >= 1, got 0"):
        build_model("ConvNet8", 10, 0)


# --- structure ------------------------------------------------------------------------------------


def test_resnet20_4_for_cifar100_has_the_papers_size() -> None:
    parameters = list(build_model("ResNet20-4", 100, 3).parameters())
    assert len(parameters) == 65
    assert sum(p.numel() for p in parameters) == 4_350_884


def test_resnet20_keys_and_shapes_are_the_originals() -> None:
    state = build_model("ResNet20", 10, 3).state_dict()
    assert list(state) == RESNET20_KEYS
    assert state["conv1.weight"].shape == (16, 3, 3, 3)
    assert state["layers.1.0.conv1.weight"].shape == (32, 16, 3, 3)
    assert state["layers.2.0.downsample.0.weight"].shape == (64, 32, 1, 1)
    assert state["fc.weight"].shape == (10, 64)


def test_resnet20_4_differs_only_in_widths() -> None:
    state = build_model("ResNet20-4", 100, 1).state_dict()
    assert list(state) == RESNET20_KEYS
    assert state["conv1.weight"].shape == (64, 1, 3, 3)
    assert state["fc.weight"].shape == (100, 256)


def test_convnet_keys_and_shapes_are_the_originals() -> None:
    state = build_model("ConvNet", 10, 3).state_dict()
    assert list(state) == CONVNET_KEYS
    assert state["model.conv0.weight"].shape == (64, 3, 3, 3)
    assert state["model.conv6.weight"].shape == (256, 256, 3, 3)
    assert state["model.linear.weight"].shape == (10, 36 * 64)
    assert sum(isinstance(m, nn.Conv2d) for m in build_model("ConvNet", 10, 3).modules()) == 8


def test_resnet_init() -> None:
    torch.manual_seed(0)
    model = build_model("ResNet20-4", 100, 3)
    conv = model.layers[2][2].conv2.weight  # 256·256·9 weights, fan-out 256·9
    assert conv.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.01)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0)
               for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.fc.weight.abs().max().item() <= 1 / 256**0.5  # PyTorch's default uniform bound


# --- equivalence with the original ----------------------------------------------------------------


@pytest.mark.parametrize(("arch", "blocks", "width", "classes", "channels"), [
    ("ResNet20", 3, 16, 10, 3), ("ResNet32-2", 5, 32, 7, 1),
])
@pytest.mark.slow
def test_resnet_matches_the_original_weights_and_outputs(arch, blocks, width, classes, channels) -> None:
    torch.manual_seed(5)
    reference = OriginalStyleResNet(blocks, width, classes, channels)
    torch.manual_seed(5)
    model = build_model(arch, classes, channels)
    assert_same_state(model, reference)
    inputs = torch.randn(4, channels, 32, 32)
    for train in (True, False):
        model.train(train), reference.train(train)
        torch.testing.assert_close(model(inputs), reference(inputs), rtol=0, atol=0)


def test_convnet_matches_the_original_weights_and_outputs() -> None:
    torch.manual_seed(5)
    reference = original_style_convnet(8, 10, 1)
    torch.manual_seed(5)
    model = build_model("ConvNet8", 10, 1)
    assert [k.removeprefix("model.") for k in model.state_dict()] == list(reference.state_dict())
    for ours, theirs in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(ours, theirs)
    inputs = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(model(inputs), reference(inputs), rtol=0, atol=0)


@pytest.mark.parametrize(("arch", "width", "classes", "wrapper"), [
    ("ResNet20-4", 64, 100, "plain"), ("ResNet20", 16, 10, "dataparallel"),
])
@pytest.mark.slow
def test_original_checkpoint_loads_strictly(tmp_path: Path, arch: str, width: int, classes: int,
                                            wrapper: str) -> None:
    """A ``torch.save(model.state_dict())`` file of the original's model loads without conversion
    (``module.`` prefixes of ``DataParallel`` models are stripped by ``load_checkpoint``)."""
    torch.manual_seed(1)
    original = OriginalStyleResNet(3, width, classes, 3)
    original(torch.randn(2, 3, 32, 32))  # update BN running statistics, as a trained model has
    state = original.state_dict()
    if wrapper == "dataparallel":
        state = OrderedDict((f"module.{key}", value) for key, value in state.items())
    torch.save(state, tmp_path / "100.pth")

    model = build_model(arch, classes, 3)
    model.load_state_dict(load_checkpoint(tmp_path / "100.pth")["state_dict"], strict=True)
    model.eval(), original.eval()
    inputs = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(inputs), original(inputs), rtol=0, atol=0)


# --- forward --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "channels", "classes"), [
    ("ResNet20", 1, 10), ("ResNet20", 3, 100), ("ResNet20", 3, 1), ("ResNet20-4", 1, 100),
    ("ConvNet8", 1, 10), ("ConvNet8", 3, 100), ("ConvNet8", 3, 1), ("ConvNet", 3, 10),
])
def test_forward_shapes(arch: str, channels: int, classes: int) -> None:
    model = build_model(arch, classes, channels)
    logits = model(torch.randn(2, channels, 32, 32))
    assert logits.shape == (2, classes)
    assert torch.isfinite(logits).all()
