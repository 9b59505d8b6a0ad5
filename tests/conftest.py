"""Shared fixtures: tiny data sets in the official raw formats, and dataset files built from them.

The raw writers produce the published formats (CIFAR python pickles, gzipped IDX files) with
random pixels, so loaders are tested on the real formats without the real data.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ats.case.normalisation import dataset_spec


def _tiny_split(dataset: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` images of every class in class-cycling order, as uint8 N×H×W×C and int64."""
    spec = dataset_spec(dataset)
    labels = np.tile(np.arange(spec.num_classes, dtype=np.int64), per_class)
    shape = (len(labels), spec.native_size, spec.native_size, spec.channels)
    images = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    return images, labels


def write_cifar_folder(
    root: Path, dataset: str, per_class: int = 1, bytes_keys: bool = False
) -> dict[str, np.ndarray]:
    """Write a torchvision-format CIFAR folder below ``root``; return the expected arrays.

    ``bytes_keys`` pickles keys and class names as ``bytes`` (as Python 3 tools often do) instead
    of ``str`` (as the official Python 2 files do).
    """
    spec = dataset_spec(dataset)
    key = (lambda text: text.encode()) if bytes_keys else (lambda text: text)
    expected: dict[str, np.ndarray] = {}
    if dataset == "cifar10":
        folder = root / "cifar-10-batches-py"
        split_files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        label_key, meta_file, names_key = "labels", "batches.meta", "label_names"
    else:
        folder = root / "cifar-100-python"
        split_files = {"train": ["train"], "test": ["test"]}
        label_key, meta_file, names_key = "fine_labels", "meta", "fine_label_names"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, files) in enumerate(split_files.items()):
        images, labels = _tiny_split(dataset, per_class, seed)
        expected[f"{split}/images"], expected[f"{split}/labels"] = images, labels
        rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R plane, G plane, B plane
        for file_name, part in zip(files, np.array_split(np.arange(len(images)), len(files))):
            content = {key("data"): rows[part], key(label_key): labels[part].tolist()}
            if dataset == "cifar100":  # coarse labels must be ignored: make them differ
                content[key("coarse_labels")] = (labels[part] // 5).tolist()
            (folder / file_name).write_bytes(pickle.dumps(content, protocol=2))
    names = [key(name) for name in spec.class_names]
    (folder / meta_file).write_bytes(pickle.dumps({key(names_key): names}, protocol=2))
    return expected


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion_mnist_folder(
    folder: Path, per_class: int = 1, gzipped: bool = True
) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST IDX files into ``folder``; return the expected arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    stems = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    expected: dict[str, np.ndarray] = {}
    for seed, (split, (image_stem, label_stem)) in enumerate(stems.items()):
        images, labels = _tiny_split("fashion-mnist", per_class, seed)
        expected[f"{split}/images"], expected[f"{split}/labels"] = images, labels
        for stem, array in ((image_stem, images[..., 0]), (label_stem, labels)):
            if gzipped:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(array), mtime=0))
            else:
                (folder / stem).write_bytes(_idx_bytes(array))
    return expected


@pytest.fixture
def write_cifar() -> Callable[..., dict[str, np.ndarray]]:
    """:func:`write_cifar_folder` as a fixture, for tests that need raw CIFAR files."""
    return write_cifar_folder


@pytest.fixture
def write_fashion_mnist() -> Callable[..., dict[str, np.ndarray]]:
    """:func:`write_fashion_mnist_folder` as a fixture, for tests that need raw IDX files."""
    return write_fashion_mnist_folder


@pytest.fixture
def no_system_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide system-wide data (the Debian Fashion-MNIST package) from the dataset lookup."""
    from ats.case import datasets

    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS", dict.fromkeys(datasets.SYSTEM_DATA_DIRS, ()))


@pytest.fixture
def tiny_dataset_h5(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory ``(dataset="cifar10", per_class=1) -> Path`` of a dataset file built from tiny raw files.

    The file goes through :func:`ats.case.datasets.build_dataset_file`, so it has exactly the
    layout and checksums of a real one; train and test hold ``per_class`` images of every class.
    """
    def make(dataset: str = "cifar10", per_class: int = 1) -> Path:
        return tiny_dataset_file(tmp_path_factory.mktemp(f"raw-{dataset}"), dataset, per_class)

    return make


def tiny_dataset_file(root: Path, dataset: str = "cifar10", per_class: int = 1) -> Path:
    """Write tiny raw files of ``dataset`` into ``root`` and build ``root/{dataset}.h5`` from them.

    The function behind :func:`tiny_dataset_h5`, for fixtures of a wider scope.
    """
    from ats.case.datasets import build_dataset_file

    if dataset == "fashion-mnist":
        write_fashion_mnist_folder(root, per_class)
    else:
        write_cifar_folder(root, dataset, per_class)
    out_path = root / f"{dataset}.h5"
    build_dataset_file(dataset, out_path, source_dir=str(root), download=False)
    return out_path


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: small tensors gain nothing from more, and lose much on a busy machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
