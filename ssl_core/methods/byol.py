"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning").

An online network (backbone, projector, predictor) predicts a target network's projection of another view
of the same image; the target is an exponential moving average of the online backbone and projector and
gets no gradient. No negatives are needed: the predictor and the slowly moving target keep the
representation from collapsing. The loss is symmetrised over the two views.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_core.augment import byol_view_configs
from ssl_core.backbones import Backbone
from ssl_core.ema import ema_update, frozen_copy, momentum_schedule
from ssl_core.heads import ProjectionHead
from ssl_core.losses.negative_cosine import NegativeCosineSimilarity
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, SSLMethod, StepOutput


class BYOLParams(MethodParams):
    """The paper's heads are 4096 → 256 wide; 1024 → 256 keeps a CPU step dominated by the backbone. The base
    momentum 0.99 (paper 0.996 for 1000 ImageNet epochs) lets the target follow within short runs."""

    hidden_dim: int = Field(1024, ge=8, le=8192, description="hidden size of the projector and the predictor")
    projection_dim: int = Field(256, ge=8, le=4096, description="output size of the projector and the predictor")
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="EMA momentum of the target at the start; "
                                 "raised to 1 along a cosine over training")
    crop_min_scale: float = Field(0.4, gt=0.0, le=1.0, description="smallest crop area as a fraction of the image")


class BYOLHead(ProjectionHead):
    """BYOL's projector and predictor: Linear-BN-ReLU-Linear."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__([(input_dim, hidden_dim, True, True), (hidden_dim, output_dim, False, False)])


@METHODS.register("byol")
class BYOL(SSLMethod):
    Params = BYOLParams
    # Not the paper's LARS (base lr 0.2, wd 1.5e-6, for 4096-image ImageNet batches): SGD with momentum at
    # base lr 0.12 per 256 images and wd 5e-4, the recipe of lightly's CIFAR-10 benchmark. On Fashion-MNIST
    # (2,048 images, ResNet-18 at 32 px, batch 128, seed 0; docs/BENCHMARKS.md) LARS loses kNN accuracy from
    # the random init and stays below it (0.692 after 8 epochs, 0.68-0.69 along a 60-epoch schedule); SGD
    # keeps it (0.731 after 8) and passes it with a long schedule (0.774 after 192 epochs, random init 0.760).
    default_lr = 0.12
    default_optimizer = "sgd"
    default_weight_decay = 5e-4
    category = "non_contrastive"
    summary = "predict an EMA target network's projection of another view (Grill et al. 2020)"

    def __init__(self, backbone: Backbone, params: BYOLParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projector = BYOLHead(backbone.dim, params.hidden_dim, params.projection_dim)
        self.predictor = BYOLHead(params.projection_dim, params.hidden_dim, params.projection_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.criterion = NegativeCosineSimilarity(form="byol")
        # The paper's asymmetric pair (Table 6): always blurred vs rarely blurred and sometimes solarized.
        self.view_configs = byol_view_configs(image_size, params.crop_min_scale)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.backbone.family == "resnet" else x

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
                      ) -> StepOutput:
        b = images.shape[0]
        views = self._prepare(torch.cat(self.views(images, generator)))
        p = self.predictor(self.projector(self.backbone.features(views)))
        with torch.no_grad():
            z = self.target_projector(self.target_backbone.features(views))
        loss = self.criterion(p[:b], z[b:]) + self.criterion(p[b:], z[:b])
        return StepOutput(loss)

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = momentum_schedule(self.params.base_momentum, step + 1, total_steps)  # type: ignore[attr-defined]
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
