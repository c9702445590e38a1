"""Rotation prediction (Gidaris et al. 2018, "Unsupervised Representation Learning by Predicting Image
Rotations").

Every image is shown at 0°, 90°, 180° and 270° in the same batch, after a light crop and flip; a small MLP
on the backbone's features classifies the rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.backbones import Backbone
from ssl_core.heads import MLPHead
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class RotationParams(MethodParams):
    crop_min_scale: float = param(
        0.5,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image "
        "before rotating (the paper uses no crop; a mild one adds variety)",
    )
    jitter_p: float = param(0.0, ge=0.0, le=1.0, description="probability of colour jitter per image")
    hidden_dim: int = param(512, ge=0, le=8192, description="hidden size of the rotation classifier (0: linear)")


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image: (B, C, H, W) → (4B, C, H, W) and labels (4B,) where label k means a
    counter-clockwise rotation by k·90°; the first B are the unrotated images."""
    views = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return views, labels


@METHODS.register("rotation")
class Rotation(SSLMethod[RotationParams]):
    recipe = Recipe(OptimizerDefaults("sgd", 0.1, 5e-4, why="the paper's"))
    category = "pretext"
    summary = "predict which of 0/90/180/270° an image was rotated by (Gidaris et al. 2018)"

    def __init__(self, backbone: Backbone, params: RotationParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.classifier = MLPHead(backbone.dim, params.hidden_dim, 4)
        self.view = ViewConfig(
            size=image_size, crop_scale=(params.crop_min_scale, 1.0), jitter_p=params.jitter_p, grayscale_p=0.0
        )

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        views, labels = rotate_batch(augment_view(images, self.view, generator))
        logits = self.classifier(self.backbone.features(views))
        loss = F.cross_entropy(logits.float(), labels)
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
        return StepOutput(loss, {"rotation_accuracy": accuracy})
