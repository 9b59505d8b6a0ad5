"""The shard-scoring stage end to end on a tiny Fashion-MNIST file and a ConvNet8 checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ats.case.models import build_model
from ats.policies import PolicyError
from ats.runtime.checkpoints import save_checkpoint
from ats.runtime.hdf5 import CacheError, read_h5
from ats.runtime.seeding import derive_seed
from ats.search.eval_set import build_eval_set
from ats.search.scoring import read_scores, repeat_seed, score_shard
from ats.settings import ScoringSettings

ARCH = "ConvNet8"
BINS = 3
RUNS = 2


@pytest.fixture(scope="module")
def search_inputs(tmp_path_factory):
    """(dataset file, evaluation set, checkpoint, folder) shared by the tests of this module."""
    from ats.case.datasets import build_dataset_file
    from tests.conftest import write_fashion_mnist_folder

    folder = tmp_path_factory.mktemp("scoring")
    write_fashion_mnist_folder(folder, 3)
    dataset = folder / "fashion-mnist.h5"
    build_dataset_file("fashion-mnist", dataset, source_dir=str(folder), download=False)
    eval_set = folder / "eval.h5"
    build_eval_set(dataset, eval_set, mode="per_class", num_samples=1, runs=RUNS, start=0, window=12,
                   fingerprint="eval")
    torch.manual_seed(99)
    checkpoint = folder / "model.pt"
    save_checkpoint(checkpoint, build_model(ARCH, 10, 1).state_dict(), fingerprint="pretrain")
    return dataset, eval_set, checkpoint, folder


def _score(search_inputs, policies, name, checkpoint=None, **overrides):
    dataset, eval_set, default_checkpoint, folder = search_inputs
    out = folder / f"{name}.h5"
    arguments = {"dataset_h5": dataset, "eval_set_h5": eval_set,
                 "search_checkpoint": checkpoint or default_checkpoint, "arch": ARCH, "policies": policies,
                 "out_h5": out, "seed": 7, "device": "cpu", "normalisation": "faithful",
                 "settings": ScoringSettings.from_config({"privacy": {"bins": BINS}}), "fingerprint": "shard"}
    score_shard(**{**arguments, **overrides})
    return out


POLICIES = ["", "3-1-7", "14-48-48+42-28-42"]


@pytest.fixture(scope="module")
def shard(search_inputs):
    return _score(search_inputs, POLICIES, "three")


@pytest.mark.slow
def test_a_shard_stores_every_score_of_every_policy(shard) -> None:
    arrays, attrs = read_h5(shard, expected_fingerprint="shard")
    assert list(arrays["policies"]) == POLICIES and list(arrays["status"]) == ["ok"] * 3
    assert arrays["privacy/classes"].tolist() == list(range(10))
    assert attrs["bins"] == BINS and attrs["arch"] == ARCH and len(attrs["seconds"]) == 3
    assert int(arrays["repeat"]) == 0 and attrs["draw_seed"] == attrs["seed"] == 7  # repeat 0: the master seed
    scores = read_scores([shard])
    for entry in scores:
        assert entry.spri.shape == (10,) and entry.curves.shape == (10, BINS + 1)
        assert entry.sacc.shape == (RUNS,) and entry.spri_class_means.shape == (10,)
        assert np.allclose(entry.curves[:, -1], 1, atol=1e-5)
        assert np.all(np.abs(entry.spri) <= 1) and np.all(entry.sacc < 0)
    assert len({entry.spri_mean for entry in scores}) == 3  # the transforms change the score


@pytest.mark.slow
def test_scores_do_not_depend_on_the_shard_a_policy_is_in(search_inputs, shard) -> None:
    together = {entry.policy: entry for entry in read_scores([shard])}
    alone = read_scores([_score(search_inputs, ["3-1-7"], "alone")])[0]
    assert np.array_equal(alone.spri, together["3-1-7"].spri)
    assert np.array_equal(alone.curves, together["3-1-7"].curves)
    assert np.array_equal(alone.sacc, together["3-1-7"].sacc)


@pytest.mark.slow
def test_non_finite_scores_are_stored_as_nan_without_failing(search_inputs) -> None:
    _, _, _, folder = search_inputs
    state = build_model(ARCH, 10, 1).state_dict()
    state["model.linear.weight"][0, 0] = float("nan")
    broken = folder / "broken.pt"
    save_checkpoint(broken, state, fingerprint="pretrain")
    [entry] = read_scores([_score(search_inputs, ["3"], "nan", checkpoint=broken)])
    assert entry.status == "nonfinite" and np.isnan(entry.spri).all() and math.isnan(entry.spri_mean)
    assert np.isfinite(entry.sacc).all()  # S_acc uses the untrained model, which is fine


def test_bad_inputs_fail_before_any_work(search_inputs, tiny_dataset_h5) -> None:
    with pytest.raises(PolicyError, match="3--1"):
        _score(search_inputs, ["3", "3--1"], "bad-policy")
    with pytest.raises(CacheError, match="evaluation images"):
        _score(search_inputs, ["3"], "other-data", dataset_h5=tiny_dataset_h5("cifar10", per_class=2))


def test_repeat_seeds_are_deterministic_independent_and_the_master_seed_for_repeat_zero() -> None:
    assert repeat_seed(7, 0) == 7
    assert repeat_seed(7, 1) == repeat_seed(7, 1) == derive_seed(7, "repeat", 1)
    seeds = [repeat_seed(7, repeat) for repeat in range(100)]
    assert len(set(seeds)) == 100  # every repeat draws anew
    assert repeat_seed(8, 1) != repeat_seed(7, 1) and repeat_seed(8, 1) not in seeds  # and follows the master seed
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="repeat"):
            repeat_seed(7, bad)


@pytest.mark.slow
def test_repeat_zero_is_the_single_scoring_and_later_repeats_redraw_only_the_draws_and_noise(search_inputs,
                                                                                            shard) -> None:
    single = read_scores([shard])  # scored without naming a repeat, as before repeats existed
    fields = ("spri", "curves", "spri_class_means", "sacc")
    for again, before in zip(read_scores([_score(search_inputs, POLICIES, "repeat-0", repeat=0)]), single, strict=True):
        assert again.repeat == before.repeat == 0
        assert all(np.array_equal(getattr(again, field), getattr(before, field)) for field in fields)
    second = read_scores([_score(search_inputs, POLICIES, "repeat-1", repeat=1)])
    second_again = read_scores([_score(search_inputs, POLICIES, "repeat-1-again", repeat=1)])
    assert read_h5(_score(search_inputs, ["3"], "repeat-2", repeat=2))[1]["draw_seed"] == repeat_seed(7, 2)
    for entry, again, first in zip(second, second_again, single, strict=True):
        assert entry.repeat == 1
        assert all(np.array_equal(getattr(entry, field), getattr(again, field)) for field in fields)
        assert not np.array_equal(entry.spri, first.spri), entry.policy  # new noise (and draws) for every image
    by_policy = {entry.policy: (entry, first) for entry, first in zip(second, single)}
    assert not np.array_equal(*(scores.sacc for scores in by_policy["3-1-7"]))  # new crop, flip and policy draws
    # The empty policy draws nothing for S_acc: its equal scores show that the untrained model and the
    # images are those of repeat 0.
    assert np.array_equal(*(scores.sacc for scores in by_policy[""]))
