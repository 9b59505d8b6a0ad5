"""S_acc against docs/original-code.md §6.3 written out with NumPy (corrcoef, the general eigen-solver, the formula)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ats.search.accuracy import (
    EIGENVALUE_OFFSET,
    accuracy_score,
    input_jacobians,
    score_from_jacobian,
)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 3 * 3, 10))
    return model.eval()


def _images(count: int, seed: int = 5) -> torch.Tensor:
    return torch.randn((count, 3, 8, 8), generator=torch.Generator().manual_seed(seed))


def naive_accuracy_score(model: nn.Module, images: torch.Tensor) -> float:
    """The original: Jacobian of the summed logits per image, np.corrcoef, np.linalg.eig, the formula."""
    rows = []
    for image in images:
        x = image.unsqueeze(0).clone().requires_grad_(True)
        model(x).sum().backward()
        rows.append(x.grad.flatten().numpy().astype(np.float64))
    eigenvalues = np.linalg.eig(np.corrcoef(np.stack(rows)))[0].real
    return float(-np.sum(np.log(eigenvalues + EIGENVALUE_OFFSET) + 1.0 / (eigenvalues + EIGENVALUE_OFFSET)))


@pytest.mark.parametrize("count", [2, 7, 12])
def test_matches_the_naive_implementation(count: int) -> None:
    model, images = tiny_model(), _images(count)
    assert accuracy_score(model, images) == pytest.approx(naive_accuracy_score(model, images), abs=1e-4)


def test_is_at_most_minus_the_batch_size() -> None:
    for seed in range(3):
        images = _images(9, seed)
        assert accuracy_score(tiny_model(seed), images) <= -len(images) + 1e-3
    uncorrelated = np.eye(6, 40)  # orthogonal zero-mean-free rows: correlation close to the identity
    assert score_from_jacobian(uncorrelated) <= -6 + 1e-3


def test_jacobian_rows_are_per_image_and_independent_of_chunking() -> None:
    model, images = tiny_model(), _images(6)
    whole = input_jacobians(model, images)
    assert whole.shape == (6, 3 * 8 * 8)
    assert torch.allclose(input_jacobians(model, images, chunk_size=4), whole, atol=1e-6)
    single = input_jacobians(model, images[3:4])
    assert torch.allclose(single[0], whole[3], atol=1e-6)


def test_is_deterministic() -> None:
    model, images = tiny_model(), _images(5)
    assert accuracy_score(model, images) == accuracy_score(model, images)


def test_a_constant_jacobian_row_gives_nan_not_an_error() -> None:
    rows = np.random.default_rng(0).normal(size=(4, 30))
    rows[2] = 1.0
    assert np.isnan(score_from_jacobian(rows))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        accuracy_score(tiny_model().train(), _images(3))
    with pytest.raises(ValueError, match="float tensor"):
        accuracy_score(tiny_model(), torch.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="K >= 1"):
        score_from_jacobian(np.zeros((0, 5)))
