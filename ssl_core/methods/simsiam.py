"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning").

Two views go through the same backbone and projector; a predictor maps one view's projection onto the
other's, which is treated as a constant (stop-gradient). No negatives, no momentum encoder: the
stop-gradient alone prevents collapse. The loss is symmetrised and halved, in [-1, 1].

Scaled for small images and CPU budgets: the heads are a quarter of the paper's width (projector 512,
predictor bottleneck 128, keeping the paper's 4:1 ratio; lightly's examples use narrow heads for small images
too), and the optimiser is SGD at 0.12 per 256 images with weight decay 5e-4 (the recipe of lightly's CIFAR-10
benchmark, which makes BYOL and SwAV learn here) instead of the paper's 0.05 with 1e-4. With the paper's
shapes and either recipe, SimSiam never passed its random init on 32 px Fashion-MNIST; with these it does
after 96 or 192 epochs, by a thin margin (docs/BENCHMARKS.md, sixth round).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone
from ssl_core.heads import ProjectionHead
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, SSLMethod, StepOutput


class SimSiamParams(MethodParams):
    """The paper uses a 2048-d projector and a 512-d predictor bottleneck (dim / 4) on ImageNet and CIFAR;
    the defaults keep the ratio at a quarter of the width (see the module's docstring)."""

    projection_dim: int = Field(512, ge=8, le=8192, description="hidden and output size of the projector "
                                "(paper: 2048)")
    predictor_hidden_dim: int = Field(128, ge=8, le=8192, description="bottleneck of the predictor (paper: 512)")
    crop_min_scale: float = Field(0.2, gt=0.0, le=1.0, description="smallest crop area as a fraction of the image")


class SimSiamProjector(nn.Sequential):
    """Three Linear-BN layers, ReLU between them; the output batch norm has no affine parameters."""

    def __init__(self, input_dim: int, dim: int) -> None:
        layers = [(input_dim, dim, True, True), (dim, dim, True, True), (dim, dim, False, False)]
        super().__init__(ProjectionHead(layers), nn.BatchNorm1d(dim, affine=False))


class SimSiamPredictor(ProjectionHead):
    """Linear-BN-ReLU to the bottleneck, then Linear back (no batch norm on the output)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__([(dim, hidden_dim, True, True), (hidden_dim, dim, False, False)])


@METHODS.register("simsiam")
class SimSiam(SSLMethod):
    Params = SimSiamParams
    default_lr = 0.12
    default_optimizer = "sgd"
    default_weight_decay = 5e-4
    category = "non_contrastive"
    summary = "Siamese views with a predictor and a stop-gradient, no negatives (Chen & He 2021)"

    def __init__(self, backbone: Backbone, params: SimSiamParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projector = SimSiamProjector(backbone.dim, params.projection_dim)
        self.predictor = SimSiamPredictor(params.projection_dim, params.predictor_hidden_dim)
        self.criterion = NegativeCosineSimilarity(form="simsiam")
        view = ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), blur_p=0.5)
        self.view_configs = (view, view)

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
                      ) -> StepOutput:
        b = images.shape[0]
        views = torch.cat(self.views(images, generator))
        if self.backbone.family == "resnet":
            views = views.contiguous(memory_format=torch.channels_last)
        z = self.projector(self.backbone.features(views))
        p = self.predictor(z)
        # The criterion detaches its target: z only receives gradient through the predictor's input.
        loss = (self.criterion(p[:b], z[b:]) + self.criterion(p[b:], z[:b])) / 2
        return StepOutput(loss)
