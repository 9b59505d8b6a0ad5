"""LPIPS (Zhang et al., CVPR 2018), the perceptual distance breaching reports, where its weights exist.

LPIPS compares images in the feature space of an ImageNet-trained AlexNet, through linear layers
calibrated on human judgements. The calibrated layers ship with ``torchmetrics``; the AlexNet
backbone (torchvision's ImageNet checkpoint, 233 MB) does not, and compute nodes are often offline.
So LPIPS is optional: :func:`lpips_unavailable_reason` says, without touching the network, why it
cannot be computed, and :class:`LpipsScorer` loads the backbone only from a local file, never by
download. Without the file the report leaves LPIPS out and says so.

The default file is the one torchvision itself caches (``$TORCH_HOME/hub/checkpoints``), so a
machine that ever loaded the pretrained AlexNet, for instance through breaching or ``lpips``, has it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"
"""File name of torchvision's ImageNet AlexNet checkpoint (``AlexNet_Weights.IMAGENET1K_V1``)."""

PathLike = str | os.PathLike


def default_backbone_path() -> Path:
    """Where torchvision caches the AlexNet checkpoint on this machine."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_CHECKPOINT


def backbone_path(configured: PathLike | None) -> Path:
    """The backbone file to use: ``configured`` (the ``report.lpips_backbone`` key) or the default."""
    return Path(configured) if configured else default_backbone_path()


def lpips_unavailable_reason(configured: PathLike | None = None) -> str | None:
    """Why LPIPS cannot be computed here, or ``None`` when it can. Reads no file, downloads nothing."""
    if importlib.util.find_spec("torchmetrics") is None:
        return "the torchmetrics package, which holds LPIPS's calibrated layers, is not installed"
    path = backbone_path(configured)
    if not path.is_file():
        return (f"its AlexNet weights are not on this machine (looked for {path}; put torchvision's "
                f"{ALEXNET_CHECKPOINT} there or name it in report.lpips_backbone; nothing is downloaded)")
    return None


class LpipsScorer:
    """Per-image LPIPS (AlexNet variant) between image batches in [0, 1]; 0 means identical."""

    def __init__(self, configured: PathLike | None = None, device: str = "cpu") -> None:
        from torchmetrics.functional.image.lpips import _LPIPS

        # pnet_rand: build AlexNet without torchvision's weights (which would be downloaded);
        # pretrained: load the calibrated layers shipped with torchmetrics.
        self.model = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval().to(device)
        checkpoint = torch.load(backbone_path(configured), map_location=device, weights_only=True)
        # torchmetrics splits AlexNet's `features` into slices that keep the layers' indices:
        # `net.slice2.3.weight` is torchvision's `features.3.weight`.
        backbone = self.model.net
        backbone.load_state_dict({name: checkpoint[f"features.{name.split('.', 1)[1]}"]
                                  for name in backbone.state_dict()})
        self.device = device

    @torch.no_grad()
    def __call__(self, images: np.ndarray, references: np.ndarray) -> np.ndarray:
        """LPIPS of each ``N×C×H×W`` image (C = 1 or 3, values in [0, 1]) to its reference.

        Grey images are repeated to three channels. An image with non-finite pixels (a diverged
        attack) scores NaN.
        """
        first = torch.as_tensor(np.asarray(images, dtype=np.float32), device=self.device)
        second = torch.as_tensor(np.asarray(references, dtype=np.float32), device=self.device)
        if first.shape != second.shape or first.ndim != 4 or first.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs equal N×C×H×W batches with C = 1 or 3, got {tuple(first.shape)} "
                             f"and {tuple(second.shape)}")
        finite = torch.isfinite(first).flatten(1).all(1) & torch.isfinite(second).flatten(1).all(1)
        first, second = (torch.nan_to_num(batch).clamp(0, 1).expand(-1, 3, -1, -1) for batch in (first, second))
        scores = self.model(first, second, normalize=True).flatten().double()
        return torch.where(finite, scores, torch.nan).cpu().numpy()
