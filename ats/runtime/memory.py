"""Memory behaviour of a stage's process: CUDA out-of-memory retries and host-memory reuse.

The scoring and attack stages size their batches from a memory budget, but a GPU shared with other
jobs, or a model larger than the budget assumed, can still run out. Both stages then retry the same
work with half the batch: their samples are independent, so the batch size changes results only
by the rounding of batched kernels, the speed changes, and the log says why.

On the CPU, torch allocates tensors with the C library's ``malloc``, which has no cache of its own
for large blocks: see :func:`retain_freed_host_memory`.
"""

from __future__ import annotations

import ctypes
import logging
import platform
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)

# glibc's mallopt() parameters (malloc.h) and the values set: keep up to 2 GiB of freed memory at
# the heap top, and serve blocks up to 1 GiB from the heap instead of fresh mappings.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_TRIM_THRESHOLD_BYTES, _MMAP_THRESHOLD_BYTES = (1 << 31) - 1, 1 << 30


def retain_freed_host_memory() -> bool:
    """Make freed CPU tensor memory reusable by this process instead of returning it to the kernel.

    By default glibc serves blocks above a threshold (at most 32 MiB) with fresh memory mappings,
    unmaps them when they are freed, and trims the heap top, so the large temporaries of every CPU
    pass come back as new pages that the kernel must fault in and zero, a large share of a CPU
    pass's time (measured in docs/benchmarks.md). A stage's process then keeps its peak memory
    until it exits, which a one-stage job does anyway. Applies to the whole process and only to
    glibc; returns whether it took effect.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    if not applied:
        _log.debug("glibc refused the malloc thresholds; freed memory goes back to the kernel")
    return applied


def halving_on_cuda_oom(compute: Callable[[int], T], size: int, *, what: str, minimum: int = 1) -> tuple[T, int]:
    """``compute(size)``, retried with half the size after each CUDA out-of-memory error.

    Returns the result and the size that worked, which later calls should start from. The error is
    re-raised once ``size`` is down to ``minimum``. The retry runs outside the ``except`` block, so
    the failed attempt's tensors (kept alive by the traceback) are freed before the cache is emptied.
    """
    import torch

    while True:
        try:
            return compute(size), size
        except torch.cuda.OutOfMemoryError:
            if size <= minimum:
                raise
        size = max(minimum, size // 2)
        torch.cuda.empty_cache()
        _log.warning("CUDA out of memory during %s; retrying with %d at once", what, size)
