"""Barlow Twins: redundancy reduction between the embeddings of two views (Zbontar et al. 2021, "Barlow
Twins: Self-Supervised Learning via Redundancy Reduction").

Two views through the backbone and a 3-layer projector; the loss drives the cross-correlation of the two
embeddings towards the identity. Differs from the paper: a quarter-width projector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import byol_view_configs
from ssl_core.backbones import Backbone
from ssl_core.heads import ThreeLayerProjector
from ssl_core.losses.barlow_twins import BarlowTwinsLoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class BarlowTwinsParams(MethodParams):
    lambda_offdiag: float = param(
        5e-3, ge=0.0, le=1.0, description="weight of the off-diagonal (redundancy reduction) term (paper: 5e-3)"
    )
    projector_dim: int = param(2048, ge=8, le=8192, description="output size of the projector (paper: 8192)")
    hidden_dim: int = param(2048, ge=8, le=8192, description="hidden size of the projector (paper: 8192)")
    crop_min_scale: float = param(
        0.6,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image (paper: 0.08; milder crops suit 28-32 px images)",
    )


@METHODS.register("barlow_twins")
class BarlowTwins(SSLMethod[BarlowTwinsParams]):
    recipe = Recipe(
        OptimizerDefaults(
            "lars", 0.2, 1.5e-6, no_decay_lr_scale=0.0048 / 0.2, why="the paper's, biases and batch norm at its 0.0048"
        )
    )
    category = "non_contrastive"
    summary = "cross-correlation of two views' embeddings driven to the identity (Zbontar et al. 2021)"

    def __init__(self, backbone: Backbone, params: BarlowTwinsParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projector = ThreeLayerProjector(backbone.dim, params.hidden_dim, params.projector_dim)
        self.criterion = BarlowTwinsLoss(params.lambda_offdiag)
        self.view_configs = byol_view_configs(image_size, params.crop_min_scale)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        return StepOutput(self.criterion(*self.embed_two_views(self.projector, images, generator)))
