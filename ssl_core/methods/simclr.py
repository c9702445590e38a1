"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations").

Two augmented views per image, a projection head, and NT-Xent over the 2B views of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone
from ssl_core.heads import MLPHead
from ssl_core.losses import NTXentLoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class SimCLRParams(MethodParams):
    temperature: float = param(0.2, gt=0.0, le=10.0, description="NT-Xent softmax temperature")
    crop_min_scale: float = param(
        0.6,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image "
        "(paper: 0.08; milder crops keep the shape of 28-32 px images)",
    )
    blur_p: float = param(0.5, ge=0.0, le=1.0, description="probability of a Gaussian blur per view")
    solarize_p: float = param(
        0.2,
        ge=0.0,
        le=1.0,
        description="probability of solarization per view "
        "(takes away the intensity-histogram shortcut of grayscale images)",
    )
    projection_dim: int = param(128, ge=8, le=4096, description="output size of the projection head")
    hidden_dim: int = param(2048, ge=8, le=8192, description="hidden size of the projection head")


@METHODS.register("simclr")
class SimCLR(SSLMethod[SimCLRParams]):
    recipe = Recipe(OptimizerDefaults("lars", 0.3, 1e-6, why="the paper's (Appendix B.1)"))
    category = "contrastive"
    summary = "two views per image, NT-Xent over the batch (Chen et al. 2020)"

    def __init__(self, backbone: Backbone, params: SimCLRParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projection = MLPHead(backbone.dim, params.hidden_dim, params.projection_dim)
        self.criterion = NTXentLoss(params.temperature)
        view = ViewConfig(
            size=image_size, crop_scale=(params.crop_min_scale, 1.0), blur_p=params.blur_p, solarize_p=params.solarize_p
        )
        self.view_configs = (view, view)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        return StepOutput(self.criterion(*self.embed_two_views(self.projection, images, generator)))
