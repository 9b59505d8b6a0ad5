"""Resumable, deterministic training of one model: the stage behind every trained model of ATS.

The same stage trains the tiny-data *search model* (defence ``crop`` on a seeded 10 % subset) and
the fully trained model of every defence. It follows the original recipe (:mod:`ats.training.recipe`)
but is built for long jobs on shared machines:

* **Augmentation on the device.** The whole ``uint8`` training subset is moved to the device once;
  every batch is cropped, flipped and transformed there by :class:`ats.transforms.pipeline.Preprocessor`
  from a random *draw* whose generator is seeded by ``(seed, "augment", epoch, batch)``. There are
  no DataLoader workers and no PIL round trips, and the draws do not depend on worker scheduling.
* **Resumable.** After every epoch the model, optimizer, scheduler and history are saved atomically
  to ``state_path``. All randomness after initialisation is derived from ``(seed, epoch, batch)``,
  so a rerun that resumes from the state continues exactly as the killed run would have, bitwise
  on the CPU.
* **Fails loudly.** A non-finite training loss stops the job with the epoch, batch and defence,
  instead of the original's silent early stop that saved a useless model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ats.case.architectures import ModelChoice, model_name, model_settings
from ats.case.datasets import load_dataset
from ats.case.models import build_model, load_model
from ats.case.normalisation import normalisation_constants
from ats.defence.gradient import GradientDefence
from ats.defence.names import DefenceSpec, parse_defence
from ats.policies import Policy, parse_policy
from ats.runtime.atomic import write_json, write_tsv
from ats.runtime.checkpoints import load_checkpoint, save_checkpoint
from ats.runtime.device import resolve_device
from ats.runtime.fingerprint import fingerprint as fingerprint_of
from ats.runtime.hdf5 import CacheError
from ats.runtime.logs import progress
from ats.runtime.memory import retain_freed_host_memory
from ats.runtime.provenance import write_with_provenance
from ats.runtime.seeding import seed_everything, torch_generator
from ats.settings import TrainingSettings
from ats.training.recipe import build_optimizer, build_scheduler, classification_loss
from ats.training.stages import StageError, check_stages, parse_stage, steps_per_epoch, training_images
from ats.transforms.pipeline import Preprocessor, sample_draw

logger = logging.getLogger(__name__)

HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
)
EVAL_BATCH_SIZE = 500
"""Test images per forward pass; evaluation has no gradients, so this only trades memory for speed."""


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def training_subset(num_train: int, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded, class-agnostic random ``fraction`` of the training split.

    Class-agnostic like HEAD's ``--tiny_data`` loaders (a plain random subset, not a per-class
    quota), so class proportions follow the split's. ``fraction = 1`` gives every index.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    keep = training_images(num_train, fraction)
    if keep < 1:
        raise ValueError(f"train_fraction {fraction} of {num_train} training images keeps no image")
    return torch.randperm(num_train, generator=torch_generator(seed, "subset"))[:keep].sort().values


@dataclass(frozen=True)
class _Acceleration:
    """CUDA-only throughput options; all are off on the CPU, where they only cost time."""

    channels_last: bool
    bf16_autocast: bool
    compile: bool

    @classmethod
    def for_device(cls, device: torch.device, amp: bool, compile: bool) -> _Acceleration:
        on_cuda = device.type == "cuda"
        if (amp or compile) and not on_cuda:
            logger.warning("amp/compile requested on %s: ignored, they only help on CUDA", device)
        return cls(channels_last=on_cuda, bf16_autocast=amp and on_cuda, compile=compile and on_cuda)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        if self.bf16_autocast:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs


class _Run:
    """One training run: data on the device, model, optimizer, scheduler and history.

    Kept as an object so that the per-epoch steps share the device tensors without long argument
    lists; :func:`train_stage` owns its life cycle (fresh start or resume, then the epochs).
    """

    def __init__(
        self,
        *,
        arch: ModelChoice,
        num_classes: int,
        channels: int,
        defence: DefenceSpec,
        train_images: torch.Tensor,
        train_labels: torch.Tensor,
        test_images: torch.Tensor,
        test_labels: torch.Tensor,
        preprocess: Preprocessor,
        epochs: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        acceleration: _Acceleration,
    ) -> None:
        self.defence = defence
        self.policy: Policy = parse_policy(defence.policy) if defence.policy else ()
        self.gradient_defence = GradientDefence.from_spec(defence.kind, defence.strength)
        self.train_images, self.train_labels = train_images, train_labels
        self.test_images, self.test_labels = test_images, test_labels
        self.preprocess = preprocess
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.device, self.acceleration = device, acceleration
        self.model_spec = (arch, num_classes, channels)
        self.reset()

    def reset(self) -> None:
        """(Re)create model, optimizer and scheduler exactly as at the start of a fresh run."""
        seed_everything(self.seed)
        model = build_model(*self.model_spec)
        memory_format = torch.channels_last if self.acceleration.channels_last else torch.preserve_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(self.model) if self.acceleration.compile else self.model
        )
        self.optimizer = build_optimizer(self.model)
        self.scheduler = build_scheduler(self.optimizer, self.epochs)
        self.history: list[dict[str, float]] = []

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def state(self) -> dict[str, Any]:
        """What :meth:`restore` needs, besides the model weights, to continue bitwise identically."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": list(self.history),
        }

    def restore(self, payload: Mapping[str, Any]) -> None:
        """Load a state saved by :func:`_save_state`; raises on any inconsistency."""
        history = list(payload["history"])
        if not 0 < len(history) <= self.epochs:
            raise ValueError(f"state holds {len(history)} epochs of a {self.epochs}-epoch run")
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scheduler.last_epoch != len(history):
            raise ValueError(f"scheduler at epoch {self.scheduler.last_epoch}, history at {len(history)}")
        self.history = history

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.train_labels), self.batch_size)

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> tuple[float, float]:
        """One pass over the training subset; returns mean loss and accuracy over its images.

        ``max_steps`` ends the pass after that many batches (a snapshot inside an epoch); the
        scheduler is then not stepped, and the returned means cover the images seen.
        """
        self.model.train()
        num_images = len(self.train_labels)
        order = torch.randperm(num_images, generator=torch_generator(self.seed, "order", epoch)).to(self.device)
        mode = self.defence.augmentation_mode
        image_size = self.train_images.shape[-1]
        batch_loss_sums: list[torch.Tensor] = []
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for batch, start in enumerate(range(0, num_images, self.batch_size)):
            if max_steps is not None and batch >= max_steps:
                break
            indices = order[start : start + self.batch_size]
            draw = None if mode == "plain" else sample_draw(
                self.policy, len(indices), torch_generator(self.seed, "augment", epoch, batch), image_size=image_size
            )
            inputs = self.acceleration.prepare_inputs(
                self.preprocess(self.train_images[indices], mode, self.policy, draw)
            )
            labels = self.train_labels[indices]
            with self.acceleration.autocast(self.device):
                logits = self.forward(inputs)
            loss = classification_loss(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.gradient_defence is not None:
                self._defend_gradients(epoch, batch)
            self.optimizer.step()
            # Kept on the device: one host sync per epoch instead of one per batch.
            batch_loss_sums.append(loss.detach() * len(indices))
            correct += (logits.argmax(dim=1) == labels).sum()
            seen += len(indices)
        loss_sums = torch.stack(batch_loss_sums)
        self._fail_if_diverged(epoch, loss_sums)
        if seen < num_images:
            return loss_sums.sum().item() / seen, correct.item() / seen
        self.scheduler.step()
        return loss_sums.sum().item() / num_images, correct.item() / num_images

    def _defend_gradients(self, epoch: int, batch: int) -> None:
        """Replace each parameter gradient by its defended version (HEAD: before the optimizer step).

        The noise generator lives on the training device: drawing millions of noise values per step
        on the CPU and copying them over would dominate a GPU step.
        """
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        generator = torch_generator(self.seed, "defence", epoch, batch, device=str(self.device))
        defended = self.gradient_defence.apply([p.grad for p in parameters], generator)
        for parameter, gradient in zip(parameters, defended):
            parameter.grad = gradient

    def _fail_if_diverged(self, epoch: int, batch_loss_sums: torch.Tensor) -> None:
        finite = torch.isfinite(batch_loss_sums)
        if bool(finite.all()):
            return
        batch = int((~finite).nonzero()[0])
        raise TrainingDivergedError(
            f"training diverged: the loss became {batch_loss_sums[batch].item()} at epoch {epoch}, "
            f"batch {batch} (defence {self.defence.name!r}); check the input data and the defence "
            f"strength, or try another seed or fewer epochs at the initial learning rate"
        )

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean loss and accuracy on the whole test split, without augmentation, in eval mode."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        num_images = len(self.test_labels)
        for start in range(0, num_images, EVAL_BATCH_SIZE):
            images = self.test_images[start : start + EVAL_BATCH_SIZE]
            labels = self.test_labels[start : start + EVAL_BATCH_SIZE]
            inputs = self.acceleration.prepare_inputs(self.preprocess(images, "plain", ()))
            with self.acceleration.autocast(self.device):
                logits = self.forward(inputs)
            loss_sum += classification_loss(logits, labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
        return loss_sum.item() / num_images, correct.item() / num_images


def _images_on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """At-rest ``uint8`` N×H×W×C images as the ``uint8`` N×C×H×W device tensor the pipeline expects."""
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous()


def _save_state(path: Path, run: _Run, run_fingerprint: str) -> None:
    save_checkpoint(path, run.model.state_dict(), fingerprint=run_fingerprint,
                    meta={"epochs_done": run.epochs_done}, extra=run.state())


def _resume(path: Path, run: _Run, run_fingerprint: str) -> None:
    """Continue from the state at ``path`` when it belongs to this run; otherwise start fresh.

    A state from another configuration, or a corrupt one, only costs the time already spent, so it
    is reported and ignored rather than failing the job.
    """
    if not path.exists():
        logger.info("no training state at %s: starting from scratch", path)
        return
    try:
        run.restore(load_checkpoint(path, expected_fingerprint=run_fingerprint))
    except (RuntimeError, KeyError, TypeError, ValueError) as error:  # CacheError is a RuntimeError
        logger.warning("ignoring training state %s (%s): starting from scratch", path, error)
        run.reset()
        return
    logger.info("resuming from epoch %d of %d (state %s)", run.epochs_done, run.epochs, path)


@dataclass(frozen=True)
class _Prepared:
    """A run set up from the stage arguments, before its first epoch."""

    run: _Run
    dataset: str
    num_train_images: int
    run_fingerprint: str


def _prepare_run(
    *,
    dataset_h5: str | os.PathLike,
    arch: ModelChoice,
    defence: str,
    settings: TrainingSettings,
    seed: int,
    device: str,
    normalisation: str,
    fingerprint: str,
) -> _Prepared:
    """Load the data onto the device and build the run as at its first step.

    Training and snapshots share this, so a snapshot replays exactly the run that training does.
    """
    test_images = settings.test_images
    defence_spec = parse_defence(defence)
    torch_device = resolve_device(device)
    retain_freed_host_memory()
    acceleration = _Acceleration.for_device(torch_device, settings.amp, settings.compile)
    data = load_dataset(dataset_h5)
    if test_images is not None and test_images > len(data.test_labels):
        raise ValueError(f"training.test_images: {test_images} is more than the {len(data.test_labels)} test "
                         f"images of {dataset_h5}")
    mean, std = normalisation_constants(data.spec.name, normalisation)
    subset = training_subset(len(data.train_labels), settings.train_fraction, seed).numpy()
    run = _Run(
        arch=arch,
        num_classes=data.spec.num_classes,
        channels=data.spec.channels,
        defence=defence_spec,
        train_images=_images_on_device(data.train_images[subset], torch_device),
        train_labels=torch.from_numpy(data.train_labels[subset]).to(torch_device),
        test_images=_images_on_device(data.test_images[:test_images], torch_device),
        test_labels=torch.from_numpy(data.test_labels[:test_images]).to(torch_device),
        preprocess=Preprocessor(data.spec.channels, mean, std, torch_device),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=seed,
        device=torch_device,
        acceleration=acceleration,
    )
    run_fingerprint = fingerprint_of({
        "config": fingerprint, "dataset": data.spec.name, **model_settings(arch), "defence": defence,
        "epochs": settings.epochs, "batch_size": settings.batch_size,
        "train_fraction": float(settings.train_fraction), "seed": seed, "normalisation": normalisation,
        "eval_every": settings.eval_every, "test_images": test_images,
        "bf16_autocast": acceleration.bf16_autocast,
        "compile": acceleration.compile,
    })
    logger.info("training %s on %d images of %s, defence %r, %d epochs, batch %d, device %s",
                model_name(arch), len(subset), data.spec.name, defence, settings.epochs, settings.batch_size,
                torch_device)
    return _Prepared(run, data.spec.name, len(subset), run_fingerprint)


def train_stage(
    *,
    dataset_h5: str | os.PathLike,
    arch: ModelChoice,
    defence: str,
    out_checkpoint: str | os.PathLike,
    out_history_tsv: str | os.PathLike,
    out_metrics_json: str | os.PathLike,
    state_path: str | os.PathLike,
    settings: TrainingSettings,
    seed: int,
    device: str,
    normalisation: str,
    fingerprint: str,
    stop_after_epochs: int | None = None,
) -> dict[str, Any] | None:
    """Train ``arch`` under ``defence`` with the recipe ``settings`` and write checkpoint, history TSV and metrics JSON.

    ``fingerprint`` (:func:`ats.settings.train_fingerprint`, or
    :func:`~ats.settings.pretrain_fingerprint` for the search model) is stored in the outputs for
    downstream readers. The test split is evaluated every ``settings.eval_every`` epochs (epochs 0,
    10, … as in the original) and after the last one, on its first ``settings.test_images`` images
    (``None``: all of them; demos and tests use fewer because evaluation dominates tiny runs).
    ``settings.amp`` (bf16 autocast) and ``settings.compile`` (``torch.compile``) only take effect
    on CUDA and are off by default to keep the original's fp32 numerics.

    ``state_path`` holds the resumable state between epochs; it is not a workflow output (Snakemake
    would delete it with a failed job) and is removed once the outputs exist. ``stop_after_epochs``
    ends this call after that many epochs, leaving only the state, as a killed job would (tests
    use it; it also splits a long training over wall-clock-limited jobs). Returns the metrics, or
    ``None`` when stopped early.
    """
    prepared = _prepare_run(dataset_h5=dataset_h5, arch=arch, defence=defence, settings=settings, seed=seed,
                            device=device, normalisation=normalisation, fingerprint=fingerprint)
    run, run_fingerprint = prepared.run, prepared.run_fingerprint
    epochs, eval_every = settings.epochs, settings.eval_every
    state_file = Path(state_path)
    _resume(state_file, run, run_fingerprint)

    for epochs_this_call, epoch in enumerate(progress(range(run.epochs_done, epochs), desc=f"train {defence}",
                                                      total=epochs - run.epochs_done)):
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            logger.info("stopping after %d epochs as requested; state kept at %s", epochs_this_call, state_file)
            return None
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = run.train_epoch(epoch)
        test_loss, test_accuracy = math.nan, math.nan
        if epoch % eval_every == 0 or epoch == epochs - 1:
            test_loss, test_accuracy = run.evaluate()
        seconds = time.perf_counter() - started
        run.history.append({
            "epoch": epoch, "lr": lr, "train_loss": train_loss, "train_accuracy": train_accuracy,
            "test_loss": test_loss, "test_accuracy": test_accuracy, "seconds": seconds,
        })
        _save_state(state_file, run, run_fingerprint)
        tested = "" if math.isnan(test_loss) else f", test loss {test_loss:.4f} acc {test_accuracy:.4f}"
        logger.info("epoch %d (last %d): lr %.4g, train loss %.4f acc %.4f%s, %.1f s",
                    epoch, epochs - 1, lr, train_loss, train_accuracy, tested, seconds)

    metrics = _write_outputs(run, prepared.dataset, out_checkpoint, out_history_tsv, out_metrics_json,
                             fingerprint=fingerprint, train_fraction=settings.train_fraction,
                             num_train_images=prepared.num_train_images)
    state_file.unlink(missing_ok=True)
    return metrics


def snapshot_stage(
    *,
    dataset_h5: str | os.PathLike,
    arch: ModelChoice,
    defence: str,
    stage: str,
    out_checkpoint: str | os.PathLike,
    settings: TrainingSettings,
    seed: int,
    device: str,
    normalisation: str,
    fingerprint: str,
) -> int:
    """Write the model of training stage ``stage`` (``init``, ``step-N``, ``epoch-N``) of a training run.

    The run is the one :func:`train_stage` performs with the same arguments, replayed from its
    start up to the stage: the same initial weights, data order, draws and learning-rate schedule
    (the schedule of the whole ``epochs``-epoch run), so on the CPU the snapshot is bitwise the model
    that training passes through. Replaying keeps snapshots separate jobs: adding a stage to a
    finished evaluation costs the replayed steps, not a new training. ``fingerprint`` is the
    snapshot's own (:func:`ats.settings.model_fingerprint`); it is stored in the checkpoint with the
    optimiser step count. Returns that step count.
    """
    target = parse_stage(stage)
    if target.unit == "final":
        raise StageError("the 'final' stage is the trained model itself; train_stage writes it")
    prepared = _prepare_run(dataset_h5=dataset_h5, arch=arch, defence=defence, settings=settings, seed=seed,
                            device=device, normalisation=normalisation, fingerprint=fingerprint)
    run, epochs = prepared.run, settings.epochs
    check_stages([stage], epochs=epochs, train_images=prepared.num_train_images, batch_size=settings.batch_size)
    steps = target.optimizer_steps(epochs=epochs, steps_per_epoch=run.steps_per_epoch)
    done = 0
    for epoch in progress(range(epochs), desc=f"replay {defence} to {stage}", total=-(-steps // run.steps_per_epoch)):
        if done >= steps:
            break
        batches = min(run.steps_per_epoch, steps - done)
        train_loss, train_accuracy = run.train_epoch(epoch, max_steps=batches)
        done += batches
        logger.info("epoch %d: %d steps (total %d of %d), train loss %.4f acc %.4f",
                    epoch, batches, done, steps, train_loss, train_accuracy)
    save_checkpoint(out_checkpoint, run.model.state_dict(), fingerprint=fingerprint, meta={
        "dataset": prepared.dataset, "arch": model_name(arch), "defence": defence, "stage": stage,
        "optimizer_steps": steps,
        "num_classes": run.model_spec[1], "channels": run.model_spec[2]})
    logger.info("wrote the %s model of defence %s (%d optimizer steps) to %s", stage, defence, steps, out_checkpoint)
    return steps


def _write_outputs(
    run: _Run,
    dataset: str,
    out_checkpoint: str | os.PathLike,
    out_history_tsv: str | os.PathLike,
    out_metrics_json: str | os.PathLike,
    *,
    fingerprint: str,
    train_fraction: float,
    num_train_images: int,
) -> dict[str, Any]:
    """Write the three outputs of a finished run; the metrics JSON goes last."""
    arch, num_classes, channels = run.model_spec
    last = run.history[-1]
    metrics = {
        "dataset": dataset,
        "arch": model_name(arch),
        "defence": run.defence.name,
        "epochs": run.epochs,
        "seed": run.seed,
        "train_fraction": train_fraction,
        "train_images": num_train_images,
        "test_accuracy": last["test_accuracy"],
        "test_loss": last["test_loss"],
        "train_accuracy": last["train_accuracy"],
        "train_loss": last["train_loss"],
        "train_seconds": sum(row["seconds"] for row in run.history),
        "optimizer_steps": run.epochs * run.steps_per_epoch,
    }
    meta = {key: metrics[key] for key in ("dataset", "arch", "defence", "epochs", "seed", "train_fraction",
                                          "test_accuracy", "optimizer_steps")}
    save_checkpoint(out_checkpoint, run.model.state_dict(), fingerprint=fingerprint,
                    meta={**meta, "num_classes": num_classes, "channels": channels})
    history_rows = [[row[c] for c in HISTORY_COLUMNS] for row in run.history]
    write_with_provenance(out_history_tsv, lambda path: write_tsv(path, HISTORY_COLUMNS, history_rows),
                          fingerprint=fingerprint)
    write_with_provenance(out_metrics_json, lambda path: write_json(path, metrics), fingerprint=fingerprint)
    logger.info("final test accuracy %.4f (loss %.4f) after %d epochs", last["test_accuracy"],
                last["test_loss"], run.epochs)
    return metrics


def import_checkpoint(
    *,
    source_path: str | os.PathLike,
    arch: ModelChoice,
    num_classes: int,
    channels: int,
    out_checkpoint: str | os.PathLike,
    fingerprint: str,
) -> None:
    """Convert a user-supplied model (e.g. the authors' tiny-data ``100.pth``) into our format.

    Accepts a plain ``state_dict``, ``{"state_dict": …}``, a DataParallel ``module.`` prefix or one
    of our checkpoints; the tensors must fit ``build_model(arch, num_classes, channels)`` exactly,
    since a partially loaded search model would silently bias every privacy score.
    """
    try:
        model = load_model(source_path, arch, num_classes, channels)
    except CacheError as error:  # the user's file: no workflow job can recompute it
        raise ValueError(f"search.pretrain.checkpoint {source_path}: {error.problem}") from error
    save_checkpoint(out_checkpoint, model.state_dict(), fingerprint=fingerprint, meta={
        "arch": model_name(arch), "num_classes": num_classes, "channels": channels, "defence": "imported",
        "source": str(source_path),
    })
    logger.info("imported %s as %s (%d classes, %d channels) into %s",
                source_path, model_name(arch), num_classes, channels, out_checkpoint)
