"""Barlow Twins as a method: its views and projector."""

from __future__ import annotations

import torch

from ssl_core.backbones import build_backbone
from ssl_core.methods.barlow_twins import BarlowTwins, BarlowTwinsParams
from ssl_core.methods.base import DataInfo


def test_grayscale_images_give_two_colour_views_and_a_projection_of_the_requested_size() -> None:
    torch.manual_seed(0)
    method = BarlowTwins(
        build_backbone("resnet18", "standard", 16),
        BarlowTwinsParams(hidden_dim=32, projector_dim=24),
        24,
        DataInfo(8, 1),
    )
    gray_28px = torch.rand(4, 1, 28, 28)
    v1, v2 = method.views(gray_28px, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (4, 3, 24, 24)
    assert method.projector(method.backbone.features(v1)).shape == (4, 24)
    out = method.training_step(gray_28px, torch.arange(4), torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0
    assert torch.isfinite(out.loss)
