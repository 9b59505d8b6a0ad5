"""Gradient-inversion attacks, many at once.

The original benchmark attacks one image at a time for 4800 Adam steps (docs/original-code.md §9.4,
§10.4; timed in docs/benchmarks.md). The attacks are independent, so here a whole batch of
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

Policy-aware configs (``inversed-aware``) know the augmentation policy: they rebuild the
untransformed image through the differentiable preprocessing of :mod:`ats.transforms.differentiable`
while learning the image's random draw, one attack per discrete hypothesis of that draw, batched
like the rest (``docs/attacks.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

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
from ats.policies import Policy
from ats.runtime.logs import progress
from ats.runtime.memory import halving_on_cuda_oom
from ats.transforms.differentiable import (
    RelaxedDraw,
    centred_crop_offset,
    differentiable_augment,
    draw_hypotheses,
    has_unknown_draw,
    learned_sign_columns,
)
from ats.transforms.pipeline import MIN_CROP_INPUT_SIZE, OUTPUT_SIZE

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

    Policy-aware attacks (:func:`reconstruct` with a policy-aware config and a preprocessing that
    has a random draw): ``images`` are the *untransformed* images x, ``(B, C, S, S)``, and ``draw``
    is the learned draw θ, a :class:`~ats.transforms.differentiable.RelaxedDraw` of ``B`` rows on
    the images' device: ``crop_offsets`` ``(B, 2)`` (top, left, real pixels), ``flips`` ``(B,)``
    (always False: x absorbs the flip), ``subpolicy`` ``(B,)`` (the chosen hypothesis) and
    ``signs`` ``(B, max_ops)`` in [−1, 1]. Otherwise ``draw`` is None.
    """

    images: torch.Tensor
    final_cost: torch.Tensor
    cost_history: torch.Tensor
    diverged: torch.Tensor
    draw: RelaxedDraw | None = None


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
        #: (images, targets, labels) -> (image gradients of the matching cost alone, matching costs)
        self.matching_gradient = vmap(grad_and_value(matching))
        #: images -> (image gradients of the TV, TVs)
        self.total_variation_gradient = vmap(grad_and_value(total_variation))


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
        self.images = _per_attack_where(finite, images, self.images)
        self.matching = torch.where(finite, matching, self.matching)
        self.diverged |= ~finite

    def keep(self, rows: torch.Tensor) -> None:
        """Forget every attack but ``rows`` (pruned hypotheses)."""
        self.images, self.matching, self.diverged = self.images[rows], self.matching[rows], self.diverged[rows]

    def finish(self, images: torch.Tensor, end_matching: torch.Tensor, cost_history: torch.Tensor) -> _Trials:
        """The attacks' results, given their images and matching costs after the last step."""
        diverged = self.diverged | ~torch.isfinite(end_matching)
        return _Trials(
            images=_per_attack_where(diverged, self.images, images),
            final_cost=torch.where(diverged, self.matching, end_matching),
            cost_history=cost_history,
            diverged=diverged,
        )


def _per_attack_where(condition: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Row ``p`` of ``chosen`` where ``condition[p]``, else of ``other`` (any trailing shape)."""
    return torch.where(condition.view(-1, *([1] * (chosen.dim() - 1))), chosen, other)


@dataclass(frozen=True)
class _Trials:
    """Results of individual attacks (target × restart), before the best restart is chosen."""

    images: torch.Tensor
    final_cost: torch.Tensor
    cost_history: torch.Tensor
    diverged: torch.Tensor
    draw: RelaxedDraw | None = None

    @staticmethod
    def concatenate(parts: Sequence[_Trials]) -> _Trials:
        return _Trials(
            images=torch.cat([p.images for p in parts]),
            final_cost=torch.cat([p.final_cost for p in parts]),
            cost_history=torch.cat([p.cost_history for p in parts]),
            diverged=torch.cat([p.diverged for p in parts]),
            draw=None if parts[0].draw is None else RelaxedDraw.concat([p.draw for p in parts]),
        )


def _first_order_optimizer(parameters: list[torch.Tensor] | list[dict], config: AttackConfig) -> torch.optim.Optimizer:
    """Adam or SGD over ``parameters`` (tensors, or parameter groups that may override ``lr``)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def _set_image_gradient(images: torch.Tensor, image_gradient: torch.Tensor, config: AttackConfig) -> None:
    images.grad = image_gradient.sign() if config.signed else image_gradient


def _attack_jointly(objective: _Objective, initial: torch.Tensor, targets: list[torch.Tensor],
                    labels: torch.Tensor, config: AttackConfig, box: _Box, description: str) -> _Trials:
    """Run ``P`` Adam/SGD attacks as one computation (one optimiser over the stacked images)."""
    images = initial.clone()
    optimizer = _first_order_optimizer([images], config)
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


@dataclass(frozen=True)
class _KnownPreprocessing:
    """What a policy-aware attacker knows of the preprocessing: mode, policy, image side, normalisation.

    ``policy`` is the one the mode applies (``()`` in ``"crop"`` mode); ``mean``/``std`` are shaped
    ``(1, C, 1, 1)``.
    """

    mode: str
    policy: Policy
    source_size: int
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def centred_crop(self) -> float:
        return centred_crop_offset(self.source_size)

    def draw(self, theta: torch.Tensor, start: RelaxedDraw) -> RelaxedDraw:
        """The relaxed draw of the learned parameters ``theta`` (P, 2 + max_ops).

        ``theta[:, :2]`` is the crop offset relative to the centre, in units of the half-range
        (−1 … 1 ↦ offsets 0 … side + 8 − 32); ``theta[:, 2:]`` are the relaxed signs. The flips and
        sub-policies are ``start``'s, never learned.
        """
        return RelaxedDraw(self.centred_crop * (1 + theta[:, :2]), start.flips, start.subpolicy, theta[:, 2:])

    def model_inputs(self, images: torch.Tensor, draw: RelaxedDraw) -> torch.Tensor:
        """T_θ of normalised untransformed ``images``, normalised again: what the model sees."""
        pixels = images * self.std + self.mean
        return (differentiable_augment(pixels, self.mode, self.policy, draw) - self.mean) / self.std


def _policy_aware_gradients(objective: _Objective, known: _KnownPreprocessing, images: torch.Tensor,
                            theta: torch.Tensor, start: RelaxedDraw, targets: list[torch.Tensor],
                            labels: torch.Tensor, tv_weight: float) -> tuple[torch.Tensor, ...]:
    """Gradients of ``matching(T_θ(x)) + tv_weight · TV(x)`` in x and θ, with the total and matching costs.

    The matching cost's gradient in the model input comes from the vmapped objective (the same
    double backward as the other attacks); autograd then carries it back through T_θ, which acts on
    each attack's image and draw alone, so every attack still sees only its own cost.
    """
    with torch.enable_grad():
        x, t = images.detach().requires_grad_(), theta.detach().requires_grad_()
        inputs = known.model_inputs(x, known.draw(t, start))
    input_gradient, matching = objective.matching_gradient(inputs.detach(), targets, labels)
    image_gradient, draw_gradient = torch.autograd.grad(inputs, (x, t), input_gradient, allow_unused=True)
    tv_gradient, tv = objective.total_variation_gradient(images)
    if draw_gradient is None:
        draw_gradient = torch.zeros_like(theta)
    return image_gradient + tv_weight * tv_gradient, draw_gradient, matching + tv_weight * tv, matching


def _attack_policy_aware(objective: _Objective, known: _KnownPreprocessing, initial: torch.Tensor,
                         start: RelaxedDraw, targets: list[torch.Tensor], labels: torch.Tensor,
                         config: AttackConfig, box: _Box, hypotheses: int, description: str) -> _Trials:
    """Run ``P`` policy-aware attacks as one computation: x and θ = (crop, signs) learned jointly.

    One optimiser with two parameter groups (x at ``lr``, θ at ``draw_lr``, both decayed at the
    milestones); Adam and SGD stay per entry, so the attacks stay independent. After each step x is
    boxed and θ clamped to [−1, 1] (crop offsets inside the padding, signs within ±1). Only the
    unknown entries of θ move: the crop when it has room, the signs of the signed ops.

    The attacks come in consecutive groups of ``hypotheses`` (one target and restart each). After
    ``config.warmup_iterations`` steps each group keeps its ``config.hypotheses_kept`` attacks of
    lowest matching cost and the batch shrinks to them (their optimiser state goes on unchanged);
    only those are returned.
    """
    images = initial.clone()
    theta = torch.cat([torch.zeros_like(start.crop_offsets), start.signs], dim=1)
    learned = torch.cat([torch.full(start.crop_offsets.shape, known.centred_crop > 0, device=theta.device),
                         learned_sign_columns(known.policy, start.subpolicy, start.signs.shape[1])], dim=1)
    optimizer = _first_order_optimizer([{"params": [images]}, {"params": [theta], "lr": config.draw_lr}], config)
    history = torch.empty(images.shape[0], config.iterations, dtype=images.dtype, device=images.device)
    last_finite, last_finite_theta = _LastFinite(initial), theta.clone()
    for iteration in progress(range(config.iterations), desc=description):
        optimizer.param_groups[0]["lr"] = config.learning_rate(iteration)
        optimizer.param_groups[1]["lr"] = config.draw_learning_rate(iteration)
        image_gradient, draw_gradient, total, matching = _policy_aware_gradients(
            objective, known, images, theta, start, targets, labels, config.tv_weight)
        if iteration == config.warmup_iterations and iteration > 0:
            rows = _surviving_hypotheses(matching, hypotheses, config.hypotheses_kept)
            _keep_rows(optimizer, rows)
            image_gradient, draw_gradient, total, matching = (
                image_gradient[rows], draw_gradient[rows], total[rows], matching[rows])
            start, targets, labels, learned = start[rows], [t[rows] for t in targets], labels[rows], learned[rows]
            history, last_finite_theta = history[rows], last_finite_theta[rows]
            last_finite.keep(rows)
        history[:, iteration] = total
        last_finite.observe(images, total, matching)
        last_finite_theta = _per_attack_where(torch.isfinite(total), theta, last_finite_theta)
        _set_image_gradient(images, image_gradient, config)
        _set_image_gradient(theta, torch.where(learned, draw_gradient, 0), config)
        optimizer.step()
        if config.boxed:
            box.project_(images)
        with torch.no_grad():
            theta.clamp_(-1, 1)
    end_matching = objective.matching(known.model_inputs(images, known.draw(theta, start)), targets, labels)
    trials = last_finite.finish(images, end_matching, history)
    final_theta = _per_attack_where(trials.diverged, last_finite_theta, theta)
    return dataclasses.replace(trials, draw=known.draw(final_theta, start))


def _surviving_hypotheses(matching: torch.Tensor, hypotheses: int, kept: int) -> torch.Tensor:
    """Rows of the ``kept`` lowest matching costs in each consecutive group of ``hypotheses`` rows,
    in their original order; a non-finite cost ranks last, ties keep the earlier hypothesis."""
    costs = torch.where(torch.isfinite(matching), matching, torch.inf).reshape(-1, hypotheses)
    best = costs.argsort(dim=1, stable=True)[:, :kept].sort(dim=1).values
    groups = torch.arange(costs.shape[0], device=matching.device)[:, None]
    return (groups * hypotheses + best).flatten()


@torch.no_grad()
def _keep_rows(optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> None:
    """Shrink every parameter of ``optimizer`` and its per-entry state (Adam's moments, SGD's
    momentum) to ``rows`` in place; scalar state (Adam's step count) is shared and stays."""
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    state[key] = value[rows]
            parameter.set_(parameter[rows])


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
    once), each of ⌈count / chunks⌉ but the last; halve the chunk on CUDA OOM. (Policy-aware
    attacks count groups of hypotheses here, each one target and restart.)

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


def initial_images(config: AttackConfig, generators: Sequence[torch.Generator], image_shape: tuple[int, int, int],
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
    policy: Policy = (),
    augmentation_mode: str = "plain",
    source_size: int | None = None,
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

    ``policy``, ``augmentation_mode`` and ``source_size`` (the side of the untransformed images,
    default the model input's) describe the preprocessing of the shared images; only policy-aware
    configs use them. Such an attack reconstructs the untransformed image x, ``(C, S, S)``, by
    matching the gradient of T_θ(x) (:mod:`ats.transforms.differentiable`) while learning θ, and
    tries every discrete hypothesis of :func:`~ats.transforms.differentiable.draw_hypotheses`
    (sub-policy × directions of the signed ops) as its own attack from each restart's image; each
    target keeps the attack with the lowest final matching cost, as among restarts. With a
    ``hypothesis_warmup``, the hypotheses of each target and restart are pruned to the
    ``hypotheses_kept`` of lowest matching cost after the warm-up, and a chunk of ``max_batch``
    holds at least one target's hypotheses. Where the
    preprocessing has no random draw (``"plain"``, or the empty policy) a policy-aware config runs
    exactly as the same config without the policy (the ``inversed`` code path).
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
    known = _known_preprocessing(config, augmentation_mode, policy, source_size, image_shape, mean_tensor, std_tensor)
    if known is None:
        hypotheses, starts = 1, None
        initial = initial_images(config, generators, tuple(image_shape), dtype, device).flatten(0, 1)
    else:
        draws = draw_hypotheses(known.mode, known.policy, known.source_size, dtype, device)
        hypotheses = len(draws)
        source_shape = (image_shape[0], known.source_size, known.source_size)
        initial = initial_images(config, generators, source_shape, dtype, device)
        initial = initial.repeat_interleave(hypotheses, dim=1).flatten(0, 1)
        starts = draws[torch.arange(initial.shape[0], device=device) % hypotheses]
    attack_targets = [g.to(device).repeat_interleave(restarts * hypotheses, dim=0) for g in observed_gradients]
    attack_labels = labels.to(device).repeat_interleave(restarts * hypotheses)
    box = _Box(mean_tensor, std_tensor)

    with eval_mode(model):
        objective = _Objective(model, config)
        if config.optimizer == "lbfgs":
            trials = _attack_lbfgs(objective, initial, attack_targets, attack_labels, config, box,
                                   f"{config.name} (one at a time)")
        else:
            # Chunks hold whole groups of hypotheses (one target and restart each), which are pruned together.
            def run(groups: slice) -> _Trials:
                chunk = slice(groups.start * hypotheses, groups.stop * hypotheses)
                description = f"{config.name} attacks {chunk.start}-{chunk.stop - 1}"
                if starts is None:
                    return _attack_jointly(objective, initial[chunk], [t[chunk] for t in attack_targets],
                                           attack_labels[chunk], config, box, description)
                return _attack_policy_aware(objective, known, initial[chunk], starts[chunk],
                                            [t[chunk] for t in attack_targets], attack_labels[chunk], config, box,
                                            hypotheses, description)
            if max_batch is None:
                max_batch = default_max_batch(sum(p.numel() for p in parameters.values()), device)
            trials = _in_chunks(run, initial.shape[0] // hypotheses,
                                None if max_batch is None else max(1, max_batch // hypotheses))

    attempts = trials.final_cost.shape[0] // targets_count  # fewer than started where hypotheses were pruned
    scores = trials.final_cost.reshape(targets_count, attempts)
    best = torch.where(torch.isfinite(scores), scores, torch.inf).argmin(dim=1)
    chosen = torch.arange(targets_count, device=device) * attempts + best
    return ReconstructionResult(
        images=trials.images[chosen].detach(),
        final_cost=trials.final_cost[chosen].detach(),
        cost_history=trials.cost_history[chosen].detach(),
        diverged=trials.diverged[chosen],
        draw=None if trials.draw is None else trials.draw[chosen],
    )


def _known_preprocessing(config: AttackConfig, mode: str, policy: Policy, source_size: int | None,
                         image_shape: Sequence[int], mean: torch.Tensor,
                         std: torch.Tensor) -> _KnownPreprocessing | None:
    """The preprocessing a policy-aware ``config`` inverts; None for the other attacks and when the
    preprocessing has no random draw (then there is nothing to learn)."""
    if not config.policy_aware or not has_unknown_draw(mode, policy):
        return None
    side = image_shape[1] if source_size is None else source_size
    if tuple(image_shape[1:]) != (OUTPUT_SIZE, OUTPUT_SIZE):
        raise ValueError(f"{config.name}: the preprocessing outputs {OUTPUT_SIZE}×{OUTPUT_SIZE} images, but "
                         f"image_shape is {tuple(image_shape)}")
    if not isinstance(side, int) or side < MIN_CROP_INPUT_SIZE:
        raise ValueError(f"{config.name}: source_size must be an int >= {MIN_CROP_INPUT_SIZE}, got {side!r}")
    return _KnownPreprocessing(mode=mode, policy=policy if mode == "policy" else (), source_size=side,
                               mean=mean.reshape(1, -1, 1, 1), std=std.reshape(1, -1, 1, 1))
