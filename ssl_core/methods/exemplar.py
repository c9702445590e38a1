"""Exemplar, after Dosovitskiy et al. 2014, "Discriminative Unsupervised Feature Learning with Exemplar
Convolutional Neural Networks" (NIPS 2014).

Every image is its own class: a classifier with one output per image (hence ``max_images``) labels
strongly augmented views with their dataset positions. Differs from the paper: no rotation by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.backbones import Backbone
from ssl_core.heads import MLPHead
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


def random_rotation(x: torch.Tensor, max_degrees: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each image by its own angle, uniform in [-``max_degrees``, ``max_degrees``], about its centre
    (bilinear, reflection padding). Shapes: (B, C, H, W) → (B, C, H, W)."""
    if max_degrees <= 0:
        return x
    b = x.shape[0]
    angle = (torch.rand(b, generator=generator, device=x.device) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass(frozen=True, kw_only=True)
class ExemplarParams(MethodParams):
    max_images: int = param(
        50_000,
        ge=2,
        le=1_000_000,
        description="largest dataset accepted: the classifier "
        "has one output per image (the paper used 8000-32000 exemplars)",
    )
    views_per_image: int = param(2, ge=1, le=8, description="augmented views of every image in each batch")
    hidden_dim: int = param(
        0,
        ge=0,
        le=4096,
        description="0: a linear classifier on the backbone features; "
        "> 0: a Linear-BN-ReLU layer of this size before it",
    )
    crop_min_scale: float = param(
        0.6,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the "
        "image (milder than the paper's scaling: small images lose their shape in "
        "small crops)",
    )
    jitter_strength: float = param(
        0.4,
        ge=0.0,
        le=1.0,
        description="brightness, contrast and saturation jitter "
        "range (hue: a quarter of it), applied with probability 0.8",
    )
    max_rotation_degrees: float = param(
        0.0,
        ge=0.0,
        le=180.0,
        description="largest random rotation of a view "
        "(paper: 20; 0 keeps the orientation of upright objects, which tells "
        "them apart)",
    )


@METHODS.register("exemplar")
class Exemplar(SSLMethod[ExemplarParams]):
    recipe = Recipe(OptimizerDefaults("sgd", 0.1, 5e-4, why="the pretext tasks' common SGD recipe"))
    category = "pretext"
    summary = "every image is its own class under strong augmentation (Dosovitskiy et al. 2014, Exemplar CNN)"

    def __init__(self, backbone: Backbone, params: ExemplarParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        if data.num_images < 2:
            raise ValueError(
                f"exemplar needs the number of images in the dataset (one class each); got {data.num_images}"
            )
        self.check_data(params, data)
        self.classifier = MLPHead(backbone.dim, params.hidden_dim, data.num_images)
        s = params.jitter_strength
        view = ViewConfig(
            size=image_size,
            crop_scale=(params.crop_min_scale, 1.0),
            jitter_p=0.8 if s else 0.0,
            brightness=s,
            contrast=s,
            saturation=s,
            hue=s / 4,
            grayscale_p=0.0,
        )
        self.view_configs = (view,) * params.views_per_image

    @classmethod
    def check_data(cls, params: ExemplarParams, data: DataInfo) -> None:
        if data.num_images > params.max_images:
            raise ValueError(
                f"exemplar trains one class per image and handles at most {params.max_images} "
                f"images; this dataset has {data.num_images}"
            )

    def views(self, images: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """``views_per_image`` strongly augmented and rotated views of the batch, each (B, 3, S, S)."""
        out = []
        for view in self.view_configs:
            v = augment_view(images, view, generator)
            with torch.autocast(v.device.type, enabled=False):
                out.append(random_rotation(v, self.params.max_rotation_degrees, generator))
        return out

    def labels(self, indices: torch.Tensor) -> torch.Tensor:
        """The surrogate class of every view: its image's dataset position, repeated per view."""
        return indices.repeat(self.params.views_per_image)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        if indices.numel() and int(indices.max()) >= self.data.num_images:
            raise ValueError(
                f"image index {int(indices.max())} is out of range for the {self.data.num_images} "
                f"classes exemplar was built with"
            )
        x = torch.cat(self.views(images, generator))
        logits = self.classifier(self.backbone.features(x))
        loss = F.cross_entropy(logits.float(), self.labels(indices))
        return StepOutput(loss)
