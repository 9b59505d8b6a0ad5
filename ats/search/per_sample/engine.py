"""The two engines that compute every parameter tensor's per-sample statistics for a batch."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ats.search.per_sample.folding import FoldedConvBatchNorm, conv_batch_norm_pairs
from ats.search.per_sample.layers import ROUTES, STATISTICS, choose_route
from ats.search.per_sample.reductions import materialised_stats

GradientMethod = Literal["layerwise", "vmap"]
GRADIENT_METHODS: tuple[str, ...] = ("layerwise", "vmap")
# Per parameter name of the model: (dot product with the reference, squared norm), each (images, points).
GradientStats = dict[str, tuple[Tensor, Tensor]]


class UnregisteredLayerError(ValueError):
    """A layer with parameters whose type has no registered per-sample statistics, or that they refuse."""


def check_registered(model: nn.Module) -> None:
    """Raise :class:`UnregisteredLayerError` naming the first layer the layerwise engine cannot handle.

    Every parameter must belong to exactly one layer of a registered type, as its ``weight`` or
    ``bias``; nothing falls back to another engine silently.
    """
    owners: Counter[int] = Counter(id(parameter) for module in model.modules()
                                   for parameter in module.parameters(recurse=False))
    registered = ", ".join(sorted(layer_type.__name__ for layer_type in STATISTICS))
    for name, module in model.named_modules():
        parameters = dict(module.named_parameters(recurse=False))
        if not parameters:
            continue
        where = f"S_pri: layer {name or '(the model itself)'!r} ({type(module).__name__})"
        registration = STATISTICS.get(type(module))
        if registration is None:
            raise UnregisteredLayerError(
                f"{where} has parameters but no registered per-sample statistics (registered: {registered}); "
                f"register them in ats.search.per_sample.layers, or use method='vmap'")
        refusal = registration.refusal(module)
        if refusal is not None:
            raise UnregisteredLayerError(f"{where}: {refusal} is not supported by its registered statistics; "
                                         f"use method='vmap'")
        odd = [key for key, parameter in parameters.items()
               if key not in ("weight", "bias") or owners[id(parameter)] > 1]
        if odd:
            raise UnregisteredLayerError(f"{where}: parameters {', '.join(odd)} are shared with another layer or "
                                         f"not its weight or bias; use method='vmap'")


def route_table(model: nn.Module, input_shape: Sequence[int]) -> dict[str, str]:
    """The route each layer with parameters takes for inputs of shape ``input_shape`` (C, H, W).

    ``"folded"`` marks a conv and its BatchNorm that run as one conv (:mod:`.folding`); the shapes
    come from a forward pass on the ``meta`` device, which computes shapes only.
    """
    check_registered(model)
    folded = {module for pair in conv_batch_norm_pairs(model) for module in pair}
    names = {module: name for name, module in model.named_modules()}
    routes: dict[str, str] = {}

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        route = choose_route(module, args[0].shape[1:])
        routes[names[module]] = f"{route}, folded" if module in folded and type(module) is nn.Conv2d else route

    layers = [module for module in model.modules() if type(module) in ROUTES]
    handles = [module.register_forward_hook(record) for module in layers]
    shapes_only = {name: torch.empty_like(tensor, device="meta")
                   for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            functional_call(model, shapes_only, (torch.empty((1, *input_shape), device="meta"),))
    finally:
        for handle in handles:
            handle.remove()
    for conv, norm in conv_batch_norm_pairs(model):
        if routes[names[conv]] == "materialise, folded":
            routes[names[norm]] = "folded"
        else:
            routes[names[conv]] = routes[names[conv]].removesuffix(", folded")
    return routes


def _identity(tensor: Tensor) -> Tensor:
    return tensor


def layerwise_gradient_stats(model: nn.Module, inputs: Tensor, labels: Tensor, points: int) -> GradientStats:
    """Per-sample statistics of every parameter tensor from one forward and one input-gradient pass.

    Forward hooks keep each layer's input and hook its output's gradient; the backward pass asks
    autograd for the input gradient only, so the batched weight gradients are never computed. Each
    layer's statistics come from its registered function by its cheapest route; conv–BatchNorm
    pairs run folded (:class:`~.folding.FoldedConvBatchNorm`).
    """
    check_registered(model)
    folds = {conv: FoldedConvBatchNorm(conv, norm) for conv, norm in conv_batch_norm_pairs(model)}
    folded_norms = {fold.norm for fold in folds.values()}
    names = {module: name for name, module in model.named_modules()}
    layers = [module for module in model.modules()
              if any(True for _ in module.parameters(recurse=False)) and module not in folded_norms]
    stats: GradientStats = {}
    calls: Counter[nn.Module] = Counter()

    def prefixed(module: nn.Module, layer_stats: dict[str, tuple[Tensor, Tensor]]) -> GradientStats:
        prefix = f"{names[module]}." if names[module] else ""
        return {prefix + key: value for key, value in layer_stats.items()}

    def on_forward(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        calls[module] += 1
        if calls[module] > 1:
            raise RuntimeError(f"S_pri layerwise: layer {names[module]!r} runs twice in one forward pass, "
                               f"so its per-sample gradients cannot be attributed; use method='vmap'")
        layer_input, version = args[0].detach(), args[0]._version
        route = None if module in folds else choose_route(module, layer_input.shape[1:])

        def on_output_grad(output_grad: Tensor) -> None:
            if layer_input._version != version:
                raise RuntimeError(f"S_pri layerwise: the input of layer {names[module]!r} was modified "
                                   f"in place after the layer ran; use method='vmap'")
            fold = folds.get(module)
            if fold is None:
                stats.update(prefixed(module, STATISTICS[type(module)].statistics(
                    module, layer_input, output_grad, points, route)))
            else:
                conv_stats, norm_stats = fold.statistics(layer_input, output_grad, points)
                stats.update(prefixed(fold.conv, conv_stats) | prefixed(fold.norm, norm_stats))

        output.register_hook(on_output_grad)

    handles = [module.register_forward_hook(on_forward) for module in layers]
    for conv, fold in folds.items():
        conv.forward, fold.norm.forward = fold.forward, _identity
    try:
        inputs = inputs.detach().requires_grad_(True)
        loss = 0.5 * F.cross_entropy(model(inputs), labels, reduction="sum")
        torch.autograd.grad(loss, inputs)
    finally:
        for conv, fold in folds.items():
            del conv.forward, fold.norm.forward
        for handle in handles:
            handle.remove()
    missing = [name for name, _ in model.named_parameters() if name not in stats]
    if missing:
        raise RuntimeError(f"S_pri layerwise: no gradient reached {', '.join(missing[:5])} "
                           f"(unused layers?); use method='vmap'")
    return stats


def vmap_gradient_stats(model: nn.Module, inputs: Tensor, labels: Tensor, points: int) -> GradientStats:
    """The same statistics via ``torch.func.vmap(grad(...))`` over samples, for any module type.

    It materialises every sample's full gradient at once: slower and larger than the layerwise
    engine, but it needs no registration.
    """
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def sample_loss(params: dict[str, Tensor], image: Tensor, label: Tensor) -> Tensor:
        logits = functional_call(model, (params, buffers), (image.unsqueeze(0),))
        return 0.5 * F.cross_entropy(logits, label.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(parameters, inputs, labels)
    return {name: materialised_stats(gradient, points) for name, gradient in per_sample.items()}


def gradient_stats(model: nn.Module, inputs: Tensor, labels: Tensor, points: int,
                   method: GradientMethod = "layerwise") -> GradientStats:
    """Per parameter name, every sample's dot product with its image's reference (the last of each
    ``points`` consecutive samples) and squared norm of the gradient of 0.5·cross-entropy."""
    engine = layerwise_gradient_stats if method == "layerwise" else vmap_gradient_stats
    return engine(model, inputs, labels, points)
