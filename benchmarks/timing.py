"""Timing: alternating rounds of the library and its reference, wall and CPU seconds, torch threads."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Measurement:
    """Per-round wall and process CPU seconds of each timed function, and its last result.

    On a machine shared with other jobs the wall time of a round can jump several-fold. The CPU
    time of this process does not count time spent waiting for a core, so with one thread it
    stays steady and shows the work ratio; with more threads it also counts OpenMP threads
    spinning for a descheduled partner. It does not count DataLoader worker processes.
    """

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def seconds(self, name: str) -> float:
        """Median wall seconds of ``name``."""
        return float(statistics.median(self.wall[name]))

    def cpu_seconds(self, name: str) -> float:
        """Median process CPU seconds of ``name``."""
        return float(statistics.median(self.cpu[name]))

    def as_json(self) -> dict[str, dict[str, list[float]]]:
        return {"seconds": self.wall, "cpu_seconds": self.cpu}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(functions: dict[str, Callable[[], Any]], device: torch.device, rounds: int,
                     warmups: dict[str, Callable[[], Any]] | None = None, warmup_calls: int = 1) -> Measurement:
    """Warm every function up, then time ``rounds`` rounds that call each function in turn.

    The warm-up (``warmup_calls`` calls of ``warmups[name]``, a cheaper version of the same work
    with the same tensor shapes, or else of the function itself) pays for one-off costs: allocator
    growth, oneDNN primitive creation, CUDA kernel loading and cuDNN autotuning. Alternating
    (rather than timing all rounds of one function, then the next) spreads load from other
    processes over both sides of a ratio.
    """
    for _ in range(warmup_calls):
        for name, function in functions.items():
            (warmups or {}).get(name, function)()
    measurement = Measurement({name: [] for name in functions}, {name: [] for name in functions})
    for _ in range(rounds):
        for name, function in functions.items():
            _synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            measurement.results[name] = function()
            _synchronize(device)
            measurement.wall[name].append(time.perf_counter() - wall)
            measurement.cpu[name].append(time.process_time() - cpu)
    return measurement


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (``None``: unchanged), then restore the previous setting.

    ``--quick`` uses one thread: on a machine shared with other jobs, OpenMP threads that
    spin-wait for a busy core can make a two-thread run many times slower, and the smoke test must
    stay fast; its timings mean nothing anyway.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
