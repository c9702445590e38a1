"""Backbones: ViT features and tokens, ResNet memory format, patch sizes and refused arguments."""

from __future__ import annotations

import pytest
import torch

from ssl_core.backbones import (
    MobileBackbone,
    ResNetBackbone,
    ViTBackbone,
    backbone_cost,
    backbone_family,
    build_backbone,
    default_patch_size,
)
from ssl_core.ema import frozen_copy
from ssl_core.finetune import stages


@pytest.mark.parametrize(("name", "dim"), [("vit_tiny", 192), ("vit_small", 384)])
def test_vit_features_tokens_and_other_input_sizes(name: str, dim: int) -> None:
    vit = build_backbone(name, image_size=16, patch_size=4).eval()
    assert isinstance(vit, ViTBackbone)
    assert vit.dim == dim
    assert backbone_family(name) == "vit"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert vit.features(x).shape == (2, dim)
        tokens = vit.patch_tokens(x)
        assert tokens.shape == (2, 16, dim)
        # encode(all patch tokens) is the full forward pass: its class token is the features.
        torch.testing.assert_close(vit.encode(tokens)[:, 0], vit.features(x))
        assert vit.encode(tokens[:, :5]).shape == (2, 6, dim)
        assert vit.features(torch.randn(2, 3, 8, 8)).shape == (2, dim)  # position embeddings interpolated


def test_resnet_keeps_its_weights_in_channels_last_and_computes_the_same_features() -> None:
    resnet = build_backbone("resnet18", "standard").eval()
    assert resnet.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert frozen_copy(resnet).net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = frozen_copy(resnet.net).to(memory_format=torch.contiguous_format)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(resnet.features(x), plain(x), rtol=1e-4, atol=1e-5)


def test_vit_refuses_a_patch_size_that_does_not_divide_the_image() -> None:
    with pytest.raises(ValueError, match="patch_size 5 must divide image_size 16"):
        build_backbone("vit_tiny", image_size=16, patch_size=5)


@pytest.mark.parametrize(("size", "patch"), [(32, 4), (64, 8), (224, 16), (28, 2), (16, 2), (96, 8)])
def test_default_patch_size_divides_the_image(size: int, patch: int) -> None:
    assert default_patch_size(size) == patch
    assert size % patch == 0


@pytest.mark.parametrize(("stem", "size"), [("standard", 16), ("small", 8)])
def test_resnet_features_are_512_wide_for_each_stem(stem: str, size: int) -> None:
    backbone = build_backbone("resnet18", stem).eval()
    assert isinstance(backbone, ResNetBackbone)
    assert backbone.dim == 512
    with torch.no_grad():
        assert backbone.features(torch.randn(2, 3, size, size)).shape == (2, 512)


@pytest.mark.parametrize(("depth", "stem", "message"), [(20, "small", "depth"), (18, "large", "stem")])
def test_backbone_refuses_bad_arguments(depth: int, stem: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNetBackbone(depth, stem)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "dim", "blocks"),
    [("mobilenet_v3_small", 576, 12), ("mobilenet_v3_large", 960, 16), ("efficientnet_b0", 1280, 8)],
)
def test_mobile_backbones_pool_their_features_and_list_their_blocks(name: str, dim: int, blocks: int) -> None:
    backbone = build_backbone(name, "standard").eval()
    assert isinstance(backbone, MobileBackbone)
    assert backbone_family(name) == "mobile"
    assert backbone.dim == dim
    assert len(stages(backbone)) == blocks
    with torch.no_grad():
        assert backbone.features(torch.rand(2, 3, 32, 32)).shape == (2, dim)


def test_mobile_small_stem_keeps_four_times_the_feature_map() -> None:
    """At stride 1 the first convolution leaves a 2×2 map where the standard stem's stride 32 leaves 1×1: four
    times the FLOPs, the same weights."""
    small, standard = (
        backbone_cost("mobilenet_v3_small", "small", 32),
        backbone_cost("mobilenet_v3_small", "standard", 32),
    )
    assert small.parameters == standard.parameters
    assert 3 < small.flops / standard.flops < 4.5
    net = build_backbone("mobilenet_v3_small", "small").net
    assert isinstance(net, torch.nn.Sequential)
    with torch.no_grad():
        assert net(torch.rand(1, 3, 32, 32)).shape[-2:] == (2, 2)
