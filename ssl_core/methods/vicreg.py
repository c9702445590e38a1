"""VICReg: variance-invariance-covariance regularisation (Bardes et al. 2022, "VICReg: Variance-Invariance-
Covariance Regularization for Self-Supervised Learning").

Two views of each image go through the backbone and a 3-layer expander; the loss pulls the two embeddings of
an image together (invariance), keeps every dimension's standard deviation over the batch at least 1
(variance) and decorrelates the dimensions (covariance), each view's statistics taken separately.

Choices the paper leaves open or that differ here, and why:

- **Expander** 2048-2048-2048 instead of 8192-8192-8192, for CPU cost (the paper's accuracy grows with the
  width; widen it when compute allows).
- **Loss weights** λ = 25 (invariance), μ = 25 (variance), ν = 1 (covariance) as in the paper. Jaga's
  :class:`~ssl_core.losses.vicreg.VICRegLoss` *adds* the two views' variance terms, as eq. 6 writes them,
  while the official implementation that produced the paper's results averages them; ``var_weight``
  defaults to 12.5 here, which is that μ = 25 weighting. The covariance terms are added in both.
- **Optimiser.** LARS, base learning rate 0.2 per 256 images (the paper's and its code's value) and weight
  decay 1e-6; biases and batch-norm parameters are excluded from the adaptation and the decay. On
  Fashion-MNIST (4096 images, 10 epochs, batch 256, ResNet-18 at 32 px, one seed) 0.3 gave a kNN accuracy of
  0.792 against 0.787 for 0.2: within that run's noise (about ±0.009), so the paper's value stays.
- **Augmentations** are BYOL's asymmetric pair, as in the paper, with the milder crops this project measured
  to work better on 28–32 px images (see ``ssl_core.methods.simclr``).
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_core.augment import byol_view_configs
from ssl_core.backbones import Backbone
from ssl_core.heads import ThreeLayerProjector
from ssl_core.losses.vicreg import VICRegLoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, SSLMethod, StepOutput


class VICRegParams(MethodParams):
    sim_weight: float = Field(25.0, ge=0.0, le=1000.0, description="weight of the invariance (mean squared "
                              "error) term (paper: 25)")
    var_weight: float = Field(12.5, ge=0.0, le=1000.0, description="weight of each view's variance term; "
                              "the two are added, so 12.5 is the paper's 25 on their mean")
    cov_weight: float = Field(1.0, ge=0.0, le=1000.0, description="weight of each view's covariance term "
                              "(paper: 1)")
    expander_dim: int = Field(2048, ge=8, le=8192, description="output size of the expander (paper: 8192)")
    hidden_dim: int = Field(2048, ge=8, le=8192, description="hidden size of the expander (paper: 8192)")
    crop_min_scale: float = Field(0.6, gt=0.0, le=1.0, description="smallest crop area as a fraction of the "
                                  "image (paper: 0.08; milder crops suit 28-32 px images)")


@METHODS.register("vicreg")
class VICReg(SSLMethod):
    Params = VICRegParams
    default_lr = 0.2
    default_optimizer = "lars"
    default_weight_decay = 1e-6
    category = "non_contrastive"
    summary = "invariance plus variance and covariance regularisation of two views' embeddings (Bardes et al. 2022)"
    params: VICRegParams

    def __init__(self, backbone: Backbone, params: VICRegParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.expander = ThreeLayerProjector(backbone.dim, params.hidden_dim, params.expander_dim)
        self.criterion = VICRegLoss(params.sim_weight, params.var_weight, params.cov_weight)
        self.view_configs = byol_view_configs(image_size, params.crop_min_scale)

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
                      ) -> StepOutput:
        b = images.shape[0]
        v1, v2 = self.views(images, generator)
        z = self.expander(self.backbone.features(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)))
        return StepOutput(self.criterion(z[:b], z[b:]))
