"""Shrinking device work after a CUDA out-of-memory error instead of failing the job.

The scoring and attack stages size their batches from a memory budget, but a GPU shared with other
jobs, or a model larger than the budget assumed, can still run out. Both stages then retry the same
work with half the batch: their samples are independent, so the batch size changes results only
by the rounding of batched kernels, the speed changes, and the log says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_log = logging.getLogger(__name__)


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
