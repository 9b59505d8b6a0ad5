"""Seeds derived from names, not from call order.

Results must not depend on how work is split into jobs, shards or batches, nor on the device. So no
code draws from global random state: each random choice gets its own generator, seeded by a stable
hash of what it is for, e.g. ``derive_seed(seed, "spri", "3-1-7", image_index)``.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: this module is also used by torch-free code.
    import torch


def derive_seed(*parts: object) -> int:
    """Return a 63-bit seed determined only by ``parts`` (their ``repr``), stable across runs."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def python_rng(*parts: object) -> random.Random:
    """A :class:`random.Random` seeded by :func:`derive_seed` (for torch-free code)."""
    return random.Random(derive_seed(*parts))


def torch_generator(*parts: object, device: str = "cpu") -> torch.Generator:
    """A :class:`torch.Generator` on ``device`` seeded by :func:`derive_seed`."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*parts))
    return generator


def seed_everything(seed: int) -> None:
    """Seed the global generators and ask torch for deterministic kernels.

    Our own code never relies on global state, but third-party code (weight initialisation in
    ``nn.Module`` constructors) does, so every stage calls this once before building anything.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
