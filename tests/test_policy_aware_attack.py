"""The policy-aware attack (config ``inversed-aware``): x and the relaxed draw θ learned together."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from ats.attack.configs import ATTACKS, POLICY_AWARE_ATTACKS, get_attack
from ats.attack.metrics import psnr
from ats.attack.reconstruct import observed_gradients, reconstruct
from ats.attack.registration import policy_max_shift, registered_metrics
from ats.policies import parse_policy
from ats.transforms.differentiable import RelaxedDraw, differentiable_augment
from ats.transforms.pipeline import AugmentationDraw

MEAN = torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)
STD = torch.tensor([0.25, 0.2, 0.3], dtype=torch.float64)


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_net(channels: int = 3, seed: int = 0) -> nn.Module:
    """An untrained one-layer conv net on 32×32 inputs, float64: cheap, and its gradient pins the image down."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 32 * 32, 10)).double().eval()


def smooth_images(count: int, size: int = 32, channels: int = 3) -> torch.Tensor:
    """Images in [0.1, 0.9] made of smooth sinusoids (natural-looking, recoverable with a TV prior)."""
    generator = torch.Generator().manual_seed(123)
    rows, columns = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(count):
        frequencies = torch.rand(channels, 2, generator=generator) * 4 + 1
        phases = torch.rand(channels, generator=generator) * 6
        images.append(0.5 + 0.4 * torch.sin(math.pi * (frequencies[:, :1, None] * columns
                                                        + frequencies[:, 1:, None] * rows) + phases[:, None, None]))
    return torch.stack(images).double()


def generators(count: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(count)]


def shared_case(policy, draw: AugmentationDraw, mode: str = "policy", channels: int = 3, size: int = 32):
    """The untransformed images, the transformed ones whose gradients are shared, and those gradients."""
    count = len(draw)
    model = toy_net(channels)
    originals = smooth_images(count, size, channels)
    shown = differentiable_augment(originals, mode, policy, RelaxedDraw.from_draw(draw, torch.float64))
    mean, std = MEAN[:channels, None, None], STD[:channels, None, None]
    labels = torch.tensor([1, 5, 3, 2][:count])
    return model, originals, shown, labels, observed_gradients(model, (shown - mean) / std, labels)


def fixed_draw(signs: list[list[float]], crop: list[int] | None = None) -> AugmentationDraw:
    count = len(signs)
    crop_offsets = torch.tensor([crop or [4, 4]] * count)
    return AugmentationDraw(crop_offsets, torch.zeros(count, dtype=torch.bool), torch.zeros(count, dtype=torch.long),
                            torch.tensor(signs))


def pixels(images: torch.Tensor) -> torch.Tensor:
    return images * STD[:, None, None] + MEAN[:, None, None]


def test_inversed_aware_is_inversed_plus_the_draw() -> None:
    aware = get_attack("inversed-aware")
    assert aware.policy_aware and aware.draw_lr == 0.01
    assert (aware.hypothesis_warmup, aware.hypotheses_kept, aware.warmup_iterations) == (0.1, 1, 480)
    assert dataclasses.replace(aware, name="inversed", policy_aware=False, draw_lr=0.0, hypothesis_warmup=0.0,
                               hypotheses_kept=1) == ATTACKS["inversed"]
    assert "inversed-aware" not in ATTACKS and set(POLICY_AWARE_ATTACKS) == {"inversed-aware"}
    assert get_attack("inversed-aware", 200).lr_milestones == (74, 124, 175)
    assert aware.draw_learning_rate(0) == 0.01 and aware.draw_learning_rate(4203) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="policy-aware"):
        dataclasses.replace(ATTACKS["zhu"], policy_aware=True, draw_lr=0.01)
    for warmup, kept in ((1.0, 1), (-0.1, 1), (0.1, 0)):
        with pytest.raises(ValueError, match="hypothesis_warmup"):
            dataclasses.replace(aware, hypothesis_warmup=warmup, hypotheses_kept=kept)


@pytest.mark.slow
def test_a_translated_image_is_recovered_with_its_shift() -> None:
    """translateX ±8.06 px (op 21) moves each image by 8 pixels, one left, one right."""
    policy = parse_policy("21")
    model, originals, shown, labels, observed = shared_case(policy, fixed_draw([[-1.0], [1.0]]))
    arguments = dict(policy=policy, augmentation_mode="policy")
    oblivious = reconstruct(model, observed, labels, get_attack("inversed"), (3, 32, 32), MEAN, STD, generators(2),
                            200, **arguments)
    aware = reconstruct(model, observed, labels, get_attack("inversed-aware"), (3, 32, 32), MEAN, STD,
                        generators(2), 200, **arguments)
    oblivious_psnr, aware_psnr = psnr(pixels(oblivious.images), originals), psnr(pixels(aware.images), originals)
    assert (aware_psnr > oblivious_psnr + 3).all(), (aware_psnr, oblivious_psnr)
    assert oblivious.draw is None and aware.draw.signs.shape == (2, 1)
    learned_shift = -8 + (aware.draw.signs[:, 0] + 1) / 2 * 16  # the shift at a = −1 is −8, at a = +1 it is +8
    assert (learned_shift - torch.tensor([-8.0, 8.0])).abs().max() < 1, learned_shift
    assert (aware.draw.crop_offsets - 4).abs().max() < 1 and not aware.draw.flips.any()

    max_shift = policy_max_shift(policy)
    # the 8 black columns cannot match: a smooth image may then prefer a row off (dy = ±1)
    for images in (shown, pixels(oblivious.images).clamp(0, 1)):
        found = registered_metrics(images, originals, max_shift, allow_flip=True)
        assert found.shift_x.tolist() == [-8, 8] and found.shift_y.abs().max() <= 1 and not found.flipped.any()
    assert (found.psnr > oblivious_psnr + 3).all(), "registered, the oblivious attack's shifted image counts too"


@pytest.mark.parametrize("mode, policy", [("policy", ()), ("plain", parse_policy("3-1-7"))])
def test_with_nothing_to_learn_the_policy_aware_attack_is_inversed(mode: str, policy) -> None:
    model, _, _, labels, observed = shared_case(policy, fixed_draw([[1.0]] * 2), mode)
    results = [reconstruct(model, observed, labels, get_attack(name), (3, 32, 32), MEAN, STD, generators(2), 15,
                           policy=policy, augmentation_mode=mode) for name in ("inversed", "inversed-aware")]
    assert torch.equal(results[0].images, results[1].images)
    assert torch.equal(results[0].cost_history, results[1].cost_history)
    assert torch.equal(results[0].final_cost, results[1].final_cost)
    assert results[1].draw is None


@pytest.mark.slow
def test_batched_policy_aware_attacks_equal_attacks_run_one_at_a_time_in_float64() -> None:
    policy = parse_policy("7-1+9")  # 4 + 1 hypotheses: translateY and contrast directions, or equalize
    draw = AugmentationDraw(torch.tensor([[3, 5], [6, 1], [4, 4]]), torch.tensor([False, True, False]),
                            torch.tensor([0, 0, 1]), torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
    model, _, _, labels, observed = shared_case(policy, draw)
    config = get_attack("inversed-aware")
    arguments = dict(policy=policy, augmentation_mode="policy")
    batched = reconstruct(model, observed, labels, config, (3, 32, 32), MEAN, STD, generators(3), 8, **arguments)
    chunked = reconstruct(model, observed, labels, config, (3, 32, 32), MEAN, STD, generators(3), 8, max_batch=4,
                          **arguments)
    for index in range(3):
        single = reconstruct(model, [g[index:index + 1] for g in observed], labels[index:index + 1], config,
                             (3, 32, 32), MEAN, STD, generators(1, offset=index), 8, **arguments)
        for other in (batched, chunked):
            assert (other.images[index] - single.images[0]).abs().max() <= 1e-6
            assert (other.cost_history[index] - single.cost_history[0]).abs().max() <= 1e-9
            assert (other.draw.crop_offsets[index] - single.draw.crop_offsets[0]).abs().max() <= 1e-9
            assert (other.draw.signs[index] - single.draw.signs[0]).abs().max() <= 1e-9
            assert other.draw.subpolicy[index] == single.draw.subpolicy[0]
    assert batched.images.shape == (3, 3, 32, 32) and batched.cost_history.shape == (3, 8)
    assert batched.draw.signs.shape == (3, 2) and not batched.diverged.any()


def test_crop_mode_and_28_pixel_images() -> None:
    """Fashion-MNIST: the attacker's x is the 28-pixel image, cropped from its padding to 32."""
    policy = parse_policy("43")
    draw = AugmentationDraw(torch.tensor([[0, 3], [4, 1]]), torch.tensor([True, False]),
                            torch.zeros(2, dtype=torch.long), torch.tensor([[1.0], [-1.0]]))
    model, _, _, labels, observed = shared_case(policy, draw, "crop", channels=1, size=28)
    result = reconstruct(model, observed, labels, get_attack("inversed-aware"), (1, 32, 32), MEAN[:1], STD[:1],
                         generators(2), 4, policy=policy, augmentation_mode="crop", source_size=28)
    assert result.images.shape == (2, 1, 28, 28) and result.draw.signs.shape == (2, 0)
    assert (result.draw.crop_offsets >= 0).all() and (result.draw.crop_offsets <= 4).all()
    assert (result.draw.crop_offsets != 2).any(), "the crop is learned"
    with pytest.raises(ValueError, match="source_size"):
        reconstruct(model, observed, labels, get_attack("inversed-aware"), (1, 32, 32), MEAN[:1], STD[:1],
                    generators(2), 1, policy=policy, augmentation_mode="crop", source_size=20)


def test_a_diverging_policy_aware_attack_is_flagged_without_disturbing_the_others() -> None:
    policy = parse_policy("7")
    model, _, _, labels, observed = shared_case(policy, fixed_draw([[1.0], [-1.0]]))
    poisoned = [g.clone() for g in observed]
    poisoned[0][1] = float("nan")
    config, arguments = get_attack("inversed-aware"), dict(policy=policy, augmentation_mode="policy")
    result = reconstruct(model, poisoned, labels, config, (3, 32, 32), MEAN, STD, generators(2), 4, **arguments)
    healthy = reconstruct(model, [g[:1] for g in observed], labels[:1], config, (3, 32, 32), MEAN, STD,
                          generators(1), 4, **arguments)
    assert result.diverged.tolist() == [False, True]
    assert torch.allclose(result.images[0], healthy.images[0], atol=1e-12)
    assert torch.isfinite(result.images).all() and torch.isfinite(result.draw.signs).all()
    assert result.draw.signs[1].tolist() == [1.0] and result.draw.crop_offsets[1].tolist() == [4.0, 4.0], \
        "never finite: the first hypothesis' starting draw"


def test_pruning_keeps_the_hypothesis_of_lowest_warm_up_cost() -> None:
    """Without decay the first W steps of any budget agree, so a W-step attack tells which hypothesis
    leads after the warm-up: the pruned attack must go on with that one, from the same state."""
    policy = parse_policy("7-1+9")  # 4 + 1 hypotheses
    draw = AugmentationDraw(torch.tensor([[4, 4]] * 3), torch.zeros(3, dtype=torch.bool), torch.tensor([0, 0, 1]),
                            torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
    model, _, _, labels, observed = shared_case(policy, draw)
    steady = dataclasses.replace(get_attack("inversed-aware"), lr_decay=False, hypothesis_warmup=0.0)
    arguments = dict(policy=policy, augmentation_mode="policy")
    warm_up = reconstruct(model, observed, labels, steady, (3, 32, 32), MEAN, STD, generators(3), 4, **arguments)
    pruned_config = dataclasses.replace(steady, hypothesis_warmup=0.25, hypotheses_kept=1)
    pruned = reconstruct(model, observed, labels, pruned_config, (3, 32, 32), MEAN, STD, generators(3), 16, **arguments)
    assert pruned_config.with_iterations(16).warmup_iterations == 4
    assert torch.equal(pruned.draw.subpolicy, warm_up.draw.subpolicy)
    assert torch.equal(pruned.draw.signs.sign(), warm_up.draw.signs.sign()), "signs move < 0.16 from their start"
    assert torch.equal(pruned.cost_history[:, :4], warm_up.cost_history)
    assert torch.equal(pruned.images, reconstruct(model, observed, labels, pruned_config, (3, 32, 32), MEAN, STD,
                                                  generators(3), 16, **arguments).images), "deterministic"


def test_keeping_every_hypothesis_is_the_unpruned_attack() -> None:
    policy = parse_policy("3-1-7")  # 8 hypotheses, all kept after the warm-up: the optimiser state carries over
    model, _, _, labels, observed = shared_case(policy, fixed_draw([[1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]]))
    arguments = dict(policy=policy, augmentation_mode="policy")
    config = get_attack("inversed-aware")
    results = [reconstruct(model, observed, labels, dataclasses.replace(config, hypothesis_warmup=warmup,
                                                                        hypotheses_kept=8),
                           (3, 32, 32), MEAN, STD, generators(2), 12, **arguments) for warmup in (0.0, 0.3)]
    for field in ("images", "final_cost", "cost_history", "diverged"):
        assert torch.equal(getattr(results[0], field), getattr(results[1], field)), field
    for field in ("crop_offsets", "subpolicy", "signs"):
        assert torch.equal(getattr(results[0].draw, field), getattr(results[1].draw, field)), field
