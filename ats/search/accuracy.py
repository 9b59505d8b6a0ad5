"""The accuracy score S_acc (docs/original-code.md §6): a training-free trainability proxy on the untrained model.

For a batch of K images with distinct labels, J[k] = ∂(Σ_c f_c(x_k))/∂x_k (one backward pass of a
vector of ones over the logits), M = the K×K Pearson correlation matrix of the flattened rows of
J, and S_acc = −Σ_j [log(λ_j + k) + 1/(λ_j + k)] over the eigenvalues λ_j of M, k = 1e-5 (the
NASWOT v1 score of Mellor et al. 2020). Since trace(M) = K and log λ + 1/λ ≥ 1, S_acc ≲ −K; it is
highest when the inputs' Jacobians are uncorrelated, which predicts a policy that trains well.

Deviation: the original used the general eigen-solver ``np.linalg.eig``, which can return complex
values with tiny imaginary parts for this symmetric matrix; ``eigvalsh`` returns the same spectrum
as real numbers. The correlation and the spectrum are computed in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ats.search.privacy import require_eval_mode

EIGENVALUE_OFFSET = 1e-5  # k of the formula above, as in the original.


def input_jacobians(model: nn.Module, images: Tensor, chunk_size: int | None = None) -> Tensor:
    """Rows ∂(Σ_c f_c(x_k))/∂x_k, flattened to (N, C·H·W), in the images' dtype and device.

    In eval mode each row depends on its own image only, so the rows of several S_acc runs can be
    computed in one batch (``chunk_size`` images per pass bounds memory; default: all at once).
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"S_acc: images must be a float tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"S_acc: chunk_size must be a positive integer or None, got {chunk_size!r}")
    require_eval_mode(model, "S_acc")
    step = chunk_size or max(len(images), 1)
    rows = []
    with torch.enable_grad():
        for start in range(0, len(images), step):
            inputs = images[start:start + step].detach().requires_grad_(True)
            (jacobian,) = torch.autograd.grad(model(inputs).sum(), inputs)
            rows.append(jacobian.flatten(1))
    return torch.cat(rows) if rows else images.detach().flatten(1)


def score_from_jacobian(jacobian: Tensor | np.ndarray) -> float:
    """S_acc of one batch from its Jacobian rows (K, D); NaN when a row is constant (as np.corrcoef)."""
    rows = (jacobian.detach().cpu().double().numpy() if isinstance(jacobian, Tensor)
            else np.asarray(jacobian, np.float64))
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"S_acc: need a (K, D) Jacobian with K >= 1 rows, got shape {rows.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.atleast_2d(np.corrcoef(rows))
        if not np.all(np.isfinite(correlation)):
            return float("nan")
        shifted = np.linalg.eigvalsh(correlation) + EIGENVALUE_OFFSET
        return float(-np.sum(np.log(shifted) + 1.0 / shifted))


def accuracy_score(model: nn.Module, images: Tensor) -> float:
    """S_acc of one batch of images (normalised, distinct labels) on ``model`` in eval mode."""
    return score_from_jacobian(input_jacobians(model, images))
