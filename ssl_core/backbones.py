"""Backbones: torchvision ResNets with a ``features(x) -> (B, D)`` interface.

Two stems: ``standard`` (7×7 stride-2 conv + max-pool, as on ImageNet) and ``small`` (3×3 stride-1 conv,
no max-pool, as for CIFAR-sized images, He et al. 2016 §4.2). The small stem keeps 4× more spatial
resolution in every stage, which matters below ~64 px and costs ~16× the compute.
"""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from torch import nn

from ssl_core.registry import Registry

Stem = Literal["small", "standard"]

BACKBONES: Registry[type[nn.Module]] = Registry("backbone")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier.

    Args:
        depth: 18, 34 or 50.
        stem: ``"small"`` or ``"standard"`` (see module docstring).

    Shapes:
        ``features(x)``: (B, 3, H, W) float → (B, D) with D = 512 (18, 34) or 2048 (50).
    """

    def __init__(self, depth: int, stem: Stem = "small") -> None:
        super().__init__()
        constructors = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                        50: torchvision.models.resnet50}
        if depth not in constructors:
            raise ValueError(f"depth must be one of {sorted(constructors)}, got {depth}")
        if stem not in ("small", "standard"):
            raise ValueError(f"stem must be 'small' or 'standard', got {stem!r}")
        net = constructors[depth](weights=None)
        if stem == "small":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.stem = stem
        self.dim: int = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _resnet(depth: int) -> type[nn.Module]:
    class _ResNet(ResNetBackbone):
        def __init__(self, stem: Stem = "small") -> None:
            super().__init__(depth, stem)

    _ResNet.__name__ = f"ResNet{depth}"
    return _ResNet


for _depth in (18, 34, 50):
    BACKBONES.register(f"resnet{_depth}")(_resnet(_depth))


def build_backbone(name: str, stem: Stem = "small") -> ResNetBackbone:
    """Build a backbone by registered name, e.g. ``build_backbone("resnet18", "small")``."""
    return BACKBONES.get(name)(stem=stem)  # type: ignore[call-arg,return-value]
