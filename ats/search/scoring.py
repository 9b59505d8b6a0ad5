"""Stage 2 of the search: score a shard of candidate policies (S_pri and S_acc), and read shards back.

One job loads the data, the evaluation images and both models once, then scores every policy of
its shard, as the original's ``search_transform_attack.py`` did for one policy per process:

* **S_pri** on the tiny-data model (the checkpoint, loaded strictly) in eval mode. Each S_pri image
  gets the policy's training transform (crop, flip and the policy; nothing for the empty policy)
  from a draw seeded by ``(seed, "spri", policy, test_index)``, and a noise image seeded by
  ``(seed, "noise", test_index)``, the same for every policy, so that policies differ only by
  their transform.
* **S_acc** on an untrained model built right after seeding with ``seed``, so every policy of every
  job sees the same initial weights (the original relied on its fixed import-time seed), with
  draws seeded by ``(seed, "sacc", policy, run, test_index)``.

**Repeats.** The scoring can be repeated to measure how much the ranking owes to its random draws.
Repeat ``r`` replaces ``seed`` in the draws and the noise above by :func:`repeat_seed` ``(seed, r)``:
repeat 0 uses ``seed`` itself (the scores of a single scoring), every later repeat an independent
seed derived from it. The untrained S_acc model and the evaluation images stay the same in every
repeat: they define the scores (one model and one image set shared by all policies), while the
draws and the noise are the randomness a repeat should resample; the spread over images is what
the selection's bootstrap intervals measure.

Seeds are derived from names, not call order, so a policy's scores do not depend on its shard, its
position in the shard or the device. A non-finite score is stored as NaN with status
``nonfinite``; it never stops the job. A CUDA out-of-memory error halves the chunk size and retries.

Shard file layout (HDF5 via :func:`ats.runtime.hdf5.write_h5`; policy strings are not valid
dataset names, so per-policy groups are named by position):

* ``repeat`` (): the repeat the shard belongs to (an array, so the content checksum covers it);
* ``policies`` (P,) strings; ``status`` (P,) strings, ``ok`` or ``nonfinite``;
* ``privacy/indices``, ``privacy/labels`` (N,): the S_pri images' test indices and labels;
  ``privacy/classes`` (K,): the distinct labels among them, the order of the per-class means;
* ``accuracy/run_sizes`` (R,): images per S_acc run;
* ``policy/{i}/spri`` (N,), ``policy/{i}/curves`` (N, bins+1), ``policy/{i}/spri_class_means`` (K,),
  ``policy/{i}/sacc`` (R,), float64;
* attributes ``arch, dataset, bins, seed, draw_seed, normalisation, device, chunk_size, seconds``
  (per policy); ``draw_seed`` is the seed of the draws and the noise of this repeat.

This module imports torch only inside :func:`score_shard` and :func:`score_policies`, so that the
selection job and the report, which only read shards, start fast.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ats.case.architectures import ModelChoice, model_name
from ats.runtime.hdf5 import CacheError, read_h5, write_h5
from ats.runtime.seeding import derive_seed
from ats.settings import ScoringSettings

if TYPE_CHECKING:
    import torch

    from ats.case.datasets import DatasetArrays
    from ats.search.eval_set import EvalSet

_log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_NONFINITE = "nonfinite"


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of the draws and the noise of repeat ``repeat``: ``seed`` for repeat 0, so that a
    single scoring keeps the scores it always had, and an independent derived seed after it."""
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
        raise ValueError(f"repeat must be a non-negative integer, got {repeat!r}")
    return seed if repeat == 0 else derive_seed(seed, "repeat", repeat)


@dataclass(frozen=True)
class PolicyScores:
    """Everything a shard stores about one policy (see the module docstring for the arrays).

    ``repeat`` is the repeat of the scoring the values come from (see the module docstring), ``None``
    for values pooled over repeats (:func:`ats.search.selection.average_repeats`).
    """

    policy: str
    status: str
    spri: np.ndarray
    curves: np.ndarray
    classes: np.ndarray
    spri_class_means: np.ndarray
    sacc: np.ndarray
    repeat: int | None = 0

    @property
    def spri_mean(self) -> float:
        """Mean S_pri over the images (the CVPR ranking key)."""
        return float(np.mean(self.spri))

    @property
    def spri_class_var(self) -> float:
        """Population variance of the per-class mean S_pri (the later code's second term)."""
        return float(np.var(self.spri_class_means))

    @property
    def sacc_mean(self) -> float:
        return float(np.mean(self.sacc))

    @property
    def is_finite(self) -> bool:
        return self.status == STATUS_OK and bool(np.all(np.isfinite(self.spri)) and np.all(np.isfinite(self.sacc)))


def class_means(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct labels, mean of ``values`` per label), labels ascending."""
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros(len(classes), dtype=np.float64)
    np.add.at(sums, inverse, values)
    return classes, sums / np.bincount(inverse)


def _finite_or_nan(values: np.ndarray) -> np.ndarray:
    """``values`` as float64 with every ±Inf replaced by NaN, the one marker of a failed score."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(values), values, np.nan)


def make_policy_scores(policy: str, spri: np.ndarray, curves: np.ndarray, labels: np.ndarray,
                       sacc: np.ndarray, repeat: int = 0) -> PolicyScores:
    """A :class:`PolicyScores` of repeat ``repeat`` from raw per-image S_pri, curves and per-run S_acc.

    Non-finite values become NaN and set the status to ``nonfinite``; per-class means follow
    ``labels`` (the S_pri images' labels).
    """
    spri, curves, sacc = _finite_or_nan(spri), _finite_or_nan(curves), _finite_or_nan(sacc)
    classes, means = class_means(spri, labels)
    finite = not (np.isnan(spri).any() or np.isnan(sacc).any())
    return PolicyScores(policy=policy, status=STATUS_OK if finite else STATUS_NONFINITE, spri=spri, curves=curves,
                        classes=classes, spri_class_means=means, sacc=sacc, repeat=repeat)


def write_scores(
    path: str | os.PathLike,
    scores: Sequence[PolicyScores],
    *,
    privacy_indices: np.ndarray,
    privacy_labels: np.ndarray,
    run_sizes: Sequence[int],
    attrs: Mapping[str, Any],
    fingerprint: str,
) -> None:
    """Write a shard file (layout in the module docstring) atomically; its policies share one repeat."""
    repeats = {entry.repeat for entry in scores}
    if len(repeats) > 1:
        raise ValueError(f"a shard holds one repeat, got scores of repeats {sorted(repeats)}")
    arrays: dict[str, np.ndarray] = {
        "repeat": np.int64(repeats.pop() if repeats else 0),
        "policies": np.array([entry.policy for entry in scores], dtype=object),
        "status": np.array([entry.status for entry in scores], dtype=object),
        "privacy/indices": np.asarray(privacy_indices, dtype=np.int64),
        "privacy/labels": np.asarray(privacy_labels, dtype=np.int64),
        "privacy/classes": np.unique(privacy_labels).astype(np.int64),
        "accuracy/run_sizes": np.asarray(run_sizes, dtype=np.int64),
    }
    for position, entry in enumerate(scores):
        arrays.update({f"policy/{position}/spri": entry.spri, f"policy/{position}/curves": entry.curves,
                       f"policy/{position}/spri_class_means": entry.spri_class_means,
                       f"policy/{position}/sacc": entry.sacc})
    write_h5(path, arrays, attrs, fingerprint=fingerprint)


def read_scores(paths: Sequence[str | os.PathLike],
                expected_fingerprints: Sequence[str] | None = None) -> list[PolicyScores]:
    """Every policy of the shard files ``paths``, in file order then shard order.

    ``expected_fingerprints`` (one per path; the workflow's stages always pass them) refuses a
    shard made under another configuration. Raises :class:`CacheError` naming a corrupted or
    foreign file, ``ValueError`` when a policy appears in two shards of the same repeat.
    """
    if expected_fingerprints is None:
        expected_fingerprints = [None] * len(paths)
    scores: list[PolicyScores] = []
    seen: dict[tuple[int, str], str] = {}
    for path, expected_fingerprint in zip(paths, expected_fingerprints, strict=True):
        arrays, _ = read_h5(path, expected_fingerprint=expected_fingerprint)
        if any(name not in arrays for name in ("repeat", "policies", "privacy/classes")):
            raise CacheError(path, "not a score shard (no 'repeat', 'policies' or 'privacy/classes')")
        repeat = int(arrays["repeat"])
        for position, policy in enumerate(arrays["policies"]):
            policy = str(policy)
            if (repeat, policy) in seen:
                raise ValueError(f"policy {policy!r} of repeat {repeat} is scored in both "
                                 f"{seen[repeat, policy]} and {path}")
            seen[repeat, policy] = str(path)
            group = f"policy/{position}"
            try:
                scores.append(PolicyScores(
                    policy=policy, status=str(arrays["status"][position]), spri=arrays[f"{group}/spri"],
                    curves=arrays[f"{group}/curves"], classes=arrays["privacy/classes"],
                    spri_class_means=arrays[f"{group}/spri_class_means"], sacc=arrays[f"{group}/sacc"],
                    repeat=repeat,
                ))
            except KeyError as error:
                raise CacheError(path, f"score shard lacks {error} of policy {policy!r}") from error
    return scores


def score_shard(
    *,
    dataset_h5: str | os.PathLike,
    eval_set_h5: str | os.PathLike,
    search_checkpoint: str | os.PathLike,
    arch: ModelChoice,
    policies: Sequence[str],
    out_h5: str | os.PathLike,
    seed: int,
    repeat: int = 0,
    device: str,
    normalisation: str,
    settings: ScoringSettings,
    fingerprint: str,
    model_fingerprint: str | None = None,
    eval_set_fingerprint: str | None = None,
) -> None:
    """Stage function: score every policy of the shard for repeat ``repeat`` and write ``out_h5`` atomically.

    ``settings.chunk_size`` is the number of inputs per gradient pass (0: from the model size, see
    :func:`ats.search.privacy.default_chunk_size`). ``fingerprint`` is the shard's
    (:func:`ats.settings.shard_fingerprint` in the workflow). ``model_fingerprint`` and
    ``eval_set_fingerprint`` are the configuration fingerprints the search checkpoint and the
    evaluation set must carry, so that scores are never computed on inputs of another configuration.
    """
    from ats.case.datasets import load_dataset
    from ats.case.models import load_model
    from ats.policies import parse_policy
    from ats.runtime.device import resolve_device
    from ats.runtime.memory import retain_freed_host_memory
    from ats.search.eval_set import load_eval_set

    for policy in policies:  # a bad policy fails before any work
        parse_policy(policy)
    dataset = load_dataset(dataset_h5)
    spec = dataset.spec
    eval_set = load_eval_set(eval_set_h5, expected_fingerprint=eval_set_fingerprint)
    if eval_set.attrs.get("dataset") != spec.name or not np.array_equal(
            dataset.test_labels[eval_set.privacy_indices], eval_set.privacy_labels):
        raise CacheError(eval_set_h5, f"evaluation images were not cut from the dataset file {dataset_h5} "
                                      f"({eval_set.attrs.get('dataset')!r} vs {spec.name!r})")
    torch_device = resolve_device(device)
    retain_freed_host_memory()
    trained = load_model(search_checkpoint, arch, spec.num_classes, spec.channels,
                         expected_fingerprint=model_fingerprint)
    scores, attrs = score_policies(trained=trained, arch=arch, data=dataset, eval_set=eval_set, policies=policies,
                                   seed=seed, repeat=repeat, device=torch_device, normalisation=normalisation,
                                   bins=settings.bins, chunk_size=settings.chunk_size or None)
    write_scores(out_h5, scores, privacy_indices=eval_set.privacy_indices, privacy_labels=eval_set.privacy_labels,
                 run_sizes=[len(batch) for batch in eval_set.accuracy_batches()], attrs=attrs,
                 fingerprint=fingerprint)
    _log.info("scored %d policies in %.1f s into %s", len(policies), sum(attrs["seconds"]), out_h5)


def score_policies(
    *,
    trained: torch.nn.Module,
    arch: ModelChoice,
    data: DatasetArrays,
    eval_set: EvalSet,
    policies: Sequence[str],
    seed: int,
    repeat: int = 0,
    device: torch.device | str,
    normalisation: str,
    bins: int = 20,
    chunk_size: int | None = None,
) -> tuple[list[PolicyScores], dict[str, Any]]:
    """Score ``policies`` in memory: the work of :func:`score_shard` once its inputs are loaded.

    ``trained`` is the tiny-data search model (a ``torch.nn.Module``), ``data`` the
    :class:`ats.case.datasets.DatasetArrays` and ``eval_set`` the :class:`ats.search.eval_set.EvalSet`
    cut from it; ``arch`` builds the untrained S_acc model (seeded with ``seed``); ``device`` is a
    resolved torch device. Returns the scores and the shard attributes.
    """
    import torch

    from ats.case.models import build_model
    from ats.case.normalisation import normalisation_constants
    from ats.policies import parse_policy
    from ats.runtime.logs import progress
    from ats.runtime.memory import halving_on_cuda_oom
    from ats.runtime.seeding import seed_everything, torch_generator
    from ats.search.accuracy import input_jacobians, score_from_jacobian
    from ats.search.privacy import default_chunk_size, privacy_curves, uniform_noise
    from ats.transforms.pipeline import OUTPUT_SIZE, Preprocessor, draw_per_sample

    parsed = {policy: parse_policy(policy) for policy in policies}
    draw_seed = repeat_seed(seed, repeat)
    spec = data.spec
    image_size = eval_set.privacy_images.shape[1]
    torch_device = torch.device(device)
    seed_everything(seed)
    untrained = build_model(arch, spec.num_classes, spec.channels).to(torch_device).eval()
    trained = trained.to(torch_device).eval()

    mean, std = normalisation_constants(spec.name, normalisation)
    preprocessor = Preprocessor(spec.channels, mean, std, torch_device)
    test_indices = [int(index) for index in eval_set.privacy_indices]
    noise = torch.stack([
        uniform_noise((spec.channels, OUTPUT_SIZE, OUTPUT_SIZE), torch_generator(draw_seed, "noise", index),
                      mean, std)
        for index in test_indices]).to(torch_device)
    labels = torch.as_tensor(eval_set.privacy_labels, dtype=torch.int64, device=torch_device)
    runs = eval_set.accuracy_batches()
    accuracy_keys = [(int(run), int(index)) for run, index in zip(eval_set.accuracy_run, eval_set.accuracy_indices)]
    chunk = chunk_size or default_chunk_size(trained, (spec.channels, OUTPUT_SIZE, OUTPUT_SIZE))

    scores: list[PolicyScores] = []
    seconds: list[float] = []
    for policy in progress(policies, desc="scoring policies", total=len(policies)):
        started = time.perf_counter()
        privacy_draw = draw_per_sample(parsed[policy], [derive_seed(draw_seed, "spri", policy, index)
                                                        for index in test_indices], image_size=image_size)
        privacy_inputs = preprocessor(eval_set.privacy_images, "policy", parsed[policy], privacy_draw)
        (spri, curves), chunk = halving_on_cuda_oom(
            lambda size: privacy_curves(trained, privacy_inputs, labels, noise, bins=bins, chunk_size=size),
            chunk, what=f"S_pri of {policy!r}", minimum=bins + 1)
        accuracy_draw = draw_per_sample(parsed[policy], [derive_seed(draw_seed, "sacc", policy, run, index)
                                                         for run, index in accuracy_keys], image_size=image_size)
        accuracy_inputs = preprocessor(eval_set.accuracy_images, "policy", parsed[policy], accuracy_draw)
        jacobians, chunk = halving_on_cuda_oom(
            lambda size: input_jacobians(untrained, accuracy_inputs, chunk_size=size), chunk,
            what=f"S_acc of {policy!r}")
        sacc = [score_from_jacobian(jacobians[torch.as_tensor(batch, device=torch_device)]) for batch in runs]
        entry = make_policy_scores(policy, spri.double().cpu().numpy(), curves.double().cpu().numpy(),
                                   eval_set.privacy_labels, np.array(sacc), repeat=repeat)
        scores.append(entry)
        seconds.append(time.perf_counter() - started)
        if entry.status != STATUS_OK:
            _log.warning("policy %r: non-finite scores stored as NaN (status %s)", policy, entry.status)
        _log.info("policy %r: S_pri %.5f, S_acc %.3f (%.1f s)", policy, entry.spri_mean, entry.sacc_mean,
                  seconds[-1])

    attrs = {"arch": model_name(arch), "dataset": spec.name, "bins": bins, "seed": seed, "draw_seed": draw_seed,
             "normalisation": normalisation,
             "device": str(torch_device), "chunk_size": chunk, "seconds": seconds}
    return scores, attrs


