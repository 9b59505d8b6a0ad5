"""Data set registry, normalisation constants, raw-file readers and the verified dataset file."""

from __future__ import annotations

import gzip
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ats.case import datasets
from ats.case.datasets import (
    DatasetFormatError,
    DatasetNotFoundError,
    build_dataset_file,
    dataset_fingerprint,
    load_dataset,
)
from ats.case.normalisation import DATASETS, NORMALISATION_MODES, dataset_spec, normalisation_constants
from ats.runtime.hdf5 import CacheError, read_h5, write_h5

CIFAR10_MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
CIFAR10_STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)
CIFAR100_MEAN = (0.5071598291397095, 0.4866936206817627, 0.44120192527770996)
CIFAR100_STD = (0.2673342823982239, 0.2564384639263153, 0.2761504650115967)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


# --- registry and normalisation -------------------------------------------------------------------


def test_registry_describes_the_three_datasets() -> None:
    assert {name: (s.num_classes, s.channels, s.native_size) for name, s in DATASETS.items()} == {
        "fashion-mnist": (10, 1, 28), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32),
    }
    assert all(len(spec.class_names) == spec.num_classes for spec in DATASETS.values())
    assert DATASETS["cifar100"].class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert DATASETS["cifar100"].class_names[-1] == "worm"
    assert DATASETS["fashion-mnist"].class_names[9] == "Ankle boot"


def test_faithful_constants_are_those_the_original_used() -> None:
    assert normalisation_constants("cifar10") == (CIFAR10_MEAN, CIFAR10_STD)
    assert normalisation_constants("cifar100") == (CIFAR10_MEAN, CIFAR10_STD)  # sic: CIFAR-10's
    assert normalisation_constants("fashion-mnist") == ((0.1307,), (0.3081,))  # sic: MNIST's


def test_dataset_constants_are_each_datasets_own() -> None:
    assert normalisation_constants("cifar10", "dataset") == (CIFAR10_MEAN, CIFAR10_STD)
    assert normalisation_constants("cifar100", "dataset") == (CIFAR100_MEAN, CIFAR100_STD)
    assert normalisation_constants("fashion-mnist", "dataset") == (
        (0.2860405969887955,), (0.35302424451492254,)
    )


def test_constants_have_one_value_per_channel() -> None:
    for mode in NORMALISATION_MODES:
        for name, spec in DATASETS.items():
            mean, std = normalisation_constants(name, mode)
            assert len(mean) == len(std) == spec.channels


def test_unknown_names_are_rejected_with_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"'cifar-100'.*cifar10, cifar100, fashion-mnist"):
        normalisation_constants("cifar-100")
    with pytest.raises(ValueError, match=r"'own'.*faithful, dataset"):
        normalisation_constants("cifar10", "own")
    with pytest.raises(ValueError, match="'mnist'"):
        dataset_spec("mnist")


def test_normalisation_module_does_not_import_torch() -> None:
    code = "import sys, ats.case.normalisation; print('torch' in sys.modules)"
    project_root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=project_root)
    assert result.stdout.strip() == "False"


# --- CIFAR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "bytes_keys"), [("cifar10", False), ("cifar100", True)])
def test_cifar_round_trip(tmp_path: Path, write_cifar, dataset: str, bytes_keys: bool) -> None:
    expected = write_cifar(tmp_path / "raw", dataset, per_class=2, bytes_keys=bytes_keys)
    out_path = tmp_path / f"{dataset}.h5"
    build_dataset_file(dataset, out_path, source_dir=str(tmp_path / "raw"), download=False)

    data = load_dataset(out_path, expected_dataset=dataset)
    spec = DATASETS[dataset]
    assert data.spec == spec
    assert data.class_names == spec.class_names
    np.testing.assert_array_equal(data.train_images, expected["train/images"])
    np.testing.assert_array_equal(data.train_labels, expected["train/labels"])
    np.testing.assert_array_equal(data.test_images, expected["test/images"])
    np.testing.assert_array_equal(data.test_labels, expected["test/labels"])
    assert data.train_images.shape == (2 * spec.num_classes, 32, 32, 3)
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int64

    with h5py.File(out_path) as handle:
        assert handle.attrs["dataset"] == dataset
        assert handle.attrs["source"] == str(tmp_path / "raw" / datasets._TORCHVISION_LAYOUT[dataset][0])
        assert handle.attrs["fingerprint"] == dataset_fingerprint(dataset)
        assert len(handle.attrs["content_sha256"]) == 64
        assert '"train/images": [' in handle.attrs["shapes"]


def test_cifar_pixels_are_unpacked_plane_by_plane(tmp_path: Path, write_cifar) -> None:
    """A CIFAR row is 1024 red, 1024 green, 1024 blue values: pixel (r, c) of plane p is at
    p·1024 + 32r + c."""
    raw = tmp_path / "raw" / "cifar-10-batches-py"
    write_cifar(tmp_path / "raw", "cifar10")
    rows = datasets._unpickle(raw / "data_batch_1")["data"]
    build_dataset_file("cifar10", tmp_path / "c.h5", source_dir=str(raw), download=False)
    images = load_dataset(tmp_path / "c.h5").train_images
    for row, col, plane in ((0, 0, 0), (5, 17, 1), (31, 2, 2)):
        assert images[1, row, col, plane] == rows[1, plane * 1024 + row * 32 + col]


def test_cifar100_uses_fine_labels(tmp_path: Path, write_cifar) -> None:
    write_cifar(tmp_path, "cifar100")
    build_dataset_file("cifar100", tmp_path / "c.h5", source_dir=str(tmp_path), download=False)
    np.testing.assert_array_equal(load_dataset(tmp_path / "c.h5").test_labels, np.arange(100))


def test_cifar10_files_passed_off_as_cifar100_are_reported(tmp_path: Path, write_cifar) -> None:
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-100-python").mkdir()
    # CIFAR-10 files renamed to look like CIFAR-100 ones.
    for name, source in (("train", "data_batch_1"), ("test", "test_batch"), ("meta", "batches.meta")):
        content = (tmp_path / "cifar-10-batches-py" / source).read_bytes()
        (tmp_path / "cifar-100-python" / name).write_bytes(content)
    with pytest.raises(DatasetFormatError, match=r"meta: no 'fine_label_names' entry"):
        build_dataset_file("cifar100", tmp_path / "c.h5", source_dir=str(tmp_path), download=False)


def test_out_of_range_labels_name_the_source(tmp_path: Path, write_cifar) -> None:
    write_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    content = pickle.loads(batch.read_bytes())
    content["labels"][0] = 10
    batch.write_bytes(pickle.dumps(content))
    expected = r"cifar-10-batches-py, test split: cifar10 labels span \[1, 10\], expected \[0, 10\)"
    with pytest.raises(DatasetFormatError, match=expected):
        build_dataset_file("cifar10", tmp_path / "c.h5", source_dir=str(tmp_path), download=False)


# --- Fashion-MNIST --------------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path: Path, write_fashion_mnist, gzipped: bool) -> None:
    expected = write_fashion_mnist(tmp_path / "idx", per_class=3, gzipped=gzipped)
    build_dataset_file("fashion-mnist", tmp_path / "f.h5", source_dir=str(tmp_path / "idx"), download=False)
    data = load_dataset(tmp_path / "f.h5", expected_dataset="fashion-mnist")
    assert data.train_images.shape == (30, 28, 28, 1)
    np.testing.assert_array_equal(data.train_images, expected["train/images"])
    np.testing.assert_array_equal(data.test_labels, expected["test/labels"])
    assert data.class_names[0] == "T-shirt/top"


def test_truncated_idx_file_is_reported(tmp_path: Path, write_fashion_mnist) -> None:
    write_fashion_mnist(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-5]))
    with pytest.raises(DatasetFormatError, match="t10k-images-idx3-ubyte.gz: header promises shape"):
        build_dataset_file("fashion-mnist", tmp_path / "f.h5", source_dir=str(tmp_path), download=False)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    build_dataset_file("fashion-mnist", tmp_path / "f.h5", download=False)
    data = load_dataset(tmp_path / "f.h5")
    assert data.train_images.shape == (60000, 28, 28, 1)
    assert data.test_images.shape == (10000, 28, 28, 1)
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert np.bincount(data.train_labels).tolist() == [6000] * 10
    mean, std = normalisation_constants("fashion-mnist", "dataset")
    counts = np.bincount(data.train_images.ravel(), minlength=256)
    values = np.arange(256) / 255.0
    pixel_mean = (counts * values).sum() / counts.sum()
    pixel_std = np.sqrt((counts * (values - pixel_mean) ** 2).sum() / counts.sum())
    assert (pixel_mean, pixel_std) == pytest.approx((mean[0], std[0]), abs=1e-12)
    with h5py.File(tmp_path / "f.h5") as handle:
        assert handle.attrs["source"] == str(DEBIAN_FASHION_MNIST)


# --- lookup order, missing data and downloads -----------------------------------------------------


def test_missing_data_error_lists_every_place_and_how_to_get_it(tmp_path: Path, no_system_data) -> None:
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset_file("fashion-mnist", tmp_path / "out" / "f.h5", download_root=str(tmp_path / "partial"),
                           download=False)
    message = str(caught.value)
    lacking = "lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
    assert f"{tmp_path / 'partial'} (download_root): {lacking}" in message
    assert f"{tmp_path / 'partial' / 'FashionMNIST' / 'raw'} (download_root): does not exist" in message
    assert "download disabled" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert not (tmp_path / "out" / "f.h5").exists()


def test_missing_cifar_error_says_how_to_get_it(tmp_path: Path) -> None:
    expected = r"(?s)dl/cifar-100-python \(download_root\).*`cifar-100-python/`.*download: true"
    with pytest.raises(DatasetNotFoundError, match=expected):
        build_dataset_file("cifar100", tmp_path / "c.h5", download_root=str(tmp_path / "dl"),
                           download=False)


def test_source_dir_wins_over_the_system_folder_and_is_the_only_place_looked_at(tmp_path: Path, write_fashion_mnist,
                                                                                 monkeypatch, caplog) -> None:
    write_fashion_mnist(tmp_path / "mine", per_class=1)
    write_fashion_mnist(tmp_path / "system", per_class=2)
    monkeypatch.setitem(datasets.SYSTEM_DATA_DIRS, "fashion-mnist", (tmp_path / "system",))
    build_dataset_file("fashion-mnist", tmp_path / "f.h5", source_dir=str(tmp_path / "mine"), download=False)
    assert len(load_dataset(tmp_path / "f.h5").train_labels) == 10
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]

    # A source_dir without the data is an error, never a silent fallback to another copy.
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError) as caught:
        build_dataset_file("fashion-mnist", tmp_path / "g.h5", source_dir=str(tmp_path / "partial"), download=True)
    message = str(caught.value)
    assert f"source_dir {tmp_path / 'partial'} does not hold fashion-mnist" in message
    assert f"{tmp_path / 'partial'}: lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte" in message
    assert f"{tmp_path / 'partial' / 'FashionMNIST' / 'raw'}: does not exist" in message
    assert not (tmp_path / "g.h5").exists()


def test_download_goes_into_download_root_and_is_reused(tmp_path: Path, write_cifar, monkeypatch) -> None:
    calls: list[Path] = []

    def fake_download(spec, root: Path) -> None:
        calls.append(root)
        write_cifar(root, spec.name)

    monkeypatch.setattr(datasets, "_download_with_torchvision", fake_download)
    build_dataset_file("cifar10", tmp_path / "data" / "c.h5")
    assert calls == [tmp_path / "data" / "downloads"]
    with h5py.File(tmp_path / "data" / "c.h5") as handle:
        assert handle.attrs["source"].startswith("torchvision download into ")
    build_dataset_file("cifar10", tmp_path / "data" / "d.h5")
    assert len(calls) == 1  # second build finds the earlier download


def test_failed_download_is_reported_with_its_cause(tmp_path: Path, monkeypatch) -> None:
    def offline(spec, root: Path) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(datasets, "_download_with_torchvision", offline)
    with pytest.raises(DatasetNotFoundError, match="download into .* failed: Name or service not known"):
        build_dataset_file("cifar10", tmp_path / "c.h5", download_root=str(tmp_path / "dl"))


# --- the verified dataset file --------------------------------------------------------------------


def test_corrupted_byte_is_detected(tiny_dataset_h5) -> None:
    path = tiny_dataset_h5("cifar10")
    with h5py.File(path) as handle:
        offset = handle["test/images"].id.get_offset()
    with open(path, "r+b") as handle:
        handle.seek(offset + 7)
        byte = handle.read(1)
        handle.seek(offset + 7)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CacheError, match="content checksum mismatch"):
        load_dataset(path)


def test_another_dataset_is_rejected(tiny_dataset_h5) -> None:
    path = tiny_dataset_h5("fashion-mnist")
    assert load_dataset(path).spec.name == "fashion-mnist"
    with pytest.raises(CacheError, match="different configuration"):
        load_dataset(path, expected_dataset="cifar10")


def test_non_dataset_cache_is_rejected(tmp_path: Path) -> None:
    write_h5(tmp_path / "x.h5", {"scores": np.zeros(3)}, fingerprint="abc")
    with pytest.raises(CacheError, match=r"x.h5: not a dataset file"):
        load_dataset(tmp_path / "x.h5")


def test_dataset_file_with_invalid_labels_is_rejected(tmp_path: Path, tiny_dataset_h5) -> None:
    arrays, attrs = read_h5(tiny_dataset_h5("cifar100"))
    arrays["train/labels"][3] = -1
    write_h5(tmp_path / "bad.h5", arrays, {"dataset": "cifar100"},
             fingerprint=dataset_fingerprint("cifar100"))
    with pytest.raises(CacheError, match=r"bad.h5, train split: cifar100 labels span \[-1, 99\]"):
        load_dataset(tmp_path / "bad.h5")
