"""MoCo v2: momentum contrast with a queue of negatives (He et al. 2020, "Momentum Contrast for Unsupervised
Visual Representation Learning"; Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning").

Queries pick their own image's key from an EMA key encoder among a FIFO queue of past keys (InfoNCE).
Differs from the paper: symmetrised by default (as MoCo v3), the batch's keys stand in for an empty queue,
and no shuffle-BN (one device).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone
from ssl_core.ema import frozen_copy
from ssl_core.heads import MLPHead
from ssl_core.losses.info_nce import FeatureQueue, InfoNCELoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class MoCoParams(MethodParams):
    temperature: float = param(0.2, gt=0.0, le=10.0, description="InfoNCE softmax temperature (MoCo v2: 0.2)")
    queue_size: int = param(
        4096,
        ge=1,
        le=65536,
        description="number of negative keys kept in the queue (the paper's 65536 is for ImageNet)",
    )
    queue_max_fraction: float = param(
        0.25,
        gt=0.0,
        le=1.0,
        description="the queue never holds more keys than "
        "this fraction of the number of training images, so that it rarely "
        "holds a stale key of the query's own image",
    )
    base_momentum: float = param(
        0.99,
        ge=0.0,
        le=1.0,
        description="key-encoder EMA momentum at the first "
        "step, raised to 1 along a cosine schedule (paper: 0.999, constant)",
    )
    symmetric: bool = param(
        True,
        description="use both views as queries and as keys (mean of the two losses) "
        "instead of the paper's one query and one key per image",
    )
    projection_dim: int = param(128, ge=8, le=4096, description="output size of the MLP head (the key size)")
    hidden_dim: int = param(2048, ge=8, le=8192, description="hidden size of the MLP head")
    crop_min_scale: float = param(
        0.6,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image (paper: 0.2; milder crops suit 28-32 px images)",
    )
    blur_p: float = param(0.5, ge=0.0, le=1.0, description="probability of a Gaussian blur per view")
    solarize_p: float = param(0.2, ge=0.0, le=1.0, description="probability of solarization per view")


def queue_length(params: MoCoParams, data: DataInfo) -> int:
    """``queue_size``, capped at ``queue_max_fraction`` of the dataset when its size is known (at least 1)."""
    if data.num_images <= 0:
        return params.queue_size
    return max(1, min(params.queue_size, int(params.queue_max_fraction * data.num_images)))


@METHODS.register("moco")
class MoCo(SSLMethod[MoCoParams]):
    recipe = Recipe(
        OptimizerDefaults(
            "sgd",
            0.06,
            5e-4,
            why="twice the paper's 0.03, which learned less on small images; wd 5e-4 as in the authors' CIFAR demo",
        )
    )
    category = "contrastive"
    summary = "momentum key encoder and a queue of negatives, InfoNCE (MoCo v2: He et al. 2020, Chen et al. 2020)"

    def __init__(self, backbone: Backbone, params: MoCoParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projection = MLPHead(backbone.dim, params.hidden_dim, params.projection_dim, batch_norm=False)
        self.key_backbone = frozen_copy(backbone)
        self.key_projection = frozen_copy(self.projection)
        self.queue = FeatureQueue(queue_length(params, data), params.projection_dim)
        self.criterion = InfoNCELoss(params.temperature)
        view = ViewConfig(
            size=image_size, crop_scale=(params.crop_min_scale, 1.0), blur_p=params.blur_p, solarize_p=params.solarize_p
        )
        self.view_configs = (view, view)
        #: Keys of the last training step, enqueued by ``on_step_end``.
        self.pending_keys: torch.Tensor | None = None

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        b = images.shape[0]
        v1, v2 = self.views(images, generator)
        if self.params.symmetric:
            query_views, key_views = torch.cat([v1, v2]), torch.cat([v2, v1])
        else:
            query_views, key_views = v1, v2
        q = self.projection(self.backbone.features(query_views))
        with torch.no_grad():
            k = self.key_projection(self.key_backbone.features(key_views))
        if int(self.queue.filled) > 0:
            loss = self.criterion(q, k, self.queue.negatives())
        else:
            loss = self._loss_against_batch(q, k, b)
        self.pending_keys = k.detach().float()
        return StepOutput(loss, {"queue_filled": float(self.queue.filled)})

    def _loss_against_batch(self, q: torch.Tensor, k: torch.Tensor, b: int) -> torch.Tensor:
        """InfoNCE with the keys of the other images of the batch as negatives (the queue is still empty)."""
        if b < 2:
            raise ValueError("MoCo needs at least 2 images per batch while its queue is empty")
        image = torch.arange(k.shape[0], device=k.device) % b
        losses = [self.criterion(q[i : i + 1], k[i : i + 1], k[image != i % b]) for i in range(q.shape[0])]
        return torch.stack(losses).mean()

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.update_teachers(
            step,
            total_steps,
            self.params.base_momentum,
            (self.key_backbone, self.backbone),
            (self.key_projection, self.projection),
        )
        if self.pending_keys is not None:
            self.queue.enqueue(self.pending_keys)
            self.pending_keys = None
