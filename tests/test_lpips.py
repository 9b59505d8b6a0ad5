"""Optional LPIPS: computed from a local AlexNet file where one exists, skipped with a reason where not.

The real ImageNet weights are 233 MB and cannot be downloaded here, so the wiring is checked with a
file of random AlexNet weights made in the test: LPIPS is then not calibrated, but it must still be
0 for identical images, positive for different ones, NaN for diverged ones, and never download.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from ats.attack import lpips
from ats.report.findings import write_findings_html
from ats.report.summary import summary_rows


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any download attempt fails the test, and torchvision's cache is an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("LPIPS tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)  # torchvision's own import


@pytest.fixture
def random_backbone(tmp_path: Path) -> Path:
    """An AlexNet checkpoint in torchvision's layout (only `features.*` is used), random weights."""
    torch.manual_seed(0)
    features = {name: tensor for name, tensor in torchvision.models.alexnet(weights=None).state_dict().items()
                if name.startswith("features.")}
    path = tmp_path / "alexnet.pth"
    torch.save(features, path)
    return path


def test_without_weights_lpips_is_skipped_with_the_place_it_looked(tmp_path: Path):
    default = tmp_path / "torch-home" / "hub" / "checkpoints" / lpips.ALEXNET_CHECKPOINT
    assert lpips.default_backbone_path() == default
    reason = lpips.lpips_unavailable_reason(None)
    assert str(default) in reason and "nothing is downloaded" in reason
    assert str(tmp_path / "elsewhere.pth") in lpips.lpips_unavailable_reason(tmp_path / "elsewhere.pth")


def test_with_a_local_backbone_lpips_scores_each_image(random_backbone: Path):
    assert lpips.lpips_unavailable_reason(random_backbone) is None
    scorer = lpips.LpipsScorer(random_backbone)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 3, 32, 32))
    references = images.copy()
    references[1] = rng.uniform(0, 1, (3, 32, 32))
    references[2, 0, 0, 0] = np.nan  # a diverged reconstruction
    scores = scorer(images, references)
    assert scores.shape == (4,)
    assert scores[0] == pytest.approx(0.0, abs=1e-6) and scores[3] == pytest.approx(0.0, abs=1e-6)
    assert scores[1] > 0 and math.isnan(scores[2])
    grey = rng.uniform(0, 1, (2, 1, 32, 32))
    assert (scorer(grey, grey * 0.5) > 0).all()
    assert scorer(images[:1], references[:1]) == pytest.approx(scores[:1]), "a score does not depend on the batch"
    with pytest.raises(ValueError, match="equal"):
        scorer(images, references[:2])


def test_lpips_equals_torchmetrics_own_lpips_with_the_same_backbone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The reference: torchmetrics' public LPIPS, whose pretrained AlexNet is here served from memory
    instead of a download, must give the scorer's values with the same (random) backbone."""
    from torchmetrics.functional.image.lpips import (
        learned_perceptual_image_patch_similarity,
    )

    torch.manual_seed(1)
    full = torchvision.models.alexnet(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *args, **kwargs: full)
    torch.save({name: tensor for name, tensor in full.items() if name.startswith("features.")}, tmp_path / "alex.pth")
    rng = np.random.default_rng(2)
    images, references = rng.uniform(0, 1, (2, 3, 3, 32, 32))
    ours = lpips.LpipsScorer(tmp_path / "alex.pth")(images, references)
    reference = [float(learned_perceptual_image_patch_similarity(
        torch.as_tensor(images[i:i + 1], dtype=torch.float32),
        torch.as_tensor(references[i:i + 1], dtype=torch.float32), net_type="alex", normalize=True)) for i in range(3)]
    assert ours == pytest.approx(reference, rel=1e-5)


def test_the_default_backbone_is_torchvisions_cache(random_backbone: Path):
    cached = lpips.default_backbone_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(random_backbone.read_bytes())
    assert lpips.lpips_unavailable_reason(None) is None
    images = np.random.default_rng(1).uniform(0, 1, (2, 3, 32, 32))
    assert lpips.LpipsScorer(None)(images, images[::-1]).min() > 0


def record(with_lpips: bool) -> dict:
    values = np.array([10.0, 12.0, 11.0])
    metrics = {"psnr": values, "ssim": values / 100, "mse": values, "feature_mse": values,
               "diverged": np.array([False, False, True]), "target_indices": np.arange(3), "training_step": 5,
               "defence": "none", "stage": "final", "attack": "inversed"}
    if with_lpips:
        metrics["lpips"] = np.array([0.2, 0.4, np.nan])
    return metrics


def test_summary_and_findings_with_and_without_lpips(tmp_path: Path):
    with_lpips = summary_rows([record(True)], {"none": 0.9}, seed=0)
    assert with_lpips[0]["lpips_mean"] == pytest.approx(0.3)  # the diverged image is left out
    write_findings_html(tmp_path / "with.html", with_lpips)
    text = (tmp_path / "with.html").read_text()
    assert "LPIPS 0.300" in text and "LPIPS was skipped" not in text

    without = summary_rows([record(False)], {"none": 0.9}, seed=0)
    assert math.isnan(without[0]["lpips_mean"])
    write_findings_html(tmp_path / "without.html", without, lpips_note=lpips.lpips_unavailable_reason(None))
    text = (tmp_path / "without.html").read_text()
    assert "LPIPS was skipped:" in text and lpips.ALEXNET_CHECKPOINT in text
