"""VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022, "VICReg: Variance-Invariance-
Covariance Regularization for Self-Supervised Learning").

Two views through the backbone and a 3-layer expander; the loss keeps an image's embeddings together, each
dimension's std at least 1, and the dimensions decorrelated. Differs from the paper: a quarter-width
expander.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import byol_view_configs
from ssl_core.backbones import Backbone
from ssl_core.heads import ThreeLayerProjector
from ssl_core.losses.vicreg import VICRegLoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class VICRegParams(MethodParams):
    sim_weight: float = param(
        25.0, ge=0.0, le=1000.0, description="weight of the invariance (mean squared error) term (paper: 25)"
    )
    var_weight: float = param(
        25.0, ge=0.0, le=1000.0, description="weight of the two views' mean variance term (paper: 25)"
    )
    cov_weight: float = param(1.0, ge=0.0, le=1000.0, description="weight of each view's covariance term (paper: 1)")
    expander_dim: int = param(2048, ge=8, le=8192, description="output size of the expander (paper: 8192)")
    hidden_dim: int = param(2048, ge=8, le=8192, description="hidden size of the expander (paper: 8192)")
    crop_min_scale: float = param(
        0.6,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image (paper: 0.08; milder crops suit 28-32 px images)",
    )


@METHODS.register("vicreg")
class VICReg(SSLMethod[VICRegParams]):
    recipe = Recipe(OptimizerDefaults("lars", 0.2, 1e-6, why="the paper's and its code's"))
    category = "non_contrastive"
    summary = "invariance plus variance and covariance regularisation of two views' embeddings (Bardes et al. 2022)"

    def __init__(self, backbone: Backbone, params: VICRegParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.expander = ThreeLayerProjector(backbone.dim, params.hidden_dim, params.expander_dim)
        self.criterion = VICRegLoss(params.sim_weight, params.var_weight, params.cov_weight)
        self.view_configs = byol_view_configs(image_size, params.crop_min_scale)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        return StepOutput(self.criterion(*self.embed_two_views(self.expander, images, generator)))
