"""Points of training at which a defence is attacked, parsed without torch.

ATS was evaluated only on fully trained models, but augmentation defences are known to leak early in
training, when the model has not yet learnt to ignore what the policy hides (Balunović et al., ICLR
2022). The attack stage therefore attacks every defence at several *training stages*, named

* ``init``: the freshly initialised model, before any optimiser step;
* ``step-N``: after ``N`` optimiser steps (``N`` ≥ 1);
* ``epoch-N``: after ``N`` full epochs (``N`` ≥ 1);
* ``final``: the fully trained model, the paper's protocol.

The workflow validates stage names when it parses the config, so this module is free of torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

INIT = "init"
FINAL = "final"
STAGE_PATTERN = r"init|final|step-[1-9][0-9]*|epoch-[1-9][0-9]*"
"""Every valid stage name (also the Snakemake wildcard constraint of ``{stage}``)."""

_COUNTED = re.compile(r"(?P<unit>step|epoch)-(?P<count>[1-9][0-9]*)")


class StageError(ValueError):
    """A stage name that does not parse, or that does not fit the training run."""


@dataclass(frozen=True)
class TrainingStage:
    """A parsed stage name; ``count`` is the ``N`` of ``step-N``/``epoch-N`` and 0 otherwise."""

    name: str
    unit: Literal["init", "step", "epoch", "final"]
    count: int = 0

    def optimizer_steps(self, *, epochs: int, steps_per_epoch: int) -> int:
        """How many optimiser steps the model of this stage has taken in a run of ``epochs`` epochs."""
        if self.unit == "init":
            return 0
        if self.unit == "step":
            return self.count
        if self.unit == "epoch":
            return self.count * steps_per_epoch
        return epochs * steps_per_epoch


def parse_stage(name: str) -> TrainingStage:
    """Parse ``init``, ``final``, ``step-N`` or ``epoch-N``; raise :class:`StageError` otherwise."""
    if name in (INIT, FINAL):
        return TrainingStage(name, name)  # type: ignore[arg-type]
    match = _COUNTED.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise StageError(f"training stage {name!r} is not one of init, final, step-N or epoch-N (N >= 1)")
    return TrainingStage(name, match["unit"], int(match["count"]))  # type: ignore[arg-type]


def training_images(train_size: int, fraction: float) -> int:
    """Images of the seeded ``fraction`` subset of a ``train_size``-image training split (rounded)."""
    return round(fraction * train_size)


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Optimiser steps of one epoch: one per batch, the last one possibly partial."""
    return math.ceil(train_images / batch_size)


def check_stages(names: Sequence[str], *, epochs: int, train_images: int, batch_size: int) -> list[TrainingStage]:
    """Parse ``names`` and check that each is a distinct point strictly inside the run, or its end.

    A ``step-N`` or ``epoch-N`` at or past the end of training is refused rather than silently
    attacking the final model under another name; two names for the same point are refused too.
    Returns the stages in training order.
    """
    stages = [parse_stage(name) for name in names]
    per_epoch = steps_per_epoch(train_images, batch_size)
    total = epochs * per_epoch
    by_step: dict[int, str] = {}
    for stage in stages:
        step = stage.optimizer_steps(epochs=epochs, steps_per_epoch=per_epoch)
        if stage.unit in ("step", "epoch") and step >= total:
            raise StageError(
                f"training stage {stage.name!r} is at optimizer step {step}, but training ends after {total} steps "
                f"({epochs} epochs of {per_epoch} batches of at most {batch_size} of {train_images} images); "
                f"use 'final' for the trained model or a smaller {stage.unit} count")
        if step in by_step:
            raise StageError(f"training stages {by_step[step]!r} and {stage.name!r} are the same point of "
                             f"training (optimizer step {step})")
        by_step[step] = stage.name
    return sorted(stages, key=lambda s: s.optimizer_steps(epochs=epochs, steps_per_epoch=per_epoch))
