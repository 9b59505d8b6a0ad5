"""Small networks of "users" for the tests of ``model.class``: importable as ``tests.custom_models``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A two-layer convolutional classifier whose constructor names both data-set arguments."""

    def __init__(self, num_classes: int, num_channels: int, width: int = 4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(num_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


class TenWayMLP(nn.Module):
    """A classifier that takes no data-set arguments: fixed to 10 classes of 1×32×32 images."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


NOT_A_MODULE = object()
