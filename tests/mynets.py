"""A user's own model for the tests (`model.name=tests.mynets:small_cnn`): a factory outside the registry, with a
BatchNorm, an in-place ReLU, a residual `+=` and a classifier under a name of its own (`out`), no `features`."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(width)) for _ in range(depth))
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            y = block(x)
            y += x  # in place on the block's BatchNorm output
            x = self.act(y)
        return self.out(x.mean((2, 3)))


def small_cnn(num_classes: int, in_channels: int, image_size: int, width: int = 0, depth: int = 1) -> nn.Module:
    """The documented keyword arguments it uses (no `activation`: the toolkit passes only what it takes)."""
    return SmallCNN(num_classes, in_channels, width or 8, depth)


def not_a_model(num_classes: int, in_channels: int) -> str:
    return "nope"
