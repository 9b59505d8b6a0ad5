"""Attacks: configs, batched reconstruction == one at a time, recovery, labels, the stage (ats.attack)."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from ats.attack import reconstruct as reconstruct_module
from ats.attack.configs import ATTACKS, PAPER_ATTACK_MATRIX, get_attack
from ats.attack.labels import last_linear_weight_index, recover_labels
from ats.attack.metrics import psnr
from ats.attack.objectives import attacked_parameters, gradient_matching_cost, total_variation
from ats.attack.reconstruct import eval_mode, observed_gradients, reconstruct
from ats.attack.run import attack_stage
from ats.defence.gradient import GradientDefence
from ats.runtime.hdf5 import read_h5

MEAN = torch.tensor([0.5, 0.4, 0.3])
STD = torch.tensor([0.25, 0.2, 0.3])


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny models on one intra-op thread.

    They gain nothing from more, and on a busy 2-core machine OpenMP threads that wait for each
    other slowed this file down more than tenfold.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small_net(size: int = 16, classes: int = 10, seed: int = 0, batch_norm: bool = False) -> nn.Module:
    """An untrained conv net: conv–ReLU, strided conv–(BN)–ReLU, linear."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(32))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(32 * (size // 2) ** 2, classes)]
    return nn.Sequential(*layers).eval()


def smooth_images(count: int, size: int = 16) -> torch.Tensor:
    """Images in [0, 1] made of a few smooth sinusoids (natural-looking, recoverable with a TV prior)."""
    g = torch.Generator().manual_seed(123)
    rows, columns = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for _ in range(count):
        frequencies = torch.rand(3, 2, generator=g) * 4 + 1
        phases = torch.rand(3, generator=g) * 6
        images.append(0.5 + 0.4 * torch.sin(math.pi * (frequencies[:, :1, None] * columns
                                                        + frequencies[:, 1:, None] * rows) + phases[:, None, None]))
    return torch.stack(images)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images - MEAN[:, None, None].to(images)) / STD[:, None, None].to(images)


def generators(count: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(count)]


def attack_case(count: int, dtype: torch.dtype = torch.float64, size: int = 16, batch_norm: bool = False):
    model = small_net(size, batch_norm=batch_norm).to(dtype)
    images = normalise(smooth_images(count, size)).to(dtype)
    labels = torch.tensor([1, 5, 5, 2, 7, 0][:count])
    return model, images, labels, observed_gradients(model, images, labels)


# --------------------------------------------------------------------------- configs


def test_attack_configs_follow_the_original_table() -> None:
    assert set(ATTACKS) == {"inversed", "inversed-zero", "inversed-sgd-sim", "inversed-LBFGS-sim",
                            "inversed-adam-L1", "inversed-adam-L2", "zhu", "inversed-large"}
    main = ATTACKS["inversed"]
    assert (main.cost, main.optimizer, main.lr, main.iterations, main.restarts, main.tv_weight, main.init,
            main.signed, main.boxed, main.lr_decay) == ("sim", "adam", 0.1, 4800, 1, 1e-4, "randn", True, True, True)
    assert main.lr_milestones == (1799, 2999, 4203)
    zhu = ATTACKS["zhu"]
    assert (zhu.cost, zhu.optimizer, zhu.lr, zhu.iterations, zhu.restarts, zhu.tv_weight, zhu.signed,
            zhu.boxed, zhu.lr_decay) == ("l2", "lbfgs", 1e-4, 50, 2, 1e-3, False, False, False)
    lbfgs = ATTACKS["inversed-LBFGS-sim"]
    assert (lbfgs.optimizer, lbfgs.lr, lbfgs.iterations, lbfgs.restarts, lbfgs.lr_milestones) == (
        "lbfgs", 1e-4, 300, 16, ())
    sgd = ATTACKS["inversed-sgd-sim"]
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.nesterov) == ("sgd", 0.01, 0.9, True)
    assert ATTACKS["inversed-zero"].init == "zeros"
    assert (ATTACKS["inversed-adam-L1"].cost, ATTACKS["inversed-adam-L2"].cost) == ("l1", "l2")
    assert ATTACKS["inversed-large"].tv_weight == 0.1
    assert set(PAPER_ATTACK_MATRIX.values()) <= set(ATTACKS)
    assert PAPER_ATTACK_MATRIX["LBFGS+L2"] == "zhu" and PAPER_ATTACK_MATRIX["Adam+Cosine"] == "inversed"


@pytest.mark.parametrize("iterations", [4800, 300, 40, 3])
def test_learning_rate_schedule_equals_the_original_multistep_lr(iterations: int) -> None:
    config = get_attack("inversed", iterations)
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([parameter], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[iterations // 2.667, iterations // 1.6, iterations // 1.142], gamma=0.1)
    for iteration in range(iterations):
        assert config.learning_rate(iteration) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_with_iterations_scales_the_budget_and_milestones() -> None:
    config = ATTACKS["inversed"].with_iterations(200)
    assert (config.iterations, config.lr_milestones) == (200, (74, 124, 175))
    assert config.with_iterations(4800) == ATTACKS["inversed"]
    with pytest.raises(ValueError, match="positive int"):
        ATTACKS["inversed"].with_iterations(0)
    with pytest.raises(ValueError, match="unknown attack 'dlg'"):
        get_attack("dlg")


# --------------------------------------------------------------------------- objectives


def test_observed_gradients_equal_batch_one_autograd_gradients() -> None:
    model, images, labels, observed = attack_case(3, batch_norm=True)
    names = list(attacked_parameters(model))
    for index in range(3):
        loss = 0.5 * nn.functional.cross_entropy(model(images[index:index + 1]), labels[index:index + 1])
        expected = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        for name, batched, single in zip(names, observed, expected):
            assert torch.allclose(batched[index], single, atol=1e-12), name


def test_costs_and_total_variation_by_hand() -> None:
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    target = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, -4.0]])]
    assert gradient_matching_cost(g, target, "sim").item() == pytest.approx(1 - (9 - 16) / 25)
    assert gradient_matching_cost(g, target, "l2").item() == pytest.approx(64.0)
    assert gradient_matching_cost(g, target, "l1").item() == pytest.approx(8.0)
    zero = [torch.zeros(2), torch.zeros(1, 2)]
    assert gradient_matching_cost(zero, target, "sim").item() == 1.0, "norm floor: no NaN for a zero gradient"
    image = torch.tensor([[[0.0, 1.0], [1.0, 3.0]]])
    assert total_variation(image).item() == pytest.approx((1 + 2) / 2 + (1 + 2) / 2)


# --------------------------------------------------------------------------- batched == one at a time


@pytest.mark.parametrize("name, iterations", [("inversed", 30), ("inversed-sgd-sim", 10), ("inversed-adam-L1", 10)])
def test_batched_attacks_equal_attacks_run_one_at_a_time_in_float64(name: str, iterations: int) -> None:
    model, images, labels, observed = attack_case(3)
    config = get_attack(name)
    batched = reconstruct(model, observed, labels, config, (3, 16, 16), MEAN, STD, generators(3), iterations)
    for index in range(3):
        single = reconstruct(model, [g[index:index + 1] for g in observed], labels[index:index + 1], config,
                             (3, 16, 16), MEAN, STD, generators(1, offset=index), iterations)
        assert (batched.images[index] - single.images[0]).abs().max() <= 1e-6
        assert (batched.cost_history[index] - single.cost_history[0]).abs().max() <= 1e-9
        assert batched.final_cost[index].item() == pytest.approx(single.final_cost[0].item(), abs=1e-9)
    assert batched.cost_history.shape == (3, iterations) and not batched.diverged.any()


def test_batched_attacks_agree_with_one_at_a_time_in_float32_for_a_few_iterations() -> None:
    model, images, labels, observed = attack_case(3, dtype=torch.float32)
    config = get_attack("inversed")
    batched = reconstruct(model, observed, labels, config, (3, 16, 16), MEAN, STD, generators(3), 5)
    singles = torch.cat([
        reconstruct(model, [g[i:i + 1] for g in observed], labels[i:i + 1], config, (3, 16, 16), MEAN, STD,
                    generators(1, offset=i), 5).images
        for i in range(3)])
    assert (batched.images - singles).abs().max() <= 1e-4


def test_chunking_does_not_change_results_and_cuda_oom_halves_the_chunk(monkeypatch, caplog) -> None:
    model, images, labels, observed = attack_case(3)
    config = get_attack("inversed")
    whole = reconstruct(model, observed, labels, config, (3, 16, 16), MEAN, STD, generators(3), 8)
    original = reconstruct_module._attack_jointly

    def fail_on_large_chunks(objective, initial, *args, **kwargs):
        if initial.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(objective, initial, *args, **kwargs)

    monkeypatch.setattr(reconstruct_module, "_attack_jointly", fail_on_large_chunks)
    with caplog.at_level(logging.WARNING):
        chunked = reconstruct(model, observed, labels, config, (3, 16, 16), MEAN, STD, generators(3), 8, max_batch=2)
    assert "CUDA out of memory during 3 attacks, 2 at once; retrying with 1 at once" in caplog.text
    assert torch.allclose(whole.images, chunked.images, atol=1e-9)
    assert torch.allclose(whole.cost_history, chunked.cost_history, atol=1e-9)


def test_chunks_are_evened_out(monkeypatch) -> None:
    """5 attacks at most 4 at once run as 3 + 2, not 4 + 1."""
    model, images, labels, observed = attack_case(5)
    original = reconstruct_module._attack_jointly
    sizes = []

    def record(objective, initial, *args, **kwargs):
        sizes.append(initial.shape[0])
        return original(objective, initial, *args, **kwargs)

    monkeypatch.setattr(reconstruct_module, "_attack_jointly", record)
    reconstruct(model, observed, labels, get_attack("inversed"), (3, 16, 16), MEAN, STD, generators(5), 2, max_batch=4)
    assert sizes == [3, 2]


def test_default_chunk_is_sized_by_the_model_on_cpu_and_unbounded_on_gpu() -> None:
    """On the CPU a chunk's per-attack gradients stay near 2**27 floats; a GPU takes every attack at once."""
    from ats.case.models import build_model

    def count(arch: str) -> int:
        return sum(p.numel() for p in attacked_parameters(build_model(arch, 100, 3)).values())

    assert count("ResNet20-4") == 4_350_884
    assert reconstruct_module.default_max_batch(count("ResNet20-4"), torch.device("cpu")) == 30
    assert reconstruct_module.default_max_batch(count("ResNet20"), torch.device("cpu")) == 482
    assert reconstruct_module.default_max_batch(1 << 30, torch.device("cpu")) == 1
    assert reconstruct_module.default_max_batch(count("ResNet20-4"), torch.device("cuda")) is None


def test_restarts_keep_the_trial_with_the_lowest_final_cost() -> None:
    model, images, labels, observed = attack_case(1)
    config = dataclasses.replace(get_attack("inversed"), restarts=2)
    best = reconstruct(model, observed, labels, config, (3, 16, 16), MEAN, STD, generators(1), 6)
    single = dataclasses.replace(config, restarts=1)
    trials = []
    for draws_before in (0, 1):  # restart r starts from the r-th image the target's generator draws
        generator = generators(1)[0]
        for _ in range(draws_before):
            torch.randn((3, 16, 16), generator=generator, dtype=torch.float64)
        trials.append(reconstruct(model, observed, labels, single, (3, 16, 16), MEAN, STD, [generator], 6))
    assert trials[0].final_cost.item() != trials[1].final_cost.item()
    winner = min(trials, key=lambda trial: trial.final_cost.item())
    assert torch.allclose(best.images, winner.images, atol=1e-12)
    assert best.final_cost.item() == pytest.approx(winner.final_cost.item(), abs=1e-12)


@pytest.mark.slow
def test_lbfgs_attacks_run_per_target() -> None:
    model, images, labels, observed = attack_case(2)
    result = reconstruct(model, observed, labels, get_attack("zhu"), (3, 16, 16), MEAN, STD, generators(2), 2)
    single = reconstruct(model, [g[1:] for g in observed], labels[1:], get_attack("zhu"), (3, 16, 16), MEAN, STD,
                         generators(1, offset=1), 2)
    assert result.images.shape == (2, 3, 16, 16) and result.cost_history.shape == (2, 2)
    assert torch.equal(result.images[1], single.images[0])
    assert torch.isfinite(result.final_cost).all() and not result.diverged.any()


def test_a_diverging_attack_is_flagged_without_disturbing_the_others() -> None:
    model, images, labels, observed = attack_case(2)
    poisoned = [g.clone() for g in observed]
    poisoned[0][1] = float("nan")  # target 1's shared gradient is corrupt: its cost is NaN
    config = get_attack("inversed")
    result = reconstruct(model, poisoned, labels, config, (3, 16, 16), MEAN, STD, generators(2), 5)
    healthy = reconstruct(model, [g[:1] for g in observed], labels[:1], config, (3, 16, 16), MEAN, STD,
                          generators(1), 5)
    assert result.diverged.tolist() == [False, True]
    assert torch.allclose(result.images[0], healthy.images[0], atol=1e-12)
    assert torch.isfinite(result.images).all(), "a diverged attack returns its last finite image"
    start = torch.randn((3, 16, 16), generator=generators(2)[1], dtype=torch.float64)
    assert torch.equal(result.images[1], start), "never finite: the starting image"


def test_reconstruct_names_the_culprit_of_bad_input() -> None:
    model, images, labels, observed = attack_case(2)
    config = get_attack("inversed")
    first_name = next(iter(attacked_parameters(model)))
    with pytest.raises(ValueError, match=f"observed gradient of '{first_name}' has shape"):
        reconstruct(model, [observed[0][:1], *observed[1:]], labels, config, (3, 16, 16), MEAN, STD, generators(2))
    with pytest.raises(ValueError, match="labels must be a LongTensor"):
        reconstruct(model, observed, labels.float(), config, (3, 16, 16), MEAN, STD, generators(2))
    with pytest.raises(ValueError, match="1 generators for 2 targets"):
        reconstruct(model, observed, labels, config, (3, 16, 16), MEAN, STD, generators(1))
    with pytest.raises(ValueError, match="one per channel"):
        reconstruct(model, observed, labels, config, (3, 16, 16), MEAN[:2], STD, generators(2))
    with pytest.raises(ValueError, match="observed gradient tensors"):
        reconstruct(model, observed[:-1], labels, config, (3, 16, 16), MEAN, STD, generators(2))


def test_eval_mode_restores_each_module_mode() -> None:
    model = small_net(batch_norm=True).train()
    model[3].eval()
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and not model[3].training and model[4].training


# --------------------------------------------------------------------------- the attack works


@pytest.mark.slow
def test_inverting_gradients_recovers_images_from_a_small_untrained_net() -> None:
    model, images, labels, observed = attack_case(2, dtype=torch.float32)
    result = reconstruct(model, observed, labels, get_attack("inversed"), (3, 16, 16), MEAN, STD, generators(2), 300)
    denormalise = lambda x: x * STD[:, None, None] + MEAN[:, None, None]  # noqa: E731
    values = psnr(denormalise(result.images), denormalise(images))
    assert (values > 25).all(), values
    assert (result.cost_history[:, -1] < result.cost_history[:, 0]).all()


# --------------------------------------------------------------------------- labels


def test_idlg_recovers_the_true_label_of_each_target() -> None:
    model = small_net(classes=20, seed=3)
    images = normalise(smooth_images(6))
    labels = torch.tensor([0, 19, 7, 7, 3, 12])
    assert torch.equal(recover_labels(model, observed_gradients(model, images, labels)), labels)
    assert last_linear_weight_index(model) == len(attacked_parameters(model)) - 2


def test_idlg_needs_a_linear_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="no nn.Linear"):
        recover_labels(model, [torch.zeros(1, 4, 3, 3, 3), torch.zeros(1, 4)])


# --------------------------------------------------------------------------- the stage


class IdentityPreprocessor:
    """A stand-in for ats.transforms.pipeline.Preprocessor: no augmentation, only normalisation."""

    mean, std = MEAN.reshape(1, 3, 1, 1), STD.reshape(1, 3, 1, 1)

    def __call__(self, images: np.ndarray, mode: str, policy, draw) -> torch.Tensor:
        return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std


def _run_stage(tmp_path, name: str, batch_size: int, **changes) -> tuple[dict, dict]:
    pixels = (smooth_images(3) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    arguments = dict(
        model=small_net(), images_uint8=pixels, labels=np.array([4, 1, 9]), target_indices=np.array([10, 11, 12]),
        preprocessor=IdentityPreprocessor(), augmentation_mode="plain", policy=(), draw=None,
        defence=GradientDefence("prune", 50), defend_observed_gradient=True, attack_name="inversed",
        iterations=6, batch_size=batch_size, label_recovery=True, seed=0, device="cpu",
        train_mean=torch.full((3, 16, 16), 0.25), train_mean_original=torch.full((3, 16, 16), 0.25),
        stage="final", training_step=10,
        out_h5=tmp_path / name, fingerprint="test")
    arguments.update(changes)
    attack_stage(**arguments)
    return read_h5(tmp_path / name, expected_fingerprint="test")


def test_attack_stage_writes_reconstructions_and_metrics(tmp_path) -> None:
    arrays, attrs = _run_stage(tmp_path, "attack.h5", batch_size=2)
    assert arrays["reconstructions"].shape == arrays["ground_truth"].shape == (3, 3, 16, 16)
    assert arrays["reconstructions"].min() >= 0 and arrays["reconstructions"].max() <= 1
    assert arrays["cost_history"].shape == (3, 6)
    assert arrays["diverged"].dtype == bool and not arrays["diverged"].any()
    assert arrays["labels"].tolist() == [4, 1, 9] and arrays["target_indices"].tolist() == [10, 11, 12]
    assert arrays["attack_labels"].tolist() == [4, 1, 9], "iDLG survives 50 % pruning here"
    recomputed = psnr(torch.from_numpy(arrays["reconstructions"]).double(),
                      torch.from_numpy(arrays["ground_truth"]).double())
    assert np.allclose(arrays["metrics/psnr"], recomputed.numpy(), atol=1e-4)
    for key in ("metrics/ssim", "metrics/mse", "metrics/feature_mse", "final_cost"):
        assert arrays[key].shape == (3,) and np.isfinite(arrays[key]).all()
    assert attrs["attack"] == "inversed" and attrs["iterations"] == 6 and attrs["defence"] == "prune-50"
    assert attrs["defend_observed_gradient"] and attrs["label_recovery"]


def test_attack_stage_results_do_not_depend_on_the_batch_size(tmp_path) -> None:
    together, _ = _run_stage(tmp_path, "together.h5", batch_size=3, defence=GradientDefence("gauss", 1e-3),
                             label_recovery=False)
    alone, _ = _run_stage(tmp_path, "alone.h5", batch_size=1, defence=GradientDefence("gauss", 1e-3),
                          label_recovery=False)
    assert np.allclose(together["reconstructions"], alone["reconstructions"], atol=1e-4)
    assert np.allclose(together["metrics/psnr"], alone["metrics/psnr"], atol=1e-3)


def test_attack_stage_rejects_bad_targets(tmp_path) -> None:
    with pytest.raises(ValueError, match="target_indices must be distinct"):
        _run_stage(tmp_path, "bad.h5", batch_size=1, target_indices=np.array([1, 1, 2]))
    with pytest.raises(ValueError, match="uint8"):
        _run_stage(tmp_path, "bad.h5", batch_size=1, images_uint8=np.zeros((3, 16, 16, 3)))
    assert not (tmp_path / "bad.h5").exists()
