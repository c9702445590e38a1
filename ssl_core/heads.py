"""The heads of every method, built from named blocks: projection and prediction MLPs, classifiers, DINO's
head, and the decoder of the pretext tasks that paint pixels."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["relu", "gelu"]


class LinearBlock(nn.Sequential):
    """Linear, then batch norm and an activation if asked: one layer of an MLP head. The linear layer has a bias
    unless batch norm follows it (``bias`` overrides). Shapes: (B, in_dim) → (B, out_dim)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        batch_norm: bool = False,
        activation: Activation | None = None,
        bias: bool | None = None,
    ) -> None:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=not batch_norm if bias is None else bias)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(out_dim))
        if activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif activation == "gelu":
            layers.append(nn.GELU())
        super().__init__(*layers)


class MLPHead(nn.Sequential):
    """Linear-BN-ReLU to ``hidden_dim``, then Linear to ``output_dim`` (SimCLR's and BYOL's projector, BYOL's
    predictor, SwAV's projector, the pretext tasks' classifiers). ``hidden_dim`` 0: one linear layer.
    ``batch_norm=False``: Linear-ReLU-Linear (MoCo v2's head). Shapes: (B, input_dim) → (B, output_dim)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, batch_norm: bool = True) -> None:
        if not hidden_dim:
            super().__init__(LinearBlock(input_dim, output_dim))
            return
        super().__init__(
            LinearBlock(input_dim, hidden_dim, batch_norm=batch_norm, activation="relu"),
            LinearBlock(hidden_dim, output_dim),
        )


class ThreeLayerProjector(nn.Sequential):
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear: Barlow Twins' projector and VICReg's expander.
    Shapes: (B, input_dim) → (B, output_dim)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__(
            LinearBlock(input_dim, hidden_dim, batch_norm=True, activation="relu"),
            LinearBlock(hidden_dim, hidden_dim, batch_norm=True, activation="relu"),
            LinearBlock(hidden_dim, output_dim),
        )


class SimSiamProjector(nn.Sequential):
    """Linear-BN-ReLU twice, then Linear and a batch norm without affine parameters (Chen & He 2021).
    Shapes: (B, input_dim) → (B, dim)."""

    def __init__(self, input_dim: int, dim: int) -> None:
        super().__init__(ThreeLayerProjector(input_dim, dim, dim), nn.BatchNorm1d(dim, affine=False))


class NormalizedLinear(nn.Module):
    """A bias-free linear layer whose rows (prototypes) have unit norm, times a gain: weight normalisation
    (Salimans & Kingma 2016), DINO's last layer. The gain is fixed to 1 unless ``learn_gain``.
    ``forward(x, frozen=True)`` uses detached weights, so the layer gets no gradient.
    Shapes: (B, in_dim) → (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, learn_gain: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(out_dim, 1)) if learn_gain else None

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        weight = F.normalize(self.weight, dim=1)
        if self.gain is not None:
            weight = weight * self.gain
        return F.linear(x, weight.detach() if frozen else weight)


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021, §3.1): Linear-GELU twice (batch norm before each GELU if asked), Linear
    to a bottleneck, L2 normalisation, ``NormalizedLinear`` prototypes. Shapes: (B, input_dim) → (B, output_dim)."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        output_dim: int,
        batch_norm: bool = False,
        learn_gain: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            LinearBlock(input_dim, hidden_dim, batch_norm=batch_norm, activation="gelu", bias=True),
            LinearBlock(hidden_dim, hidden_dim, batch_norm=batch_norm, activation="gelu", bias=True),
            LinearBlock(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, output_dim, learn_gain)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(z, frozen=freeze_last_layer)


class UpsampleConvBlock(nn.Sequential):
    """Nearest ×2 upsampling, 3×3 conv, batch norm, ReLU. Shapes: (B, in, s, s) → (B, out, 2s, 2s)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpConvDecoder(nn.Module):
    """Pooled features → a small image (inpainting, colorization): a linear layer to ``width`` × min(4, size)²,
    upsampling blocks halving the channels (≥ 16) until it covers ``size``, a resize if they overshoot, a 3×3
    conv. Shapes: (B, ``in_dim``) → (B, ``out_channels``, ``size``, ``size``)."""

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
            blocks.append(UpsampleConvBlock(channels, out))
            channels, side = out, side * 2
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.width, self.start, self.start)
        x = self.blocks(F.relu(self.fc_norm(x)))
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.out(x)
