"""Gradient defences: magnitude pruning, Gaussian noise and Laplacian noise.

The original code (HEAD, ``inversefed/training/training_routine.py``) applies these to every
parameter gradient after ``loss.backward()`` and before ``optimizer.step()`` during training only;
the gradient the attacker inverts stays clean (docs/original-code.md §9.2). This module serves both uses: the
training loop calls :meth:`GradientDefence.apply` on the model's gradients, and the attack stage
can call it on the gradient it shares with the attacker (``defend_observed_gradient``).

Semantics, per gradient tensor (and per sample when the tensors carry a leading batch dimension,
``per_sample=True``, so that a batch of shared gradients is defended exactly as each one would be
on its own):

* ``prune``: zero the ``k = floor(numel · p / 100)`` entries of smallest magnitude. This is the
  original's ``int(numel * p * 0.01)`` (identical for every ``numel`` below 6·10⁶ and the
  percentages used) with one change: entries of equal magnitude are zeroed in index order (stable
  sort), where the original's ``topk`` left the choice to the kernel.
* ``gauss``: add ``σ · N(0, 1)`` noise to every entry.
* ``laplace``: add ``b · Laplace(0, 1)`` noise to every entry.

Noise is drawn from an explicit generator (never global state), on the generator's device, and then
moved to the gradient's device; with a CPU generator the noise is therefore the same on every
device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

GradientDefenceKind = Literal["prune", "gauss", "laplace"]
GRADIENT_DEFENCE_KINDS: tuple[str, ...] = ("prune", "gauss", "laplace")
NON_GRADIENT_DEFENCE_KINDS: tuple[str, ...] = ("none", "crop", "policy")


def _check_tensors(grads: Sequence[torch.Tensor], per_sample: bool) -> None:
    for index, grad in enumerate(grads):
        if not isinstance(grad, torch.Tensor):
            raise TypeError(f"gradient {index} is a {type(grad).__name__}, not a torch.Tensor")
        if per_sample and grad.dim() == 0:
            raise ValueError(f"gradient {index} is a scalar, but per_sample=True needs a leading batch dimension")


def prune_gradients(
    grads: Sequence[torch.Tensor], percent: float, *, per_sample: bool = False
) -> list[torch.Tensor]:
    """Return copies of ``grads`` with the smallest ``percent`` % of each tensor's entries zeroed.

    With ``per_sample=True`` the first dimension indexes samples and each sample's slice of each
    tensor is pruned on its own.
    """
    if not (isinstance(percent, (int, float)) and math.isfinite(percent) and 0 <= percent <= 100):
        raise ValueError(f"pruning percentage {percent!r} must be a number in [0, 100]")
    _check_tensors(grads, per_sample)
    pruned = []
    for grad in grads:
        rows = grad.reshape(grad.shape[0], -1) if per_sample else grad.reshape(1, -1)
        count = math.floor(rows.shape[1] * percent / 100)
        result = rows.clone()
        if count > 0:
            order = torch.sort(rows.abs(), dim=1, stable=True).indices
            result.scatter_(1, order[:, :count], 0.0)
        pruned.append(result.reshape(grad.shape))
    return pruned


def _draw_like(grad: torch.Tensor, generator: torch.Generator,
               standard_noise: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Standard noise shaped like ``grad``, drawn on the generator's device, moved to ``grad``'s."""
    noise = standard_noise(grad.shape, generator=generator, dtype=grad.dtype, device=generator.device)
    return noise.to(grad.device)


def _standard_laplace(shape: torch.Size, *, generator: torch.Generator, dtype: torch.dtype,
                      device: torch.device) -> torch.Tensor:
    """Laplace(0, 1) samples by inverting the CDF of a uniform draw.

    ``torch.distributions.Laplace`` cannot take a generator, so it is done by hand, with the same
    guard as torch: the uniform is kept away from -1 so that ``log1p(-|u|)`` stays finite.
    """
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device) * 2 - 1
    uniform = uniform.clamp(min=-1 + torch.finfo(torch.float64).eps)
    return (-uniform.sign() * torch.log1p(-uniform.abs())).to(dtype)


def add_gaussian_noise(grads: Sequence[torch.Tensor], sigma: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Return ``grads`` plus independent ``N(0, sigma²)`` noise on every entry."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"Gaussian noise sigma {sigma!r} must be a finite number >= 0")
    _check_tensors(grads, per_sample=False)
    return [grad + sigma * _draw_like(grad, generator, torch.randn) for grad in grads]


def add_laplacian_noise(grads: Sequence[torch.Tensor], scale: float, generator: torch.Generator) -> list[torch.Tensor]:
    """Return ``grads`` plus independent ``Laplace(0, scale)`` noise on every entry."""
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"Laplacian noise scale {scale!r} must be a finite number >= 0")
    _check_tensors(grads, per_sample=False)
    return [grad + scale * _draw_like(grad, generator, _standard_laplace) for grad in grads]


@dataclass(frozen=True)
class GradientDefence:
    """One gradient defence and its strength (percentage for ``prune``, σ or b for the noises)."""

    kind: GradientDefenceKind
    strength: float

    def __post_init__(self) -> None:
        if self.kind not in GRADIENT_DEFENCE_KINDS:
            raise ValueError(f"gradient defence kind {self.kind!r} is not one of {GRADIENT_DEFENCE_KINDS}")
        limit = 100 if self.kind == "prune" else math.inf
        if not (isinstance(self.strength, (int, float)) and 0 <= self.strength <= limit
                and math.isfinite(self.strength)):
            raise ValueError(f"gradient defence {self.kind!r}: strength {self.strength!r} must be in [0, {limit}]")

    @classmethod
    def from_spec(cls, kind: str, strength: float | None) -> GradientDefence | None:
        """Build the defence for a parsed defence name (:func:`ats.defence.names.parse_defence`).

        Returns ``None`` for the kinds that do not touch gradients (``none``, ``crop``, a policy),
        so callers can treat "no gradient defence" uniformly.
        """
        if kind in NON_GRADIENT_DEFENCE_KINDS:
            return None
        if kind not in GRADIENT_DEFENCE_KINDS:
            raise ValueError(f"unknown defence kind {kind!r}; expected one of "
                             f"{NON_GRADIENT_DEFENCE_KINDS + GRADIENT_DEFENCE_KINDS}")
        if strength is None:
            raise ValueError(f"gradient defence {kind!r} needs a strength")
        return cls(kind=kind, strength=float(strength))  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """A readable label such as ``prune-70`` or ``gauss-0.001`` (for logs and file attributes)."""
        return f"{self.kind}-{self.strength:g}"

    def apply(
        self, grads: Sequence[torch.Tensor], generator: torch.Generator, *, per_sample: bool = False
    ) -> list[torch.Tensor]:
        """Return the defended gradients (new tensors; ``grads`` are left untouched).

        ``per_sample`` says that every tensor has a leading batch dimension of independent samples;
        only pruning depends on it (noise is independent per entry either way).
        """
        if self.kind == "prune":
            return prune_gradients(grads, self.strength, per_sample=per_sample)
        _check_tensors(grads, per_sample)
        if self.kind == "gauss":
            return add_gaussian_noise(grads, self.strength, generator)
        return add_laplacian_noise(grads, self.strength, generator)
