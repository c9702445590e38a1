"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments").

Each global crop's Sinkhorn-Knopp codes over learnable unit-norm prototypes are predicted by every other
crop, local multi-crop views included; prototypes are frozen for the first steps. The paper's queue for
small batches is optional (``queue_length``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_core.augment import ViewConfig, local_view_size
from ssl_core.backbones import Backbone
from ssl_core.heads import MLPHead
from ssl_core.losses.swav import SwAVLoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import (
    DataInfo,
    MethodParams,
    OptimizerDefaults,
    Recipe,
    SSLMethod,
    StepOutput,
    fp32_view_sizes,
    multi_size_features,
)
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class SwAVParams(MethodParams):
    num_prototypes: int = param(
        300, ge=2, le=10_000, description="number of prototypes (clusters; paper: 3000, for ImageNet)"
    )
    hidden_dim: int = param(1024, ge=8, le=8192, description="hidden size of the projection head (paper: 2048)")
    projection_dim: int = param(128, ge=8, le=4096, description="output size of the projection head")
    temperature: float = param(0.1, gt=0.0, le=10.0, description="softmax temperature of the swapped prediction")
    epsilon: float = param(0.05, gt=0.0, le=10.0, description="entropic regularisation of Sinkhorn-Knopp")
    sinkhorn_iterations: int = param(3, ge=1, le=100, description="Sinkhorn-Knopp iterations")
    n_local_crops: int = param(4, ge=0, le=12, description="number of low-resolution local crops (paper: 6)")
    global_crop_min_scale: float = param(
        0.3,
        gt=0.0,
        le=1.0,
        description="smallest global crop area (paper: "
        "0.14; wider, so small images' local crops hold more than background)",
    )
    local_crop_min_scale: float = param(
        0.05, gt=0.0, le=1.0, description="smallest local crop area; the largest is global_crop_min_scale"
    )
    freeze_prototypes_steps: int = param(
        50,
        ge=0,
        le=1_000_000,
        description="steps during which the prototypes get no updates (the paper freezes them for the first epoch)",
    )
    queue_length: int = param(
        0,
        ge=0,
        le=65_536,
        description="projections of past global crops kept per crop "
        "and added to Sinkhorn's batch once the queue is full (paper: 3840 for batches of "
        "256); 0: no queue",
    )
    queue_start_steps: int = param(
        0, ge=0, le=1_000_000, description="steps before the queue starts filling (the paper: 15 epochs)"
    )


@METHODS.register("swav")
class SwAV(SSLMethod[SwAVParams]):
    recipe = Recipe(
        OptimizerDefaults(
            "sgd", 0.12, 5e-4, why="BYOL's recipe; the paper's LARS stayed below the random init on small images"
        )
    )
    category = "non_contrastive"
    summary = "swapped prediction of Sinkhorn cluster codes between crops, multi-crop (Caron et al. 2020)"
    steps_done: torch.Tensor
    queue: torch.Tensor
    queue_filled: torch.Tensor

    def __init__(self, backbone: Backbone, params: SwAVParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projector = MLPHead(backbone.dim, params.hidden_dim, params.projection_dim)
        self.prototypes = nn.Linear(params.projection_dim, params.num_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.criterion = SwAVLoss(params.temperature, params.epsilon, params.sinkhorn_iterations)
        self.local_size = local_view_size(image_size, multiple=getattr(backbone, "patch_size", 1))
        global_view = ViewConfig(size=image_size, crop_scale=(params.global_crop_min_scale, 1.0), blur_p=0.5)
        local_view = ViewConfig(
            size=self.local_size,
            crop_scale=(min(params.local_crop_min_scale, params.global_crop_min_scale), params.global_crop_min_scale),
            blur_p=0.5,
        )
        self.view_configs = (global_view, global_view) + (local_view,) * params.n_local_crops
        self.fp32_sizes = fp32_view_sizes(backbone, {image_size, self.local_size})
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # Newest first, one row per past global crop; ``queue_filled`` rows hold features.
        self.register_buffer("queue", torch.zeros(2, params.queue_length, params.projection_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        #: Projections of the last step's global crops (2, B, D), enqueued by ``on_step_end``.
        self.pending: torch.Tensor | None = None

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        b = images.shape[0]
        z = F.normalize(
            self.projector(multi_size_features(self.backbone, self.views(images, generator), self.fp32_sizes)), dim=1
        )
        frozen = int(self.steps_done) < self.params.freeze_prototypes_steps
        # No gradient at all, so neither the optimiser nor weight decay moves frozen prototypes.
        weight = self.prototypes.weight.detach() if frozen else self.prototypes.weight
        scores = F.linear(z, weight)
        queue_scores = None
        p = self.params
        if p.queue_length and int(self.steps_done) >= p.queue_start_steps:
            if self.training:
                self.pending = z[: 2 * b].detach().float().view(2, b, -1)
            if int(self.queue_filled) >= p.queue_length:
                with torch.no_grad():
                    queue_scores = list(F.linear(self.queue, weight.detach().float()))
        return StepOutput(self.criterion(list(scores.split(b)), n_global=2, queue_scores=queue_scores))

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.steps_done += 1
        if self.pending is not None:
            with torch.no_grad():
                n = min(self.pending.shape[1], self.params.queue_length)
                self.queue.copy_(torch.cat([self.pending[:, :n], self.queue[:, : self.params.queue_length - n]], dim=1))
                self.queue_filled.copy_(torch.clamp(self.queue_filled + n, max=self.params.queue_length))
            self.pending = None
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
