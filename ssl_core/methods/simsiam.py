"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

A predictor maps one view's projection onto the other's, held constant (stop-gradient); the symmetrised
loss is halved, in [-1, 1]. Differs from the paper: heads a quarter of its width, same 4:1 ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone
from ssl_core.heads import MLPHead, SimSiamProjector
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class SimSiamParams(MethodParams):
    projection_dim: int = param(512, ge=8, le=8192, description="hidden and output size of the projector (paper: 2048)")
    predictor_hidden_dim: int = param(128, ge=8, le=8192, description="bottleneck of the predictor (paper: 512)")
    crop_min_scale: float = param(0.2, gt=0.0, le=1.0, description="smallest crop area as a fraction of the image")


@METHODS.register("simsiam")
class SimSiam(SSLMethod[SimSiamParams]):
    recipe = Recipe(
        OptimizerDefaults(
            "sgd",
            0.12,
            5e-4,
            why="BYOL's recipe; the paper's 0.05 with 1e-4 never passed the random init on small images",
        )
    )
    category = "non_contrastive"
    summary = "Siamese views with a predictor and a stop-gradient, no negatives (Chen & He 2021)"

    def __init__(self, backbone: Backbone, params: SimSiamParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projector = SimSiamProjector(backbone.dim, params.projection_dim)
        self.predictor = MLPHead(params.projection_dim, params.predictor_hidden_dim, params.projection_dim)
        self.criterion = NegativeCosineSimilarity(form="simsiam")
        view = ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), blur_p=0.5)
        self.view_configs = (view, view)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        b = images.shape[0]
        views = torch.cat(self.views(images, generator))
        z = self.projector(self.backbone.features(views))
        p = self.predictor(z)
        # The criterion detaches its target: z only receives gradient through the predictor's input.
        loss = (self.criterion(p[:b], z[b:]) + self.criterion(p[b:], z[:b])) / 2
        return StepOutput(loss)
