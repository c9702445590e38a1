"""Heads the methods share: projection MLPs built from one configurable MLP, and the decoder of the pretext
tasks that paint pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """An MLP given as ``(in, out, batch_norm, relu)`` per layer.

    Example: ``ProjectionHead([(512, 2048, True, True), (2048, 128, False, False)])``.
    Shapes: (B, in of the first layer) → (B, out of the last layer).
    """

    def __init__(self, layers: list[tuple[int, int, bool, bool]]) -> None:
        modules: list[nn.Module] = []
        for d_in, d_out, batch_norm, relu in layers:
            modules.append(nn.Linear(d_in, d_out, bias=not batch_norm))
            if batch_norm:
                modules.append(nn.BatchNorm1d(d_out))
            if relu:
                modules.append(nn.ReLU(inplace=True))
        super().__init__(*modules)


class SimCLRProjectionHead(ProjectionHead):
    """SimCLR's head (Chen et al. 2020; v2 uses more layers): Linear-BN-ReLU then Linear."""

    def __init__(self, input_dim: int = 512, hidden_dim: int = 2048, output_dim: int = 128) -> None:
        super().__init__([(input_dim, hidden_dim, True, True), (hidden_dim, output_dim, False, False)])


class ThreeLayerProjector(ProjectionHead):
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear: Barlow Twins' projector and VICReg's expander."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__([(input_dim, hidden_dim, True, True), (hidden_dim, hidden_dim, True, True),
                          (hidden_dim, output_dim, False, False)])


class UpConvDecoder(nn.Module):
    """Pooled features → a small image, for pretext tasks that paint pixels (inpainting, colorization).

    A linear layer maps the features to a ``width`` × s0 × s0 map (s0 = min(4, ``size``)); blocks of
    nearest ×2 upsampling, 3×3 conv, BatchNorm and ReLU (channels halved per block, at least 16) grow it
    until it covers ``size``; it is resized (bilinear) to ``size`` exactly if the doublings overshoot, and a
    3×3 conv gives ``out_channels`` without activation.

    Shapes: (B, ``in_dim``) → (B, ``out_channels``, ``size``, ``size``).
    Example: ``UpConvDecoder(512, 3, 32)(torch.randn(2, 512)).shape == (2, 3, 32, 32)``.
    """

    def __init__(self, in_dim: int, out_channels: int, size: int, width: int = 256) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.size = size
        self.start = min(4, size)
        self.width = width
        self.fc = nn.Linear(in_dim, width * self.start * self.start, bias=False)
        self.fc_norm = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        channels, side = width, self.start
        while side < size:
            out = max(16, channels // 2)
            blocks += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels, side = out, side * 2
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.width, self.start, self.start)
        x = self.blocks(F.relu(self.fc_norm(x)))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.out(x)
