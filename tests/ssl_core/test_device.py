"""Which convolutions of a backbone meet 1x1 feature maps at a given image size; which devices resolve."""

from __future__ import annotations

import re

import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.device import DeviceUnavailable, one_pixel_convs, resolve_device


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


def test_auto_and_cpu_resolve_to_what_this_machine_has() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("gpu", "'gpu' is not a device: use auto, cpu, cuda or cuda:N"),
        ("meta", "device 'meta' asked for, but Jaga runs on cpu or cuda"),
        ("cuda:64", "asked for, but"),
    ],
)
def test_a_device_this_machine_cannot_use_is_refused_with_the_reason(name: str, reason: str) -> None:
    with pytest.raises(DeviceUnavailable, match=re.escape(reason)):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_names_the_pytorch_build() -> None:
    with pytest.raises(DeviceUnavailable, match=re.escape(f"PyTorch {torch.__version__} (")) as refused:
        resolve_device("cuda")
    assert str(refused.value).endswith("finds no usable CUDA device here")
