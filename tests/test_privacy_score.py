"""S_pri: the vectorised engines against a straightforward batch-1 implementation of docs/original-code.md §5.3."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ats.search.per_sample import UnregisteredLayerError
from ats.search.per_sample.folding import conv_batch_norm_pairs
from ats.search.per_sample.layers import ROUTES, choose_route
from ats.search.privacy import (
    interpolation_path,
    privacy_curves,
    trapezoid_mean,
    uniform_noise,
)

NUM_CLASSES = 5
BINS = 4


def _randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model


def tiny_convnet(seed: int = 0, channels: int = 3) -> nn.Module:
    """Covers the layerwise engine's layers: a first conv with few input channels (im2col), a conv
    with many spatial positions (grouped per-sample gradient), a strided dilated conv with padding,
    BatchNorm with in-place ReLU after it, conv biases and a linear layer (Gram matrices). Its three
    conv–BatchNorm pairs run folded (``test_folding_leaves_the_model_as_it_was``).
    ``test_every_conv_route_matches_the_naive_implementation`` sends the convs through each route."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.Conv2d(8, 32, 3, stride=2, padding=2, dilation=2),
        nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, NUM_CLASSES),
    )
    return _randomise_batch_norms(model, torch.Generator().manual_seed(seed)).eval()


def naive_privacy_score(model: nn.Module, image: torch.Tensor, label: torch.Tensor, noise: torch.Tensor,
                        bins: int) -> tuple[float, list[float]]:
    """docs/original-code.md §5.3 written out: batch-1 gradients, a loop over parameters, the original's area ratio."""
    parameters = list(model.parameters())

    def gradient(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = 0.5 * F.cross_entropy(model(x.unsqueeze(0)), label.view(1))
        return torch.autograd.grad(loss, parameters)

    reference = gradient(image)
    curve = []
    for step in range(bins + 1):
        point = step / bins * image + (bins - step) / bins * noise
        cosines = [F.cosine_similarity(g.flatten(), r.flatten(), dim=0) for g, r in zip(gradient(point), reference)]
        curve.append(float(sum(cosines)) / len(parameters))
    interval = float((noise - image).abs().mean()) / bins
    area = sum((previous + current) * interval / 2 for previous, current in pairwise(curve))
    return area / (interval * bins), curve


def _inputs(count: int, dtype: torch.dtype = torch.float32, size: int = 8, channels: int = 3):
    generator = torch.Generator().manual_seed(123)
    images = torch.randn((count, channels, size, size), generator=generator, dtype=dtype)
    noise = torch.randn((count, channels, size, size), generator=generator, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
    return images, labels, noise


def _naive(model: nn.Module, images, labels, noise, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor]:
    results = [naive_privacy_score(model, images[i], labels[i], noise[i], bins) for i in range(len(images))]
    return (torch.tensor([score for score, _ in results], dtype=torch.float64),
            torch.tensor([curve for _, curve in results], dtype=torch.float64))


@pytest.fixture(scope="module")
def naive_results() -> dict[torch.dtype, tuple]:
    """The naive scores and curves, computed once per dtype: model, inputs, scores, curves."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        model = tiny_convnet().to(dtype)
        images, labels, noise = _inputs(2, dtype)
        results[dtype] = (model, (images, labels, noise), *_naive(model, images, labels, noise))
    return results


@pytest.mark.parametrize("method", ["layerwise", "vmap"])
def test_matches_the_naive_implementation_in_float64(method: str, naive_results) -> None:
    model, inputs, naive_scores, naive_curves = naive_results[torch.float64]
    scores, curves = privacy_curves(model, *inputs, bins=BINS, method=method)
    assert torch.allclose(curves, naive_curves, atol=1e-10, rtol=0)
    assert torch.allclose(scores, naive_scores, atol=1e-10, rtol=0)


@pytest.mark.parametrize("method", ["layerwise", "vmap"])
def test_matches_the_naive_implementation_in_float32(method: str, naive_results) -> None:
    model, inputs, naive_scores, naive_curves = naive_results[torch.float32]
    scores, curves = privacy_curves(model, *inputs, bins=BINS, method=method)
    assert (scores.double() - naive_scores).abs().max() <= 1e-4
    assert (curves.double() - naive_curves).abs().max() <= 1e-3


@pytest.mark.parametrize("route", ["materialise", "columns", "shifted"])
def test_every_conv_route_matches_the_naive_implementation(route: str, naive_results, monkeypatch) -> None:
    """Each way of getting a conv's statistics, forced on every conv (stride, dilation and padding included)."""
    asked = []
    cost = ROUTES[nn.Conv2d][route]

    def only_route(conv: nn.Module, input_shape: tuple[int, ...]) -> float:
        asked.append(conv)
        return cost(conv, input_shape)

    monkeypatch.setitem(ROUTES, nn.Conv2d, {route: only_route})
    model, inputs, naive_scores, naive_curves = naive_results[torch.float64]
    scores, curves = privacy_curves(model, *inputs, bins=BINS, method="layerwise")
    assert len(set(map(id, asked))) == 3
    assert torch.allclose(curves, naive_curves, atol=1e-10, rtol=0)
    assert torch.allclose(scores, naive_scores, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("shape", "expected"), [
    # (in, out, input size, stride) -> route; the ResNet20(-4) convs, as measured fastest on a CPU
    ((16, 16, 32, 1), "materialise"), ((32, 32, 16, 1), "materialise"), ((64, 64, 8, 1), "materialise"),
    ((64, 64, 32, 1), "materialise"), ((128, 128, 16, 1), "materialise"), ((256, 256, 8, 1), "shifted"),
    ((16, 32, 32, 2), "materialise"), ((32, 64, 16, 2), "materialise"), ((64, 128, 32, 2), "materialise"),
    ((128, 256, 16, 2), "columns"),
])
def test_conv_route_picks_the_cheapest_way(shape: tuple[int, int, int, int], expected: str) -> None:
    in_channels, out_channels, size, stride = shape
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
    assert choose_route(conv, (in_channels, size, size)) == expected


def test_the_curve_ends_at_one_and_the_score_is_its_trapezoid_mean() -> None:
    model = tiny_convnet()
    images, labels, noise = _inputs(4)
    scores, curves = privacy_curves(model, images, labels, noise, bins=BINS)
    assert curves.shape == (4, BINS + 1) and scores.shape == (4,)
    assert (curves[:, -1] - 1).abs().max() <= 1e-5
    written_out = torch.stack([sum((curves[i, k - 1] + curves[i, k]) / 2 for k in range(1, BINS + 1)) / BINS
                               for i in range(4)])
    assert torch.allclose(scores, written_out, atol=1e-6)
    assert torch.allclose(trapezoid_mean(torch.ones(2, 5)), torch.ones(2))


def test_the_path_starts_at_the_noise_and_ends_exactly_at_the_image() -> None:
    images, _, noise = _inputs(2)
    path = interpolation_path(images, noise, BINS).view(2, BINS + 1, *images.shape[1:])
    assert torch.equal(path[:, -1], images) and torch.equal(path[:, 0], noise)


def test_chunking_and_batch_company_do_not_change_the_result() -> None:
    """Chunks of one image, of one image despite a larger size, and of two images with a rest: an
    image's scores do not depend on which images share its pass, so scoring several policies at
    once is just concatenating their images."""
    model = tiny_convnet().double()
    images, labels, noise = _inputs(3, torch.float64)
    whole_scores, whole_curves = privacy_curves(model, images, labels, noise, bins=BINS, chunk_size=1000)
    for chunk_size in (1, BINS + 2, 2 * (BINS + 1)):
        scores, curves = privacy_curves(model, images, labels, noise, bins=BINS, chunk_size=chunk_size)
        assert torch.allclose(curves, whole_curves, atol=1e-12, rtol=0), chunk_size
        assert torch.allclose(scores, whole_scores, atol=1e-12, rtol=0), chunk_size


def test_repeated_calls_give_identical_results() -> None:
    model = tiny_convnet()
    images, labels, noise = _inputs(3)
    first = privacy_curves(model, images, labels, noise, bins=BINS)
    second = privacy_curves(model, images, labels, noise, bins=BINS)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_an_unregistered_layer_is_refused_by_name_and_vmap_handles_it() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, NUM_CLASSES)).double().eval()
    images, labels, noise = _inputs(2, torch.float64)
    with pytest.raises(UnregisteredLayerError, match=r"layer '1' \(GroupNorm\).*no registered"):
        privacy_curves(model, images, labels, noise, bins=BINS)
    scores, curves = privacy_curves(model, images, labels, noise, bins=BINS, method="vmap")
    naive_scores, naive_curves = _naive(model, images, labels, noise)
    assert torch.allclose(curves, naive_curves, atol=1e-10, rtol=0)
    assert torch.allclose(scores, naive_scores, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("arch", "pairs"), [("ResNet20", 21), ("ConvNet8", 8)])
def test_every_conv_batch_norm_pair_of_the_shipped_models_is_found(
        arch: str, pairs: int) -> None:
    from ats.case.models import build_model

    model = build_model(arch, NUM_CLASSES, 3).eval()
    found = conv_batch_norm_pairs(model)
    assert len(found) == pairs
    assert all(isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) for conv, norm in found)


def test_a_conv_whose_output_is_read_twice_is_not_folded() -> None:
    """The second conv's output feeds its BatchNorm and a skip connection, so ∂L/∂z ≠ s·∂L/∂y."""
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hidden = torch.relu(self.bn1(self.conv1(x)))
            skip = self.conv2(hidden)
            return self.fc((torch.relu(self.bn2(skip)) + skip).mean(dim=(2, 3)))

    torch.manual_seed(3)
    model = _randomise_batch_norms(Skip(), torch.Generator().manual_seed(3)).double().eval()
    assert conv_batch_norm_pairs(model) == [(model.conv1, model.bn1)]
    images, labels, noise = _inputs(2, torch.float64)
    scores, curves = privacy_curves(model, images, labels, noise, bins=BINS, method="layerwise")
    naive_scores, naive_curves = _naive(model, images, labels, noise)
    assert torch.allclose(curves, naive_curves, atol=1e-10, rtol=0)
    assert torch.allclose(scores, naive_scores, atol=1e-10, rtol=0)


def test_folding_leaves_the_model_as_it_was(naive_results) -> None:
    model, inputs, _, _ = naive_results[torch.float64]
    assert len(conv_batch_norm_pairs(model)) == 3
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    before = model(inputs[0])
    privacy_curves(model, *inputs, bins=BINS, method="layerwise")
    assert not any("forward" in vars(module) for module in model.modules())
    assert all(torch.equal(state[name], tensor) for name, tensor in model.state_dict().items())
    assert torch.equal(model(inputs[0]), before)


def test_a_layer_called_twice_is_refused_by_the_layerwise_engine() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(self.conv(x)).mean(dim=(2, 3)))

    images, labels, noise = _inputs(1)
    with pytest.raises(RuntimeError, match="runs twice.*vmap"):
        privacy_curves(Twice().eval(), images, labels, noise, bins=BINS, method="layerwise")
    scores, _ = privacy_curves(Twice().eval(), images, labels, noise, bins=BINS, method="vmap")
    assert torch.isfinite(scores).all()


def test_training_mode_and_bad_inputs_are_refused_with_clear_errors() -> None:
    model = tiny_convnet()
    images, labels, noise = _inputs(2)
    with pytest.raises(ValueError, match="eval mode"):
        privacy_curves(model.train(), images, labels, noise)
    model.eval()
    with pytest.raises(ValueError, match="noise"):
        privacy_curves(model, images, labels, noise[:1])
    with pytest.raises(ValueError, match="labels"):
        privacy_curves(model, images, labels.float(), noise)
    with pytest.raises(ValueError, match="bins"):
        privacy_curves(model, images, labels, noise, bins=0)
    with pytest.raises(ValueError, match="chunk_size"):
        privacy_curves(model, images, labels, noise, chunk_size=0)
    with pytest.raises(ValueError, match="method"):
        privacy_curves(model, images, labels, noise, method="fast")


def test_non_finite_weights_give_nan_instead_of_an_error() -> None:
    model = tiny_convnet()
    model[-1].weight.data[0, 0] = float("nan")
    images, labels, noise = _inputs(2)
    scores, curves = privacy_curves(model, images, labels, noise, bins=BINS)
    assert torch.isnan(scores).all() and curves.shape == (2, BINS + 1)


def test_uniform_noise_is_normalised_uniform_and_reproducible() -> None:
    mean, std = (0.5, 0.25, 0.1), (0.2, 0.3, 0.4)
    noise = uniform_noise((2, 3, 16, 16), torch.Generator().manual_seed(7), mean, std)
    again = uniform_noise((2, 3, 16, 16), torch.Generator().manual_seed(7), mean, std)
    assert torch.equal(noise, again)
    pixels = noise * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert pixels.min() >= -1e-6 and pixels.max() < 1 + 1e-6 and 0.4 < pixels.mean() < 0.6
    with pytest.raises(ValueError, match="mean/std"):
        uniform_noise((3, 8, 8), torch.Generator(), (0.5,), (0.2,))
