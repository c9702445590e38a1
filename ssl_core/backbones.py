"""Backbones with one small interface: ``features(x) -> (B, D)``, ``dim`` and ``family``: torchvision ResNets
with a ``standard`` (7×7/2 + max-pool) or ``small`` (3×3/1, He et al. 2016 §4.2) stem, torchvision's mobile
networks (MobileNetV3, EfficientNet-B0) for small, fast students, and timm ViTs (Dosovitskiy et al. 2021) at the
DeiT tiny/small sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal, cast

import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ssl_core.registry import Registry

Stem = Literal["small", "standard"]
Family = Literal["resnet", "mobile", "vit"]
#: Convolutional families: a stem to choose, batch norm, strided convolutions.
CONV_FAMILIES: tuple[Family, ...] = ("resnet", "mobile")


class Backbone(nn.Module):
    """An encoder: ``features`` maps (B, 3, H, W) float images to (B, ``dim``) features."""

    family: ClassVar[Family]
    dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, in ``channels_last`` (oneDNN's fast bf16 convolutions).
    Args: depth 18, 34 or 50; stem ``"small"`` or ``"standard"``.
    Shapes: ``features(x)``: (B, 3, H, W) → (B, D), D = 512 (18, 34) or 2048 (50)."""

    family = "resnet"

    def __init__(self, depth: int, stem: Stem = "small") -> None:
        super().__init__()
        constructors = {
            18: torchvision.models.resnet18,
            34: torchvision.models.resnet34,
            50: torchvision.models.resnet50,
        }
        if depth not in constructors:
            raise ValueError(f"depth must be one of {sorted(constructors)}, got {depth}")
        if stem not in ("small", "standard"):
            raise ValueError(f"stem must be 'small' or 'standard', got {stem!r}")
        net = constructors[depth](weights=None)
        if stem == "small":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.stem = stem
        self.dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last))


class MobileBackbone(Backbone):
    """A torchvision MobileNetV3 or EfficientNet without its classifier: the convolutional features, global
    average pooled. ``stem="small"`` makes the first convolution stride 1 (total stride 16, not 32), as the
    ResNets' small stem keeps small images' feature maps larger than 1×1.
    Shapes: ``features(x)``: (B, 3, H, W) → (B, D), D = 576 (small), 960 (large), 1280 (EfficientNet-B0)."""

    family = "mobile"
    CONSTRUCTORS: ClassVar[dict[str, Callable[..., nn.Module]]] = {
        "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
        "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
        "efficientnet_b0": torchvision.models.efficientnet_b0,
    }

    def __init__(self, name: str, stem: Stem = "small") -> None:
        super().__init__()
        if name not in self.CONSTRUCTORS:
            raise ValueError(f"name must be one of {sorted(self.CONSTRUCTORS)}, got {name!r}")
        if stem not in ("small", "standard"):
            raise ValueError(f"stem must be 'small' or 'standard', got {stem!r}")
        features = cast(nn.Sequential, self.CONSTRUCTORS[name](weights=None).features)
        convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
        if stem == "small":
            convs[0].stride = (1, 1)
        self.stem = stem
        self.dim = convs[-1].out_channels
        self.net: nn.Sequential = features.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))


class ViTBackbone(Backbone):
    """A timm Vision Transformer; features are the final-normed class token; ``patch_size`` must divide
    ``image_size``. Shapes: ``features(x)``: (B, 3, H, W) → (B, embed_dim); ``patch_tokens(x)``: → (B, N,
    embed_dim), position embeddings added, no class token; ``encode(tokens)``: (B, n, d) → (B, 1 + n, d)."""

    family = "vit"

    def __init__(self, embed_dim: int, depth: int, num_heads: int, image_size: int, patch_size: int) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide image_size {image_size}")
        self.net = VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_classes=0,
            dynamic_img_size=True,
        )
        self.dim = embed_dim
        self.patch_size = patch_size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.net._pos_embed(self.net.patch_embed(x))
        return tokens[:, self.net.num_prefix_tokens :]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.net.cls_token is not None
        assert self.net.pos_embed is not None
        cls = (self.net.cls_token + self.net.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        x = self.net.norm_pre(x)
        x = self.net.blocks(x)
        return self.net.norm(x)


@dataclass(frozen=True)
class BackboneCost:
    parameters: int
    flops: int  # one image's forward pass
    dim: int


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry holds: the family (methods state which they support) and a constructor."""

    family: Family
    build: Callable[[Stem, int, int], Backbone]
    description: str


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def _resnet(depth: int) -> Callable[[Stem, int, int], Backbone]:
    return lambda stem, size, patch: ResNetBackbone(depth, stem)


def _mobile(name: str) -> Callable[[Stem, int, int], Backbone]:
    return lambda stem, size, patch: MobileBackbone(name, stem)


def _vit(dim: int, depth: int, heads: int) -> Callable[[Stem, int, int], Backbone]:
    return lambda stem, size, patch: ViTBackbone(dim, depth, heads, size, patch)


for _depth, _dim in ((18, 512), (34, 512), (50, 2048)):
    BACKBONES.register(f"resnet{_depth}")(
        BackboneSpec(
            "resnet", _resnet(_depth), f"torchvision ResNet-{_depth}, {_dim}-d features; stem 'standard' or 'small'"
        )
    )

for _name, _what in {
    "mobilenet_v3_small": "torchvision MobileNetV3-Small, 576-d features",
    "mobilenet_v3_large": "torchvision MobileNetV3-Large, 960-d features",
    "efficientnet_b0": "torchvision EfficientNet-B0, 1280-d features",
}.items():
    BACKBONES.register(_name)(
        BackboneSpec(
            "mobile",
            _mobile(_name),
            f"{_what}; stem 'standard' or 'small' (first convolution at stride 1)",
        )
    )

for _name, (_dim, _depth, _heads) in {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}.items():
    BACKBONES.register(_name)(
        BackboneSpec(
            "vit",
            _vit(_dim, _depth, _heads),
            f"timm ViT, {_dim}-d, {_depth} blocks, {_heads} heads; patch_size must divide image_size",
        )
    )


def default_patch_size(image_size: int) -> int:
    """The largest of 16, 8, 4, 2 that divides ``image_size`` and leaves at least 8×8 patches (2 if none):
    4 at 32 px, 8 at 64 px, 16 from 128 px."""
    for p in (16, 8, 4, 2):
        if image_size % p == 0 and image_size // p >= 8:
            return p
    return 2


def build_backbone(name: str, stem: Stem = "small", image_size: int = 32, patch_size: int | None = None) -> Backbone:
    """Build a backbone by registered name, e.g. ``build_backbone("resnet18", "small")`` or
    ``build_backbone("vit_tiny", image_size=32, patch_size=4)``. ``stem`` applies to ResNets, ``image_size``
    and ``patch_size`` (default: ``default_patch_size``) to ViTs."""
    return BACKBONES.get(name).build(stem, image_size, patch_size or default_patch_size(image_size))


@lru_cache(maxsize=256)
def backbone_cost(
    name: str, stem: Stem = "standard", image_size: int = 32, patch_size: int | None = None
) -> BackboneCost:
    """Parameters and the FLOPs of one image's forward pass (torch's FLOP counter: 2 per multiply-add) of a
    backbone as ``build_backbone`` makes it, counted on the meta device: no weights, no compute. Raises
    ``ValueError`` where it cannot be built at that size (a ViT whose patch size does not divide it)."""
    with torch.device("meta"):
        backbone = build_backbone(name, stem, image_size, patch_size).eval()  # batch norm takes one image
        image = torch.empty(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        backbone.features(image)
    return BackboneCost(sum(p.numel() for p in backbone.parameters()), int(counter.get_total_flops()), backbone.dim)


def backbone_family(name: str) -> Family:
    return BACKBONES.get(name).family
