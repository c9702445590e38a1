"""Which convolutions of a backbone meet 1x1 feature maps at a given image size."""

from __future__ import annotations

import pytest

from ssl_core.backbones import build_backbone
from ssl_core.device import one_pixel_convs


@pytest.mark.parametrize(
    ("stem", "image_size", "expected"),
    [
        ("standard", 16, "net.layer4.0.conv1"),
        ("standard", 32, None),
        ("small", 4, "net.layer4.0.conv1"),
        ("small", 8, None),
    ],
)
def test_one_pixel_convs_finds_convolutions_on_1x1_maps(stem: str, image_size: int, expected: str | None) -> None:
    backbone = build_backbone("resnet18", stem)
    found = one_pixel_convs(backbone, image_size)
    assert found == ([expected] if expected else [])
    assert backbone.training  # the probe leaves the mode as it was
