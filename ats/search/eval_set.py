"""The test images on which S_pri and S_acc are computed (docs/original-code.md §5.1, §6.2), cached once per search.

* **S_pri images.** ``per_class`` (the later code, default): for each class the first
  ``num_samples`` test images with that label, ordered by class then index. ``cvpr`` (the CVPR
  code): the 100 test images at indices 200, 205, …, 695, whatever their labels.
* **S_acc windows.** Run r looks at test indices start + window·r … start + window·(r+1) − 1 and
  keeps the first image of each label, so every run is a batch of distinct labels (≈ 63 of 100
  for CIFAR-100, ≤ 10 for Fashion-MNIST).

The original found the per-class images by iterating (and transforming) the whole test set once;
here the labels array is read directly. Only the untransformed uint8 images are cached: every
policy transforms them itself with its own seeded draws.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ats.case.datasets import load_dataset
from ats.runtime.fingerprint import fingerprint
from ats.runtime.hdf5 import CacheError, read_h5, write_h5

_log = logging.getLogger(__name__)

PRIVACY_IMAGE_MODES: tuple[str, ...] = ("per_class", "cvpr")
CVPR_FIRST_INDEX = 200
CVPR_STRIDE = 5
CVPR_COUNT = 100


def _check_labels(test_labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    labels = np.asarray(test_labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"test labels must be a 1-D integer array, got {labels.dtype} with shape {labels.shape}")
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"test labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return labels


def privacy_indices(
    test_labels: np.ndarray, num_classes: int, num_samples: int = 5, mode: str = "per_class"
) -> np.ndarray:
    """Test indices of the S_pri images (see the module docstring), as int64.

    Raises ``ValueError`` naming the class that has fewer than ``num_samples`` test images, or the
    test-split size that is too small for the ``cvpr`` indices.
    """
    labels = _check_labels(test_labels, num_classes)
    if mode == "cvpr":
        indices = CVPR_FIRST_INDEX + CVPR_STRIDE * np.arange(CVPR_COUNT, dtype=np.int64)
        if indices[-1] >= len(labels):
            raise ValueError(f"S_pri 'cvpr' images need test indices up to {indices[-1]}, "
                             f"but the test split has only {len(labels)} images")
        return indices
    if mode != "per_class":
        raise ValueError(f"S_pri image mode must be one of {', '.join(PRIVACY_IMAGE_MODES)}, got {mode!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    chosen = []
    for label in range(num_classes):
        of_class = np.flatnonzero(labels == label)
        if len(of_class) < num_samples:
            raise ValueError(f"class {label} has {len(of_class)} test images, fewer than "
                             f"num_samples={num_samples} S_pri images per class")
        chosen.append(of_class[:num_samples])
    return np.concatenate(chosen).astype(np.int64)


def accuracy_windows(
    test_labels: np.ndarray, runs: int = 10, start: int = 200, window: int = 100
) -> list[np.ndarray]:
    """Per S_acc run, the test indices of its window that hold a label's first occurrence (int64)."""
    labels = _check_labels(test_labels)
    for name, value, minimum in (("runs", runs, 1), ("start", start, 0), ("window", window, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"S_acc {name} must be an integer >= {minimum}, got {value!r}")
    end = start + window * runs
    if end > len(labels):
        raise ValueError(f"S_acc needs test indices {start}..{end - 1} ({runs} runs of {window}), "
                         f"but the test split has only {len(labels)} images")
    result = []
    for run in range(runs):
        indices = np.arange(start + window * run, start + window * (run + 1), dtype=np.int64)
        _, first = np.unique(labels[indices], return_index=True)
        result.append(indices[np.sort(first)])
    return result


@dataclass(frozen=True)
class EvalSet:
    """The cached evaluation images (uint8 N×H×W×C) with their test indices and labels.

    ``accuracy_run[i]`` is the S_acc run of accuracy image i; runs are stored in order.
    """

    privacy_images: np.ndarray
    privacy_indices: np.ndarray
    privacy_labels: np.ndarray
    accuracy_images: np.ndarray
    accuracy_indices: np.ndarray
    accuracy_labels: np.ndarray
    accuracy_run: np.ndarray
    attrs: dict[str, Any]

    @property
    def runs(self) -> int:
        return int(self.attrs["runs"])

    def accuracy_batches(self) -> list[np.ndarray]:
        """Positions (into the accuracy arrays) of each run's images."""
        return [np.flatnonzero(self.accuracy_run == run) for run in range(self.runs)]


_ARRAY_NAMES = {
    "privacy_images": "privacy/images", "privacy_indices": "privacy/indices", "privacy_labels": "privacy/labels",
    "accuracy_images": "accuracy/images", "accuracy_indices": "accuracy/indices",
    "accuracy_labels": "accuracy/labels", "accuracy_run": "accuracy/run",
}


def eval_set_fingerprint(dataset: str, *, privacy: Mapping[str, Any], accuracy: Mapping[str, Any]) -> str:
    """The fingerprint of the evaluation images cut under the config's ``search.privacy`` and ``search.accuracy``.

    The workflow, the API and the command line all fingerprint the file with it.
    """
    return fingerprint({"dataset": dataset, "privacy": dict(privacy), "accuracy": dict(accuracy)})


def build_eval_set(
    dataset_h5: str | os.PathLike,
    out_h5: str | os.PathLike,
    *,
    mode: str,
    num_samples: int,
    runs: int,
    start: int = 200,
    window: int = 100,
    fingerprint: str,
) -> None:
    """Stage function: cut the S_pri and S_acc images out of the test split into ``out_h5``.

    Layout: ``privacy/{images,indices,labels}``, ``accuracy/{images,indices,labels,run}``; attributes
    ``dataset, num_classes, channels, mode, num_samples, runs, start, window``.
    """
    data = load_dataset(dataset_h5)
    spec = data.spec
    private = privacy_indices(data.test_labels, spec.num_classes, num_samples, mode)
    windows = accuracy_windows(data.test_labels, runs, start, window)
    accuracy = np.concatenate(windows)
    arrays = {
        "privacy/images": data.test_images[private],
        "privacy/indices": private,
        "privacy/labels": data.test_labels[private].astype(np.int64),
        "accuracy/images": data.test_images[accuracy],
        "accuracy/indices": accuracy,
        "accuracy/labels": data.test_labels[accuracy].astype(np.int64),
        "accuracy/run": np.concatenate([np.full(len(w), run, dtype=np.int64) for run, w in enumerate(windows)]),
    }
    attrs = {"dataset": spec.name, "num_classes": spec.num_classes, "channels": spec.channels, "mode": mode,
             "num_samples": num_samples, "runs": runs, "start": start, "window": window}
    write_h5(out_h5, arrays, attrs, fingerprint=fingerprint)
    _log.info("eval set %s: %d S_pri images (%s), %d S_acc runs of %s images", out_h5, len(private), mode,
              runs, "/".join(str(len(w)) for w in windows))


def load_eval_set(path: str | os.PathLike, *, expected_fingerprint: str | None = None) -> EvalSet:
    """Read and verify a file written by :func:`build_eval_set` (``CacheError`` naming ``path``)."""
    arrays, attrs = read_h5(path, expected_fingerprint=expected_fingerprint)
    missing = sorted(set(_ARRAY_NAMES.values()) - set(arrays))
    if missing or "runs" not in attrs:
        raise CacheError(path, f"not an evaluation-set file (lacks {', '.join(missing) or 'attribute runs'})")
    return EvalSet(**{field: arrays[name] for field, name in _ARRAY_NAMES.items()}, attrs=attrs)
