"""The per-sample statistics registry against batch-1 gradients, on every shipped architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ats.case.models import build_model
from ats.search.per_sample import UnregisteredLayerError, gradient_stats, route_table
from ats.search.per_sample.layers import ROUTES, STATISTICS
from ats.search.privacy import interpolation_path, privacy_curves
from benchmarks.decisions import recorded_decisions, replayed_decisions

# The shipped architectures in the settings that use them: (arch, input channels, classes).
ARCHITECTURES = [("ResNet20", 1, 10), ("ResNet20-4", 3, 100), ("ConvNet", 3, 100), ("ConvNet32", 1, 10)]
BINS = 2


def _trained_looking(arch: str, channels: int, classes: int) -> nn.Module:
    """The model in float64 with non-default BatchNorm parameters and running statistics."""
    torch.manual_seed(5)
    model = build_model(arch, classes, channels).double()
    generator = torch.Generator().manual_seed(6)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator, dtype=torch.float64) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator, dtype=torch.float64) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator, dtype=torch.float64) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator, dtype=torch.float64) * 0.1)
    return model.eval()


def _naive_stats(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, points: int
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per parameter: every sample's dot with its image's last sample and squared norm, from batch-1 gradients."""
    names, parameters = zip(*model.named_parameters())
    gradients = [torch.autograd.grad(0.5 * F.cross_entropy(model(x.unsqueeze(0)), y.view(1)), parameters)
                 for x, y in zip(inputs, labels)]
    stats = {}
    for index, name in enumerate(names):
        rows = torch.stack([gradient[index].flatten() for gradient in gradients])
        rows = rows.view(-1, points, parameters[index].numel())
        stats[name] = ((rows * rows[:, -1:]).sum(dim=-1), rows.square().sum(dim=-1))
    return stats


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "channels", "classes"), ARCHITECTURES)
def test_every_layer_statistic_equals_batch_one_gradients_in_float64(arch: str, channels: int, classes: int) -> None:
    model = _trained_looking(arch, channels, classes)
    generator = torch.Generator().manual_seed(7)
    images = torch.randn((2, channels, 32, 32), generator=generator, dtype=torch.float64)
    noise = torch.randn((2, channels, 32, 32), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (2,), generator=generator).repeat_interleave(BINS + 1)
    inputs = interpolation_path(images, noise, BINS)
    ours = gradient_stats(model, inputs, labels, BINS + 1)
    naive = _naive_stats(model, inputs, labels, BINS + 1)
    assert set(ours) == set(naive)
    for name, (naive_dot, naive_norm_sq) in naive.items():
        dot, norm_sq = ours[name]
        scale = max(1.0, float(naive_norm_sq.max()))
        assert (dot - naive_dot).abs().max() <= 1e-10 * scale, name
        assert (norm_sq - naive_norm_sq).abs().max() <= 1e-10 * scale, name


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "channels", "classes"), ARCHITECTURES)
def test_float32_curves_are_within_2e_5_of_float64_once_both_take_the_same_relu_and_max_pool_choices(
        arch: str, channels: int, classes: int) -> None:
    """The engine's own float32 arithmetic, folds and Gram routes included: a float32 pass can flip
    a ReLU or max-pool choice that lies within rounding of a tie (every float32 method can), so the
    float32 pass replays the float64 pass's choices (docs/search.md)."""
    model = _trained_looking(arch, channels, classes)
    generator = torch.Generator().manual_seed(8)
    images = torch.randn((2, channels, 32, 32), generator=generator, dtype=torch.float64)
    noise = torch.randn((2, channels, 32, 32), generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (2,), generator=generator)
    with recorded_decisions() as float64_choices:
        _, exact = privacy_curves(model, images, labels, noise, bins=BINS)
    model.float()
    with replayed_decisions(float64_choices):
        _, replayed = privacy_curves(model, images.float(), labels, noise.float(), bins=BINS)
    assert (replayed.double() - exact).abs().max() <= 2e-5


def _expected_resnet_routes(last_stage_routes: dict[str, str] | None) -> dict[str, str]:
    """Every conv folded with its BatchNorm on the materialise route, but for ``last_stage_routes``."""
    convs = ["conv1"] + [f"layers.{stage}.{block}.{conv}" for stage in range(3) for block in range(3)
                         for conv in ("conv1", "conv2")] + ["layers.1.0.downsample.0", "layers.2.0.downsample.0"]
    routes = {}
    for conv in convs:
        norm = conv.replace("conv", "bn").replace("downsample.0", "downsample.1")
        own = (last_stage_routes or {}).get(conv)
        routes |= {conv: own, norm: "direct"} if own else {conv: "materialise, folded", norm: "folded"}
    return routes | {"fc": "gram"}


def _expected_convnet_routes() -> dict[str, str]:
    """The two convs after the first max-pool take the shifted Gram route and run unfolded; the rest fold."""
    folded = {f"model.conv{index}": "materialise, folded" for index in range(6)}
    folded |= {f"model.bn{index}": "folded" for index in range(6)}
    unfolded = {f"model.conv{index}": "shifted" for index in (6, 7)}
    unfolded |= {f"model.bn{index}": "direct" for index in (6, 7)}
    return folded | unfolded | {"model.linear": "gram"}


@pytest.mark.parametrize(("arch", "channels", "classes", "expected"), [
    ("ResNet20", 1, 10, _expected_resnet_routes(None)),
    ("ResNet20-4", 3, 100, _expected_resnet_routes(
        {"layers.2.0.conv1": "columns"} | {f"layers.2.{block}.{conv}": "shifted" for block in range(3)
                                            for conv in ("conv1", "conv2") if (block, conv) != (0, "conv1")})),
    ("ConvNet", 3, 100, _expected_convnet_routes()),
    ("ConvNet32", 1, 10, _expected_convnet_routes()),
])
def test_the_route_table_of_every_shipped_architecture(arch: str, channels: int, classes: int,
                                                       expected: dict[str, str]) -> None:
    model = build_model(arch, classes, channels).eval()
    assert route_table(model, (channels, 32, 32)) == expected


def test_the_registry_and_the_route_table_cover_the_same_layer_types() -> None:
    assert set(STATISTICS) == set(ROUTES) == {nn.Conv2d, nn.Linear, nn.BatchNorm2d}
    assert {layer_type: list(routes) for layer_type, routes in ROUTES.items()} == {
        nn.Conv2d: ["materialise", "columns", "shifted"], nn.Linear: ["materialise", "gram"],
        nn.BatchNorm2d: ["direct"]}


def test_a_layer_type_without_statistics_is_refused_by_name() -> None:
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 4, 3))
    model.add_module("norm", nn.GroupNorm(2, 4))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(4 * 6 * 6, 3))
    inputs = torch.randn(3, 3, 8, 8)
    labels = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(UnregisteredLayerError, match=r"layer 'norm' \(GroupNorm\) has parameters but no registered"):
        gradient_stats(model.eval(), inputs, labels, 3)
    with pytest.raises(UnregisteredLayerError, match="layer 'norm'"):
        route_table(model, (3, 8, 8))


def test_a_subclass_or_a_refused_configuration_is_not_taken_for_a_registered_type() -> None:
    class MyConv(nn.Conv2d):
        pass

    labels = torch.zeros(3, dtype=torch.int64)
    for layer, message in ((MyConv(3, 4, 3), r"'0' \(MyConv\) has parameters but no registered"),
                           (nn.Conv2d(4, 4, 3, groups=2), r"'0' \(Conv2d\): grouped convolution")):
        model = nn.Sequential(layer, nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
        with pytest.raises(UnregisteredLayerError, match=message):
            gradient_stats(model, torch.randn(3, layer.in_channels, 8, 8), labels, 3)
