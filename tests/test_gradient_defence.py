"""Gradient defences change gradients exactly as specified (ats.defence.gradient)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ats.defence.gradient import (
    GradientDefence,
    add_gaussian_noise,
    add_laplacian_noise,
    prune_gradients,
)
from ats.defence.names import parse_defence


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct_gradients(seed: int = 0) -> list[torch.Tensor]:
    """Tensors of several shapes whose entries have distinct magnitudes (no ties)."""
    g = _generator(seed)
    shapes = [(7,), (4, 5), (3, 2, 3, 3), (1,)]
    return [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes]


@pytest.mark.parametrize("percent", [0, 10, 30, 50, 70, 90, 95, 99, 100, 12.5])
def test_prune_zeros_exactly_the_smallest_fraction_of_each_tensor(percent: float) -> None:
    grads = _distinct_gradients()
    originals = [g.clone() for g in grads]
    pruned = prune_gradients(grads, percent)
    for original, result, before in zip(grads, pruned, originals):
        assert torch.equal(original, before), "the input must not be modified"
        count = math.floor(original.numel() * percent / 100)
        zeroed = result == 0
        assert int(zeroed.sum()) == count
        assert torch.equal(result[~zeroed], original[~zeroed]), "kept entries keep their values"
        if 0 < count < original.numel():
            assert original[zeroed].abs().max() < original[~zeroed].abs().min(), "the smallest are zeroed"


def test_prune_count_matches_the_original_rule_for_the_paper_percentages() -> None:
    # the original computes int(numel * percent * 0.01)
    for percent in (10, 20, 30, 50, 70, 80, 90, 95, 99):
        for numel in (1, 7, 27, 100, 1728, 36864, 147456):
            grad = torch.arange(1, numel + 1, dtype=torch.float32)
            zeros = int((prune_gradients([grad], percent)[0] == 0).sum())
            assert zeros == int(numel * percent * 0.01)


def test_prune_breaks_ties_in_index_order() -> None:
    grad = torch.tensor([2.0, -1.0, 1.0, 1.0, -1.0, 3.0])
    result = prune_gradients([grad], 50)[0]
    assert result.tolist() == [2.0, 0.0, 0.0, 0.0, -1.0, 3.0]


def test_per_sample_pruning_equals_pruning_each_sample_alone() -> None:
    g = _generator(1)
    batched = [torch.randn(4, 3, 5, generator=g), torch.randn(4, 6, generator=g)]
    together = prune_gradients(batched, 70, per_sample=True)
    for sample in range(4):
        alone = prune_gradients([t[sample] for t in batched], 70)
        for joint, single in zip(together, alone):
            assert torch.equal(joint[sample], single)
    # without per_sample the whole tensor is one population: a different result
    assert not torch.equal(prune_gradients(batched, 70)[0], together[0])


@pytest.mark.parametrize("bad", [-1, 100.5, float("nan"), float("inf")])
def test_prune_rejects_bad_percentages(bad: float) -> None:
    with pytest.raises(ValueError, match="pruning percentage"):
        prune_gradients([torch.ones(3)], bad)


def test_gaussian_noise_has_the_requested_distribution() -> None:
    sigma, n = 1e-2, 200_000
    grads = [torch.full((n // 2,), 3.0), torch.zeros(n // 4, 2)]
    noisy = add_gaussian_noise(grads, sigma, _generator(5))
    noise = torch.cat([(a - b).flatten() for a, b in zip(noisy, grads)]).double()
    assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(n)
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert stats.kstest(noise.numpy(), stats.norm(scale=sigma).cdf).pvalue > 1e-3


def test_laplacian_noise_has_the_requested_distribution() -> None:
    scale, n = 1e-1, 200_000
    grads = [torch.zeros(n, dtype=torch.float64)]
    noise = add_laplacian_noise(grads, scale, _generator(6))[0]
    assert torch.isfinite(noise).all()
    assert abs(float(noise.mean())) < 5 * scale * math.sqrt(2) / math.sqrt(n)
    assert float(noise.abs().mean()) == pytest.approx(scale, rel=0.01)  # E|X| = b
    assert float(noise.std()) == pytest.approx(scale * math.sqrt(2), rel=0.01)  # Var = 2b²
    assert stats.kstest(noise.numpy(), stats.laplace(scale=scale).cdf).pvalue > 1e-3


@pytest.mark.parametrize("add_noise", [add_gaussian_noise, add_laplacian_noise])
def test_noise_is_deterministic_under_a_seed_and_keeps_dtype(add_noise) -> None:
    grads = [torch.zeros(5, 3, dtype=torch.float64), torch.ones(4)]
    first = add_noise(grads, 0.5, _generator(7))
    second = add_noise(grads, 0.5, _generator(7))
    other = add_noise(grads, 0.5, _generator(8))
    for a, b, c, g in zip(first, second, other, grads):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        assert a.dtype == g.dtype and a.shape == g.shape
    assert torch.equal(grads[0], torch.zeros(5, 3, dtype=torch.float64)), "inputs untouched"


@pytest.mark.parametrize("name, kind, strength", [
    ("prune-70", "prune", 70.0), ("gauss-1e-3", "gauss", 1e-3), ("laplace-1e-2", "laplace", 1e-2)])
def test_from_spec_builds_each_gradient_defence(name: str, kind: str, strength: float) -> None:
    spec = parse_defence(name)
    defence = GradientDefence.from_spec(spec.kind, spec.strength)
    assert defence == GradientDefence(kind, strength)


@pytest.mark.parametrize("name", ["none", "crop", "3-1-7+43-18-18"])
def test_from_spec_returns_none_for_defences_that_do_not_touch_gradients(name: str) -> None:
    spec = parse_defence(name)
    assert GradientDefence.from_spec(spec.kind, spec.strength) is None


def test_from_spec_and_constructor_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown defence kind 'blur'"):
        GradientDefence.from_spec("blur", 1.0)
    with pytest.raises(ValueError, match="needs a strength"):
        GradientDefence.from_spec("gauss", None)
    with pytest.raises(ValueError, match="strength"):
        GradientDefence("prune", 120.0)
    with pytest.raises(ValueError, match="strength"):
        GradientDefence("laplace", -1.0)


def test_apply_dispatches_to_the_defence_functions() -> None:
    grads = _distinct_gradients(3)
    assert all(torch.equal(a, b) for a, b in zip(
        GradientDefence("prune", 50).apply(grads, _generator(0)), prune_gradients(grads, 50)))
    assert all(torch.equal(a, b) for a, b in zip(
        GradientDefence("gauss", 0.1).apply(grads, _generator(1)), add_gaussian_noise(grads, 0.1, _generator(1))))
    assert all(torch.equal(a, b) for a, b in zip(
        GradientDefence("laplace", 0.1).apply(grads, _generator(2)),
        add_laplacian_noise(grads, 0.1, _generator(2))))
    assert GradientDefence("gauss", 1e-3).name == "gauss-0.001"


def test_defence_in_a_training_step_changes_the_update() -> None:
    """Applied between backward and step, as the training loop does."""
    model = torch.nn.Linear(6, 3)
    model(torch.randn(4, 6, generator=_generator(0))).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters()]
    defended = GradientDefence("prune", 50).apply(grads, _generator(0))
    for parameter, grad in zip(model.parameters(), defended):
        parameter.grad = grad
    assert int(sum((p.grad == 0).sum() for p in model.parameters())) == 9 + 1  # 18·50 % and 3·50 %
    assert np.isfinite([float(p.grad.abs().sum()) for p in model.parameters()]).all()
