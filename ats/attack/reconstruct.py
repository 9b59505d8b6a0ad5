"""Gradient-inversion attacks, many at once.

The original benchmark attacks one image at a time for 4800 Adam steps (about 27 minutes per image
for ResNet20-4 on a CPU, spec §9 item 18). The attacks are independent, so here a whole batch of
them runs as one computation:

* the dummy gradients of all attacks come from one :func:`torch.func.vmap` over the per-sample
  gradient ``torch.func.grad`` of the training loss (``functional_call`` on the model), and the
  image gradient of each attack's cost from a second ``grad`` around it (double backward);
* every cost (gradient matching + TV) is a function of one attack's image only;
* one optimiser runs over the stacked ``(P, C, H, W)`` images. Adam and SGD update each entry from
  that entry's own gradient and state, so this is exactly ``P`` separate optimisers.

Hence a batched attack computes the same thing as the same attacks run one at a time, up to the
rounding of batched kernels (``tests/test_attack.py`` checks it in float64). L-BFGS is the
exception: its line search and curvature pairs mix all entries of its parameter, so L-BFGS configs
run one attack (target × restart) at a time.

Restarts are simply more attacks (each target's restarts are drawn from that target's generator);
each target keeps the restart with the lowest final gradient-matching cost (TV excluded), as in the
original. An attack whose cost becomes NaN or infinite is marked ``diverged`` and returns its last
image with a finite cost; the other attacks of the batch are unaffected (the original called
``exit(0)``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import grad_and_value, vmap

from ats.attack.configs import AttackConfig
from ats.attack.objectives import (
    attacked_parameters,
    gradient_matching_cost,
    per_sample_gradient_fn,
    total_variation,
)
from ats.runtime.logs import progress
from ats.runtime.memory import halving_on_cuda_oom

logger = logging.getLogger(__name__)

#: Per-attack gradient floats per chunk on the CPU (512 MiB in float32), see :func:`default_max_batch`.
_CPU_ATTACK_GRADIENT_FLOATS = 1 << 27


@dataclass(frozen=True)
class ReconstructionResult:
    """What :func:`reconstruct` returns, one row per target (the best restart of each).

    ``images``: ``(B, C, H, W)`` in normalised space. ``final_cost``: ``(B,)`` gradient-matching cost
    of the returned image, without TV (the original's trial score). ``cost_history``: ``(B, T)``
    total cost (matching + TV) before each of the ``T`` steps; entries after a divergence are NaN or
    meaningless. ``diverged``: ``(B,)`` True where the cost became NaN/inf.
    """

    images: torch.Tensor
    final_cost: torch.Tensor
    cost_history: torch.Tensor
    diverged: torch.Tensor


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode, then restore each one's previous mode.

    The original attacks in eval mode (batch-norm running statistics for both gradients); eval mode
    also makes every sample's gradient independent of the others in its batch.
    """
    previous = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in previous:
            module.training = training


def observed_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """The gradient each image shares, one per image: tensors of shape ``(B, *parameter.shape)``.

    This is the gradient of ``0.5 · CE`` on a batch of one (eval mode), in the order of
    :func:`ats.attack.objectives.attacked_parameters`, computed for all ``B`` images in one
    ``vmap``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    _check_labels(labels, images.shape[0])
    with eval_mode(model):
        parameters = attacked_parameters(model)
        per_sample = vmap(per_sample_gradient_fn(model), in_dims=(None, 0, 0))(
            parameters, images, labels.to(images.device)
        )
    return [per_sample[name].detach() for name in parameters]


def _check_labels(labels: torch.Tensor, count: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.shape != (count,):
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        dtype = labels.dtype if isinstance(labels, torch.Tensor) else None
        raise ValueError(f"labels must be a LongTensor of shape ({count},), got {shape} ({dtype})")


class _Objective:
    """The per-attack cost and its image gradient, batched over attacks by ``vmap``."""

    def __init__(self, model: nn.Module, config: AttackConfig) -> None:
        parameters = attacked_parameters(model)
        sample_gradient = per_sample_gradient_fn(model)

        def matching(image: torch.Tensor, target: list[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
            return gradient_matching_cost(sample_gradient(parameters, image, label), target, config.cost)

        def total(image: torch.Tensor, target: list[torch.Tensor],
                  label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            matching_cost = matching(image, target, label)
            return matching_cost + config.tv_weight * total_variation(image), matching_cost

        #: (images, targets, labels) -> (image gradients, (total costs, matching costs))
        self.image_gradient = vmap(grad_and_value(total, has_aux=True))
        #: (images, targets, labels) -> matching costs
        self.matching = vmap(matching)


class _Box:
    """The per-channel box [(0 − mean)/std, (1 − mean)/std]: normalised images of pixels in [0, 1]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.lower = ((0 - mean) / std).reshape(1, -1, 1, 1)
        self.upper = ((1 - mean) / std).reshape(1, -1, 1, 1)

    @torch.no_grad()
    def project_(self, images: torch.Tensor) -> None:
        images.copy_(torch.maximum(torch.minimum(images, self.upper), self.lower))


class _LastFinite:
    """Per attack, the last image whose cost was finite and its matching cost.

    A diverging attack returns that image instead of NaNs, and is flagged.
    """

    def __init__(self, initial: torch.Tensor) -> None:
        self.images = initial.clone()
        self.matching = torch.full(initial.shape[:1], float("nan"), dtype=initial.dtype, device=initial.device)
        self.diverged = torch.zeros(initial.shape[:1], dtype=torch.bool, device=initial.device)

    def observe(self, images: torch.Tensor, total: torch.Tensor, matching: torch.Tensor) -> None:
        finite = torch.isfinite(total)
        self.images = torch.where(finite[:, None, None, None], images, self.images)
        self.matching = torch.where(finite, matching, self.matching)
        self.diverged |= ~finite

    def finish(self, images: torch.Tensor, end_matching: torch.Tensor, cost_history: torch.Tensor) -> _Trials:
        """The attacks' results, given their images and matching costs after the last step."""
        diverged = self.diverged | ~torch.isfinite(end_matching)
        return _Trials(
            images=torch.where(diverged[:, None, None, None], self.images, images),
            final_cost=torch.where(diverged, self.matching, end_matching),
            cost_history=cost_history,
            diverged=diverged,
        )


@dataclass(frozen=True)
class _Trials:
    """Results of individual attacks (target × restart), before the best restart is chosen."""

    images: torch.Tensor
    final_cost: torch.Tensor
    cost_history: torch.Tensor
    diverged: torch.Tensor

    @staticmethod
    def concatenate(parts: Sequence["_Trials"]) -> "_Trials":
        return _Trials(
            images=torch.cat([p.images for p in parts]),
            final_cost=torch.cat([p.final_cost for p in parts]),
            cost_history=torch.cat([p.cost_history for p in parts]),
            diverged=torch.cat([p.diverged for p in parts]),
        )


def _first_order_optimizer(images: torch.Tensor, config: AttackConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam([images], lr=config.lr)
    return torch.optim.SGD([images], lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def _set_image_gradient(images: torch.Tensor, image_gradient: torch.Tensor, config: AttackConfig) -> None:
    images.grad = image_gradient.sign() if config.signed else image_gradient


def _attack_jointly(objective: _Objective, initial: torch.Tensor, targets: list[torch.Tensor],
                    labels: torch.Tensor, config: AttackConfig, box: _Box, description: str) -> _Trials:
    """Run ``P`` Adam/SGD attacks as one computation (one optimiser over the stacked images)."""
    images = initial.clone()
    optimizer = _first_order_optimizer(images, config)
    history = torch.empty(images.shape[0], config.iterations, dtype=images.dtype, device=images.device)
    last_finite = _LastFinite(initial)
    for iteration in progress(range(config.iterations), desc=description):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(iteration)
        image_gradient, (total, matching) = objective.image_gradient(images, targets, labels)
        history[:, iteration] = total
        last_finite.observe(images, total, matching)
        _set_image_gradient(images, image_gradient, config)
        optimizer.step()
        if config.boxed:
            box.project_(images)
    return last_finite.finish(images, objective.matching(images, targets, labels), history)


def _attack_lbfgs(objective: _Objective, initial: torch.Tensor, targets: list[torch.Tensor],
                  labels: torch.Tensor, config: AttackConfig, box: _Box, description: str) -> _Trials:
    """Run L-BFGS attacks one at a time (L-BFGS couples all entries of its parameter)."""
    results = []
    for index in progress(range(initial.shape[0]), desc=description):
        target = [t[index:index + 1] for t in targets]
        label = labels[index:index + 1]
        image = initial[index:index + 1].clone()
        optimizer = torch.optim.LBFGS([image], lr=config.lr)
        history = torch.full((1, config.iterations), float("nan"), dtype=image.dtype, device=image.device)
        last_finite = _LastFinite(image)

        def closure() -> torch.Tensor:
            image_gradient, (total, matching) = objective.image_gradient(image, target, label)
            last_finite.observe(image, total, matching)
            _set_image_gradient(image, image_gradient, config)
            return total[0]

        for iteration in range(config.iterations):
            history[0, iteration] = optimizer.step(closure)
            if config.boxed:
                box.project_(image)
            if bool(last_finite.diverged[0]):
                break
        results.append(last_finite.finish(image, objective.matching(image, target, label), history))
    return _Trials.concatenate(results)


def _in_chunks(run: Callable[[slice], _Trials], count: int, max_batch: int | None) -> _Trials:
    """Run attacks ``[0, count)`` in the fewest chunks of at most ``max_batch`` (``None``: all at
    once), each of ⌈count / chunks⌉ but the last; halve the chunk on CUDA OOM.

    Chunks are independent attacks, so the chunk size changes results only by the rounding of
    batched kernels. Evening the chunks out (32 attacks at most 30 at once: 16 + 16, not 30 + 2)
    keeps every computation large.
    """
    chunks = 1 if max_batch is None else -(-count // max(1, max_batch))
    chunk = -(-count // chunks)
    parts: list[_Trials] = []
    start = 0
    while start < count:
        remaining = count - start
        part, chunk = halving_on_cuda_oom(lambda size: run(slice(start, start + size)), min(chunk, remaining),
                                          what=f"{remaining} attacks, {min(chunk, remaining)} at once")
        parts.append(part)
        start += chunk
    return _Trials.concatenate(parts)


def default_max_batch(parameter_count: int, device: torch.device) -> int | None:
    """How many attacks share one computation when the caller does not say (``None``: all).

    On the CPU the double backward materialises every attack's parameter gradient and several
    same-sized intermediates, so a chunk's per-attack gradients are kept near
    :data:`_CPU_ATTACK_GRADIENT_FLOATS` (a few GiB of peak memory in all): ResNet20-4 (4.35 M
    parameters) gets 30 attacks per chunk, ResNet20 (0.28 M) 482. Larger chunks are not slower per
    attack once the stage keeps freed memory (:func:`ats.runtime.memory.retain_freed_host_memory`;
    docs/benchmarks.md). On a GPU, all at once (a CUDA out-of-memory error halves the chunk).
    """
    if device.type != "cpu":
        return None
    return max(1, _CPU_ATTACK_GRADIENT_FLOATS // max(parameter_count, 1))


def _initial_images(config: AttackConfig, generators: Sequence[torch.Generator], image_shape: tuple[int, int, int],
                    dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Starting images ``(B, restarts, C, H, W)``; target ``b``'s come from ``generators[b]`` alone.

    Restarts are drawn one image at a time, so restart ``r`` is the ``r``-th image its generator
    draws, whatever the number of restarts. Drawn on each generator's device and then moved, so a
    CPU generator gives the same start on every device.
    """
    if config.init == "zeros":
        return torch.zeros((len(generators), config.restarts, *image_shape), dtype=dtype, device=device)
    return torch.stack([
        torch.stack([torch.randn(image_shape, generator=g, dtype=dtype, device=g.device)
                     for _ in range(config.restarts)]).to(device)
        for g in generators
    ])


def _check_inputs(parameters: dict[str, torch.Tensor], observed: Sequence[torch.Tensor], labels: torch.Tensor,
                  image_shape: Sequence[int], mean: torch.Tensor, std: torch.Tensor,
                  generators: Sequence[torch.Generator]) -> None:
    if len(image_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) positive ints, got {tuple(image_shape)}")
    count = labels.shape[0] if isinstance(labels, torch.Tensor) and labels.dim() == 1 else -1
    _check_labels(labels, count)
    if len(observed) != len(parameters):
        raise ValueError(f"{len(observed)} observed gradient tensors for {len(parameters)} attacked parameters")
    for (name, parameter), gradient in zip(parameters.items(), observed):
        if tuple(gradient.shape) != (count, *parameter.shape):
            raise ValueError(f"observed gradient of {name!r} has shape {tuple(gradient.shape)}, expected "
                             f"{(count, *parameter.shape)} (one gradient per target)")
        if gradient.dtype != parameter.dtype:
            raise ValueError(f"observed gradient of {name!r} is {gradient.dtype}, the model is {parameter.dtype}")
    if mean.shape != (image_shape[0],) or std.shape != (image_shape[0],):
        raise ValueError(f"mean and std need {image_shape[0]} values (one per channel), got "
                         f"{tuple(mean.shape)} and {tuple(std.shape)}")
    if not bool((std > 0).all()):
        raise ValueError(f"std must be positive, got {std.tolist()}")
    if len(generators) != count:
        raise ValueError(f"{len(generators)} generators for {count} targets")


def reconstruct(
    model: nn.Module,
    observed_gradients: Sequence[torch.Tensor],
    labels: torch.Tensor,
    config: AttackConfig,
    image_shape: tuple[int, int, int],
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator],
    iterations: int | None = None,
    *,
    max_batch: int | None = None,
) -> ReconstructionResult:
    """Invert ``B`` observed gradients at once (one attack per target, ``config.restarts`` each).

    ``observed_gradients``: one tensor per attacked parameter, each ``(B, *parameter.shape)``, e.g.
    from :func:`observed_gradients`. ``labels``: the known (or recovered) labels ``(B,)``.
    ``mean``/``std``: the per-channel normalisation, for the box constraint. ``generator``: either
    one generator per target, which makes each target's result independent of the batch it is in,
    or a single generator that draws every target's start in turn. ``iterations`` overrides the
    config's budget (milestones scale with it). ``max_batch`` bounds how many attacks share one
    computation (default: :func:`default_max_batch`); on CUDA out-of-memory the chunk is halved and
    retried. Neither changes the results beyond the rounding of batched kernels: the attacks are
    independent.

    The model runs in eval mode with the dtype and device of its parameters.
    """
    if iterations is not None:
        config = config.with_iterations(iterations)
    parameters = attacked_parameters(model)
    example = next(iter(parameters.values()))
    dtype, device = example.dtype, example.device
    generators = [generator] * labels.shape[0] if isinstance(generator, torch.Generator) else list(generator)
    mean_tensor = torch.as_tensor(mean, dtype=dtype, device=device).flatten()
    std_tensor = torch.as_tensor(std, dtype=dtype, device=device).flatten()
    _check_inputs(parameters, observed_gradients, labels, image_shape, mean_tensor, std_tensor, generators)

    targets_count, restarts = labels.shape[0], config.restarts
    initial = _initial_images(config, generators, tuple(image_shape), dtype, device).flatten(0, 1)
    attack_targets = [g.to(device).repeat_interleave(restarts, dim=0) for g in observed_gradients]
    attack_labels = labels.to(device).repeat_interleave(restarts)
    box = _Box(mean_tensor, std_tensor)

    with eval_mode(model):
        objective = _Objective(model, config)
        if config.optimizer == "lbfgs":
            trials = _attack_lbfgs(objective, initial, attack_targets, attack_labels, config, box,
                                   f"{config.name} (one at a time)")
        else:
            def run(chunk: slice) -> _Trials:
                return _attack_jointly(objective, initial[chunk], [t[chunk] for t in attack_targets],
                                       attack_labels[chunk], config, box,
                                       f"{config.name} attacks {chunk.start}-{chunk.stop - 1}")
            if max_batch is None:
                max_batch = default_max_batch(sum(p.numel() for p in parameters.values()), device)
            trials = _in_chunks(run, initial.shape[0], max_batch)

    scores = trials.final_cost.reshape(targets_count, restarts)
    best = torch.where(torch.isfinite(scores), scores, torch.inf).argmin(dim=1)
    chosen = torch.arange(targets_count, device=device) * restarts + best
    return ReconstructionResult(
        images=trials.images[chosen].detach(),
        final_cost=trials.final_cost[chosen].detach(),
        cost_history=trials.cost_history[chosen].detach(),
        diverged=trials.diverged[chosen],
    )
