"""The attack stage scores every attack against the untransformed image, and runs the policy-aware attack.

Real components on a tiny Fashion-MNIST file: a policy defence's untrained model is attacked by the
oblivious and the policy-aware Inverting Gradients for a few steps, and the stored arrays are
checked for what the summary and the report rely on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ats.attack.metrics import psnr
from ats.attack.registration import registered_metrics
from ats.attack.stage import attack_defence
from ats.runtime.hdf5 import read_h5
from ats.settings import AttackSettings, TrainingSettings
from ats.training import loop


@pytest.fixture
def untrained(tmp_path_factory, tiny_dataset_h5) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("untrained")
    dataset = tiny_dataset_h5("fashion-mnist", per_class=2)
    loop.snapshot_stage(dataset_h5=dataset, arch="ConvNet8", defence="21", stage="init",
                        settings=TrainingSettings.from_config({"epochs": 1, "batch_size": 8}), seed=3, device="cpu",
                        normalisation="faithful", out_checkpoint=folder / "init.pt", fingerprint="fp")
    return dataset, folder / "init.pt"


def _attack(untrained: tuple[Path, Path], out_h5: Path, attack: str, defence: str = "21") -> tuple[dict, dict]:
    dataset, checkpoint = untrained
    attack_defence(dataset_h5=dataset, checkpoint=checkpoint, model_fingerprint="fp", arch="ConvNet8", defence=defence,
                   stage="init", attack=attack,
                   settings=AttackSettings.from_config({"num_targets": 2, "iterations": 3, "batch_size": 2}),
                   seed=3, device="cpu", normalisation="faithful", out_h5=out_h5, fingerprint="attack")
    return read_h5(out_h5, expected_fingerprint="attack")


@pytest.mark.slow
def test_oblivious_attack_is_scored_against_the_untransformed_image(untrained, tmp_path):
    arrays, attrs = _attack(untrained, tmp_path / "oblivious.h5", "inversed")
    # Op 21 translates by up to 9 pixels on a 32-pixel window, plus the crop's 4.
    assert attrs["max_shift"] == 13 and not attrs["policy_aware"]
    originals = torch.from_numpy(arrays["originals"])
    # Fashion-MNIST's 28-pixel images sit zero-padded by 2 in the 32-pixel frame of the crops.
    assert originals.shape == (2, 1, 32, 32) and float(originals[..., :2, :].abs().max()) == 0.0
    expected = registered_metrics(torch.from_numpy(arrays["reconstructions"]), originals, 13, allow_flip=True)
    np.testing.assert_allclose(arrays["metrics/psnr_original"], expected.psnr.numpy(), rtol=1e-5)
    assert (arrays["metrics/psnr_original"] >= psnr(torch.from_numpy(arrays["reconstructions"]),
                                                    originals).numpy() - 1e-4).all()
    for guess in ("black", "grey", "train_mean", "attack_start"):
        assert arrays[f"chance_original/{guess}/psnr"].shape == (2,)
    assert "learned_draw/signs" not in arrays


@pytest.mark.slow
def test_policy_aware_attack_stores_its_untransformed_image_and_learned_draw(untrained, tmp_path):
    arrays, attrs = _attack(untrained, tmp_path / "aware.h5", "inversed-aware")
    assert attrs["policy_aware"] and attrs["attack"] == "inversed-aware"
    assert arrays["untransformed_reconstructions"].shape == (2, 1, 28, 28)  # x at the source size
    assert arrays["reconstructions"].shape == (2, 1, 32, 32)  # T_θ(x), the estimate of the shared image
    assert arrays["learned_draw/crop_offsets"].shape == (2, 2) and arrays["learned_draw/signs"].shape[0] == 2
    assert np.isfinite(arrays["metrics/psnr_original"]).all() and np.isfinite(arrays["metrics/psnr"]).all()


@pytest.mark.slow
def test_without_a_draw_the_original_is_the_target_and_nothing_is_registered(untrained, tmp_path):
    arrays, attrs = _attack(untrained, tmp_path / "none.h5", "inversed", defence="none")
    assert attrs["max_shift"] == 0
    np.testing.assert_array_equal(arrays["originals"], arrays["ground_truth"])
    np.testing.assert_allclose(arrays["metrics/psnr_original"], arrays["metrics/psnr"], rtol=1e-5)
    assert not arrays["alignment/flipped"].any()
