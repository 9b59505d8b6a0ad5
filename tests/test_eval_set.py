"""The S_pri image list, the S_acc windows and the cached evaluation-set file."""

from __future__ import annotations

import numpy as np
import pytest

from ats.case.datasets import load_dataset
from ats.runtime.hdf5 import CacheError
from ats.search.eval_set import (
    accuracy_windows,
    build_eval_set,
    load_eval_set,
    privacy_indices,
)


def test_per_class_takes_the_first_images_of_each_class_in_class_order() -> None:
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    assert privacy_indices(labels, 3, num_samples=2).tolist() == [1, 3, 2, 5, 0, 4]
    assert privacy_indices(labels, 3, num_samples=1).dtype == np.int64


def test_per_class_names_the_class_with_too_few_images() -> None:
    labels = np.array([0, 0, 1, 2, 2, 1, 0])
    with pytest.raises(ValueError, match="class 1 has 2 test images.*num_samples=3"):
        privacy_indices(labels, 3, num_samples=3)
    with pytest.raises(ValueError, match="class 3 has 0"):
        privacy_indices(labels, 4, num_samples=1)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        privacy_indices(np.array([0, 5]), 3)


def test_cvpr_takes_every_fifth_image_from_200() -> None:
    indices = privacy_indices(np.zeros(1000, dtype=np.int64), 10, mode="cvpr")
    assert indices.tolist() == [200 + 5 * i for i in range(100)]
    with pytest.raises(ValueError, match="up to 695.*only 600"):
        privacy_indices(np.zeros(600, dtype=np.int64), 10, mode="cvpr")
    with pytest.raises(ValueError, match="per_class, cvpr"):
        privacy_indices(np.zeros(10, dtype=np.int64), 1, mode="random")


def test_accuracy_windows_keep_the_first_image_of_each_label() -> None:
    labels = np.array([9, 9, 0, 1, 0, 2, 2, 3, 1, 4, 4, 4])
    windows = accuracy_windows(labels, runs=2, start=2, window=5)
    assert [w.tolist() for w in windows] == [[2, 3, 5], [7, 8, 9]]
    for window in windows:
        assert len(set(labels[window])) == len(window)


def test_accuracy_windows_refuse_a_test_split_that_is_too_small() -> None:
    with pytest.raises(ValueError, match=r"indices 200\.\.1199.*only 1000"):
        accuracy_windows(np.zeros(1000, dtype=np.int64))
    with pytest.raises(ValueError, match="window"):
        accuracy_windows(np.zeros(10, dtype=np.int64), window=0)


def test_the_cached_file_holds_the_chosen_images(tiny_dataset_h5, tmp_path) -> None:
    dataset_path = tiny_dataset_h5("fashion-mnist", per_class=3)
    out = tmp_path / "eval.h5"
    build_eval_set(dataset_path, out, mode="per_class", num_samples=2, runs=2, start=4, window=10,
                   fingerprint="abc")
    data = load_dataset(dataset_path)
    eval_set = load_eval_set(out, expected_fingerprint="abc")
    expected = privacy_indices(data.test_labels, 10, 2)
    assert eval_set.privacy_indices.tolist() == expected.tolist()
    assert np.array_equal(eval_set.privacy_images, data.test_images[expected])
    assert np.array_equal(eval_set.privacy_labels, data.test_labels[expected])
    windows = accuracy_windows(data.test_labels, 2, 4, 10)
    assert eval_set.accuracy_indices.tolist() == np.concatenate(windows).tolist()
    assert np.array_equal(eval_set.accuracy_images, data.test_images[eval_set.accuracy_indices])
    assert [batch.tolist() for batch in eval_set.accuracy_batches()] == [
        list(range(len(windows[0]))), list(range(len(windows[0]), len(windows[0]) + len(windows[1])))]
    assert eval_set.attrs["dataset"] == "fashion-mnist" and eval_set.runs == 2
    with pytest.raises(CacheError, match="different configuration"):
        load_eval_set(out, expected_fingerprint="other")
    with pytest.raises(ValueError, match="only 30"):
        build_eval_set(dataset_path, tmp_path / "too-big.h5", mode="per_class", num_samples=1, runs=10,
                       start=200, window=100, fingerprint="abc")
