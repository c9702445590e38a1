"""Helpers shared by the method tests."""

from __future__ import annotations

from typing import Any

import torch

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.train import build_method


def resnet_method(name: str, image_size: int = 32, num_images: int = 8, **params: object) -> Any:
    """Method ``name`` with ``params`` on a ResNet-18 (standard stem) for colour images of ``image_size``."""
    cfg = TrainConfig(method=name, backbone="resnet18", stem="standard", image_size=image_size)
    return build_method(cfg, dict(params), DataInfo(num_images, 3))


def tiny_vit(size: int = 16, patch: int = 4) -> Any:
    """A seeded ViT-Tiny for ``size`` px images."""
    torch.manual_seed(0)
    return build_backbone("vit_tiny", image_size=size, patch_size=patch)
