"""Data sets: from their published files to one verified HDF5 file per data set.

Every stage reads images from ``results/data/{dataset}.h5`` (written by :func:`build_dataset_file`,
read by :func:`load_dataset`) instead of from torchvision datasets, so that

* jobs do not depend on where the raw files live or on network access;
* images are ``uint8`` ``N×H×W×C`` arrays in the official order (torchvision's order), so an
  image index means the same image as in the original code (which attacked test images 0–99);
* a truncated or corrupted file is detected (``ats.runtime.hdf5`` checksums) instead of used.

Where the raw files are looked for, in order:

1. ``source_dir`` — the folder holding the files, or a torchvision root above it
   (``FashionMNIST/raw/``, ``cifar-10-batches-py/``, ``cifar-100-python/``). When it is set it is
   the only place looked at: falling back to another copy would hide a mistyped path;
2. system folders (:data:`SYSTEM_DATA_DIRS`; Debian's ``dataset-fashion-mnist`` package);
3. ``download_root`` (default: a ``downloads/`` folder next to the output file), same two forms;
4. a torchvision download into ``download_root`` when ``download`` is true.

The CIFAR pickles and the IDX files are parsed here (no torchvision needed to read them).
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ats.case.normalisation import DATASETS, DatasetSpec, dataset_spec
from ats.runtime.fingerprint import fingerprint
from ats.runtime.hdf5 import CacheError, read_h5, write_h5

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "test")

SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "cifar10": (),
    "cifar100": (),
}

# Sub-folder a torchvision download creates below its root, and the torchvision class that makes it.
_TORCHVISION_LAYOUT: Mapping[str, tuple[str, str]] = {
    "fashion-mnist": ("FashionMNIST/raw", "FashionMNIST"),
    "cifar10": ("cifar-10-batches-py", "CIFAR10"),
    "cifar100": ("cifar-100-python", "CIFAR100"),
}

_IDX_STEMS: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR10_FILES: Mapping[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
    "meta": ("batches.meta",),
}
_CIFAR100_FILES: Mapping[str, tuple[str, ...]] = {
    "train": ("train",), "test": ("test",), "meta": ("meta",),
}

_DOWNLOAD_HINT = "or set `dataset.download: true` on a machine with internet access"
_HOW_TO_GET_DATA: Mapping[str, str] = {
    "fashion-mnist": "install the Debian package (`apt-get install dataset-fashion-mnist`), or set "
                     "`dataset.source_dir` to a folder holding the four *-ubyte(.gz) IDX files, "
                     + _DOWNLOAD_HINT,
    "cifar10": "set `dataset.source_dir` to a folder holding `cifar-10-batches-py/` (the extracted "
               "python version of CIFAR-10), " + _DOWNLOAD_HINT,
    "cifar100": "set `dataset.source_dir` to a folder holding `cifar-100-python/` (the extracted "
                "python version of CIFAR-100), " + _DOWNLOAD_HINT,
}


class DatasetNotFoundError(FileNotFoundError):
    """The raw files of a data set were found nowhere and could not be downloaded."""


class DatasetFormatError(ValueError):
    """A raw data file (or a dataset cache) does not have the expected content."""


@dataclass
class DatasetArrays:
    """A whole data set in memory: ``uint8`` ``N×H×W×C`` images and ``int64`` labels per split."""

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]


def dataset_fingerprint(dataset: str) -> str:
    """Fingerprint stored in (and expected from) the dataset file of ``dataset``.

    Only the name determines the content: every source holds the same official release.
    """
    return fingerprint({"dataset": dataset})


def build_dataset_file(
    dataset: str,
    out_path: str | os.PathLike,
    source_dir: str | None = None,
    download: bool = True,
    download_root: str | None = None,
) -> None:
    """Find (or download) the raw files of ``dataset`` and write them to the HDF5 file ``out_path``.

    Layout: ``train/images``, ``train/labels``, ``test/images``, ``test/labels``, ``class_names``;
    attributes ``dataset``, ``source`` and ``shapes`` besides the checksum attributes of
    :func:`ats.runtime.hdf5.write_h5`. Raises :class:`DatasetNotFoundError` listing every place
    looked at when the data is nowhere, and :class:`DatasetFormatError` for malformed files.
    """
    spec = dataset_spec(dataset)
    download_folder = Path(download_root) if download_root else Path(out_path).parent / "downloads"
    folder, source = _locate_or_download(spec, source_dir, download, download_folder)
    arrays = _READERS[spec.name](folder, spec)
    for split in SPLITS:
        _check_split(spec, arrays[f"{split}/images"], arrays[f"{split}/labels"],
                     f"{folder}, {split} split")
    shapes = {name: list(array.shape) for name, array in arrays.items()}
    logger.info("%s from %s: %s", spec.name, source, shapes)
    write_h5(
        out_path,
        arrays,
        {"dataset": spec.name, "source": source, "shapes": shapes},
        fingerprint=dataset_fingerprint(spec.name),
    )


def load_dataset(path: str | os.PathLike, *, expected_dataset: str | None = None) -> DatasetArrays:
    """Read and verify a file written by :func:`build_dataset_file`.

    Raises :class:`ats.runtime.hdf5.CacheError` naming ``path`` when the file is corrupted, is not a
    dataset file, holds another data set than ``expected_dataset``, or has invalid contents.
    """
    expected = dataset_fingerprint(expected_dataset) if expected_dataset is not None else None
    arrays, attrs = read_h5(path, expected_fingerprint=expected)
    name = attrs.get("dataset")
    if name not in DATASETS or attrs.get("fingerprint") != dataset_fingerprint(name):
        raise CacheError(path, f"not a dataset file (dataset attribute {name!r})")
    spec = dataset_spec(name)
    required = {"class_names"} | {f"{split}/{kind}" for split in SPLITS for kind in ("images", "labels")}
    missing = sorted(required - set(arrays))
    if missing:
        raise CacheError(path, f"dataset file lacks {', '.join(missing)}")
    class_names = tuple(str(name) for name in arrays["class_names"])
    if class_names != spec.class_names:
        raise CacheError(path, f"class names {class_names[:3]}... are not those of {spec.name}")
    try:
        for split in SPLITS:
            _check_split(spec, arrays[f"{split}/images"], arrays[f"{split}/labels"],
                         f"{path}, {split} split")
    except DatasetFormatError as error:
        raise CacheError(path, f"invalid contents: {error}") from error
    return DatasetArrays(
        spec=spec,
        train_images=arrays["train/images"],
        train_labels=arrays["train/labels"],
        test_images=arrays["test/images"],
        test_labels=arrays["test/labels"],
        class_names=class_names,
    )


def _check_split(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Raise :class:`DatasetFormatError` naming ``where`` unless images and labels fit ``spec``."""
    image_shape = (spec.native_size, spec.native_size, spec.channels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != image_shape:
        raise DatasetFormatError(
            f"{where}: {spec.name} images are {images.dtype} {images.shape}, expected uint8 N×{image_shape}"
        )
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise DatasetFormatError(
            f"{where}: {spec.name} labels are {labels.dtype} {labels.shape}, expected int64 ({len(images)},)"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetFormatError(
            f"{where}: {spec.name} labels span [{labels.min()}, {labels.max()}], "
            f"expected [0, {spec.num_classes})"
        )


# --- finding the raw files ------------------------------------------------------------------------


def _missing_files(spec: DatasetSpec, folder: Path) -> list[str]:
    """Names of the raw files of ``spec`` that ``folder`` lacks (IDX files may be gzipped)."""
    if spec.name == "fashion-mnist":
        stems = [stem for pair in _IDX_STEMS.values() for stem in pair]
        return [stem for stem in stems if not _idx_file(folder, stem).is_file()]
    files = _CIFAR10_FILES if spec.name == "cifar10" else _CIFAR100_FILES
    return [name for names in files.values() for name in names if not (folder / name).is_file()]


def find_in_source_dir(dataset: str, source_dir: str | os.PathLike) -> Path:
    """The folder, ``source_dir`` or its torchvision subfolder, that holds every raw file of ``dataset``.

    Raises :class:`DatasetNotFoundError` saying what each of the two lacks. Torch-free, so that the
    workflow checks ``dataset.source_dir`` when it parses the config.
    """
    spec = dataset_spec(dataset)
    looked = []
    for folder in (Path(source_dir), Path(source_dir) / _TORCHVISION_LAYOUT[spec.name][0]):
        missing = _missing_files(spec, folder)
        if not missing:
            return folder
        looked.append(f"{folder}: " + ("does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"))
    places = "\n  ".join(looked)
    raise DatasetNotFoundError(f"source_dir {source_dir} does not hold {spec.name}:\n  {places}\n"
                               f"To get it: {_HOW_TO_GET_DATA[spec.name]}; or set source_dir to null "
                               "to look in the standard places.")


def _candidate_folders(spec: DatasetSpec, download_root: Path) -> list[tuple[Path, str]]:
    """``(folder, how it was chosen)`` in lookup order when no ``source_dir`` is set; see the module docstring."""
    subfolder = _TORCHVISION_LAYOUT[spec.name][0]
    candidates = [(folder, "system folder") for folder in SYSTEM_DATA_DIRS[spec.name]]
    candidates += [(download_root, "download_root"), (download_root / subfolder, "download_root")]
    return candidates


def _locate_or_download(
    spec: DatasetSpec, source_dir: str | None, download: bool, download_root: Path
) -> tuple[Path, str]:
    """Return the first folder holding every raw file of ``spec`` and a description of the source."""
    if source_dir:
        folder = find_in_source_dir(spec.name, source_dir)
        return folder, str(folder)
    looked: list[str] = []
    for folder, how in _candidate_folders(spec, download_root):
        missing = _missing_files(spec, folder)
        if not missing:
            return folder, str(folder)
        state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        looked.append(f"{folder} ({how}): {state}")
    download_note = "download disabled (dataset.download: false)"
    if download:
        try:
            _download_with_torchvision(spec, download_root)
        except Exception as error:  # network, disk and torchvision errors all mean "not available"
            download_note = f"torchvision download into {download_root} failed: {error}"
        else:
            folder = download_root / _TORCHVISION_LAYOUT[spec.name][0]
            missing = _missing_files(spec, folder)
            if not missing:
                return folder, f"torchvision download into {folder}"
            download_note = (f"torchvision download into {download_root} left {folder} "
                             f"without {', '.join(missing)}")
    places = "\n  ".join(looked + [download_note])
    raise DatasetNotFoundError(
        f"{spec.name} data not found. Looked at:\n  {places}\nTo get it: {_HOW_TO_GET_DATA[spec.name]}."
    )


def _download_with_torchvision(spec: DatasetSpec, root: Path) -> None:
    """Let torchvision download and extract ``spec``'s official files below ``root``."""
    import torchvision  # heavy import, only needed when downloading

    dataset_class = getattr(torchvision.datasets, _TORCHVISION_LAYOUT[spec.name][1])
    root.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s into %s", spec.name, root)
    dataset_class(root=str(root), train=True, download=True)


# --- reading the raw files ------------------------------------------------------------------------


def _idx_file(folder: Path, stem: str) -> Path:
    """The IDX file ``stem`` in ``folder``: uncompressed if present, else the gzipped name."""
    plain = folder / stem
    return plain if plain.is_file() else folder / f"{stem}.gz"


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DatasetFormatError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if data.size != int(np.prod(shape)):
        raise DatasetFormatError(
            f"{path}: header promises shape {shape} but holds {data.size} bytes (truncated?)"
        )
    return data.reshape(shape)


def _read_fashion_mnist(folder: Path, spec: DatasetSpec) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"class_names": np.array(spec.class_names)}
    for split, (image_stem, label_stem) in _IDX_STEMS.items():
        image_path, label_path = _idx_file(folder, image_stem), _idx_file(folder, label_stem)
        images = _read_idx(image_path)
        if images.ndim != 3:
            raise DatasetFormatError(f"{image_path}: expected N×28×28 images, got shape {images.shape}")
        arrays[f"{split}/images"] = images[..., np.newaxis]
        arrays[f"{split}/labels"] = _read_idx(label_path).astype(np.int64)
    return arrays


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle; keys become ``str`` whether they were pickled as ``str`` or ``bytes``.

    The official files were written by Python 2, hence ``encoding="latin1"``.
    """
    with open(path, "rb") as handle:
        content = pickle.load(handle, encoding="latin1")
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in content.items()}


def _pickle_entry(content: dict[str, Any], key: str, path: Path) -> Any:
    if key not in content:
        raise DatasetFormatError(f"{path}: no {key!r} entry (has {sorted(content)})")
    return content[key]


def _read_cifar(folder: Path, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Read the python version of CIFAR-10/100; CIFAR-100 uses its 100 fine labels."""
    files, label_key, names_key = (
        (_CIFAR10_FILES, "labels", "label_names") if spec.name == "cifar10"
        else (_CIFAR100_FILES, "fine_labels", "fine_label_names")
    )
    meta_path = folder / files["meta"][0]
    names = tuple(
        name.decode() if isinstance(name, bytes) else str(name)
        for name in _pickle_entry(_unpickle(meta_path), names_key, meta_path)
    )
    if names != spec.class_names:
        raise DatasetFormatError(f"{meta_path}: class names {names[:5]}... are not those of {spec.name}")
    arrays: dict[str, np.ndarray] = {"class_names": np.array(names)}
    for split in SPLITS:
        images, labels = [], []
        for file_name in files[split]:
            path = folder / file_name
            content = _unpickle(path)
            rows = np.asarray(_pickle_entry(content, "data", path), dtype=np.uint8)
            if rows.ndim != 2 or rows.shape[1] != 3 * 32 * 32:
                raise DatasetFormatError(f"{path}: 'data' has shape {rows.shape}, expected N×3072")
            # Each row holds the red, then green, then blue 32×32 plane; store as N×H×W×C.
            images.append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(_pickle_entry(content, label_key, path), dtype=np.int64))
        arrays[f"{split}/images"] = np.ascontiguousarray(np.concatenate(images))
        arrays[f"{split}/labels"] = np.concatenate(labels)
    return arrays


_READERS: Mapping[str, Callable[[Path, DatasetSpec], dict[str, np.ndarray]]] = {
    "fashion-mnist": _read_fashion_mnist,
    "cifar10": _read_cifar,
    "cifar100": _read_cifar,
}
