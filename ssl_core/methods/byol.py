"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

An online backbone, projector and predictor predict a target network's projection of another view; the
target is an EMA of the online network and gets no gradient. The loss is symmetrised over the two views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import byol_view_configs
from ssl_core.backbones import Backbone
from ssl_core.ema import frozen_copy
from ssl_core.heads import MLPHead
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class BYOLParams(MethodParams):
    hidden_dim: int = param(
        1024,
        ge=8,
        le=8192,
        description="hidden size of the projector and the predictor "
        "(paper: 4096; narrower keeps a CPU step dominated by the backbone)",
    )
    projection_dim: int = param(256, ge=8, le=4096, description="output size of the projector and the predictor")
    base_momentum: float = param(
        0.99,
        ge=0.0,
        le=1.0,
        description="EMA momentum of the target at the start, "
        "raised to 1 along a cosine (paper: 0.996, for 1000 ImageNet epochs)",
    )
    crop_min_scale: float = param(0.4, gt=0.0, le=1.0, description="smallest crop area as a fraction of the image")


@METHODS.register("byol")
class BYOL(SSLMethod[BYOLParams]):
    recipe = Recipe(
        OptimizerDefaults(
            "sgd",
            0.12,
            5e-4,
            why="lightly's CIFAR-10 recipe; the paper's LARS stayed below the random init on small images",
        )
    )
    category = "non_contrastive"
    summary = "predict an EMA target network's projection of another view (Grill et al. 2020)"

    def __init__(self, backbone: Backbone, params: BYOLParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projector = MLPHead(backbone.dim, params.hidden_dim, params.projection_dim)
        self.predictor = MLPHead(params.projection_dim, params.hidden_dim, params.projection_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.criterion = NegativeCosineSimilarity(form="byol")
        self.view_configs = byol_view_configs(image_size, params.crop_min_scale)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        b = images.shape[0]
        views = torch.cat(self.views(images, generator))
        p = self.predictor(self.projector(self.backbone.features(views)))
        with torch.no_grad():
            z = self.target_projector(self.target_backbone.features(views))
        return StepOutput(self.criterion(p[:b], z[b:]) + self.criterion(p[b:], z[:b]))

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.update_teachers(
            step,
            total_steps,
            self.params.base_momentum,
            (self.target_backbone, self.backbone),
            (self.target_projector, self.projector),
        )
