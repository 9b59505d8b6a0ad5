"""Record the discrete choices of a forward pass in one precision and replay them in another.

A float32 and a float64 pass of the same ReLU network differ in two ways. Every value rounds
differently, a small and smooth difference. And a unit whose input lies within rounding of a tie
(a ReLU input next to 0, two nearly equal inputs of a max-pool window) can take the other branch in
one of them: rare, but each such flip changes the gradient by a whole unit's contribution. Every
float32 evaluation has flips, whatever its method; the original's batch-1 loop included. Replaying
the float64 pass's choices in the float32 pass removes them, so what is left is the method's own
float32 arithmetic (docs/benchmarks.md, "float32 error").

The choices are recorded per call of an ``nn.ReLU`` or ``nn.MaxPool2d`` module, in call order
(calls on the ``meta`` device, which only compute shapes, are passed through), so
the replayed pass must run the same modules on the same batch shapes (the same chunk size). The
shipped architectures take every choice in such modules; a model that applies ``torch.relu`` or a
functional max-pool itself is not covered, and its flips stay in the replayed error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch.nn.functional as F
from torch import Tensor, nn

_ORIGINAL_FORWARD = {nn.ReLU: nn.ReLU.forward, nn.MaxPool2d: nn.MaxPool2d.forward}


def _pool_with_indices(pool: nn.MaxPool2d, layer_input: Tensor) -> tuple[Tensor, Tensor]:
    return F.max_pool2d(layer_input, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                        ceil_mode=pool.ceil_mode, return_indices=True)


def _off_meta(layer_type: type[nn.Module], forward: Callable[[nn.Module, Tensor], Tensor]
              ) -> Callable[[nn.Module, Tensor], Tensor]:
    """``forward`` for real tensors; the original forward for ``meta`` ones, which only compute shapes."""
    def patched(module: nn.Module, layer_input: Tensor) -> Tensor:
        if layer_input.is_meta:
            return _ORIGINAL_FORWARD[layer_type](module, layer_input)
        return forward(module, layer_input)

    return patched


@contextmanager
def _patched(relu_forward: Callable[[nn.ReLU, Tensor], Tensor],
             pool_forward: Callable[[nn.MaxPool2d, Tensor], Tensor]) -> Iterator[None]:
    nn.ReLU.forward = _off_meta(nn.ReLU, relu_forward)
    nn.MaxPool2d.forward = _off_meta(nn.MaxPool2d, pool_forward)
    try:
        yield
    finally:
        nn.ReLU.forward, nn.MaxPool2d.forward = _ORIGINAL_FORWARD[nn.ReLU], _ORIGINAL_FORWARD[nn.MaxPool2d]


@contextmanager
def recorded_decisions() -> Iterator[list[Tensor]]:
    """Inside the block, every ReLU call appends its mask (input > 0) and every max-pool call the
    flat index each window picked; the forward passes compute what they would anyway."""
    decisions: list[Tensor] = []

    def relu(module: nn.ReLU, layer_input: Tensor) -> Tensor:
        decisions.append(layer_input.detach() > 0)
        return _ORIGINAL_FORWARD[nn.ReLU](module, layer_input)

    def pool(module: nn.MaxPool2d, layer_input: Tensor) -> Tensor:
        output, indices = _pool_with_indices(module, layer_input)
        decisions.append(indices)
        return output

    with _patched(relu, pool):
        yield decisions


@contextmanager
def replayed_decisions(decisions: Sequence[Tensor]) -> Iterator[None]:
    """Inside the block, ReLU and max-pool calls take the recorded choices, in order: a ReLU passes
    the units of its mask, whatever their sign here, and a max-pool reads the recorded positions.
    Gradients flow along the replayed choices. Raises if the calls do not match the record."""
    remaining = list(reversed(decisions))

    def next_choice(module: nn.Module, shape: tuple[int, ...]) -> Tensor:
        if not remaining:
            raise RuntimeError(f"replayed_decisions: {type(module).__name__} ran after the recorded choices "
                               f"were used up ({len(decisions)} calls recorded)")
        choice = remaining.pop()
        if tuple(choice.shape) != shape:
            raise RuntimeError(f"replayed_decisions: call {len(decisions) - len(remaining)} "
                               f"({type(module).__name__}) has shape {shape}, the record {tuple(choice.shape)}")
        return choice

    def relu(module: nn.ReLU, layer_input: Tensor) -> Tensor:
        mask = next_choice(module, tuple(layer_input.shape))
        return layer_input * mask.to(layer_input.dtype)

    def pool(module: nn.MaxPool2d, layer_input: Tensor) -> Tensor:
        output_shape = _pool_with_indices(module, layer_input.detach().to("meta"))[1].shape
        indices = next_choice(module, tuple(output_shape))
        return layer_input.flatten(2).gather(2, indices.flatten(2)).view(output_shape)

    with _patched(relu, pool):
        yield
    if remaining:
        raise RuntimeError(f"replayed_decisions: {len(remaining)} of {len(decisions)} recorded calls were not replayed")


def differing_decisions(first: Sequence[Tensor], second: Sequence[Tensor]) -> int:
    """How many single choices (ReLU units, max-pool windows) two records of the same passes disagree on."""
    if [tuple(choice.shape) for choice in first] != [tuple(choice.shape) for choice in second]:
        raise ValueError("differing_decisions: the records come from different passes (calls or shapes differ)")
    return sum(int((a != b).sum()) for a, b in zip(first, second))


def decision_count(decisions: Sequence[Tensor]) -> int:
    """The number of single choices in a record."""
    return sum(choice.numel() for choice in decisions)


def per_sample_decisions(decisions: Sequence[Tensor], samples: int) -> list[list[Tensor]]:
    """A record of batched passes over ``samples`` samples, split into the record a batch-1 pass of
    each sample would make (its row of every call), in sample order.

    The passes are read off the record: every pass but the last holds as many samples as the
    first call, and every pass makes the same number of calls.
    """
    if not decisions:
        raise ValueError("per_sample_decisions: the record is empty")
    first_pass = decisions[0].shape[0]
    passes = [first_pass] * (samples // first_pass) + ([samples % first_pass] if samples % first_pass else [])
    calls, remainder = divmod(len(decisions), len(passes))
    sizes = [choice.shape[0] for choice in decisions]
    if remainder or sizes != [size for size in passes for _ in range(calls)]:
        raise ValueError(f"per_sample_decisions: {len(decisions)} calls of batch sizes {sorted(set(sizes))} "
                         f"are not passes of {passes} samples making the same calls")
    rows: list[list[Tensor]] = []
    for index, size in enumerate(passes):
        calls_of_pass = decisions[index * calls:(index + 1) * calls]
        rows += [[choice[row:row + 1] for choice in calls_of_pass] for row in range(size)]
    return rows
