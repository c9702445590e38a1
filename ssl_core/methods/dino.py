"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers").

A student on two global and ``n_local_crops`` local crops matches the centred, sharpened outputs of its
EMA teacher on the global crops; the teacher is the saved encoder. Differs from the paper: a smaller head,
fewer crops, and the centre starts at the first batch's mean (docs/experiments/2026-12-04-method-defaults.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ssl_core.augment import byol_view_configs, local_view_size
from ssl_core.backbones import Backbone
from ssl_core.ema import frozen_copy
from ssl_core.heads import DINOHead
from ssl_core.losses.dino import DINOLoss
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
class DINOParams(MethodParams):
    output_dim: int = param(
        4096, ge=16, le=65536, description="number of prototypes K, the head's output size (paper: 65536, for ImageNet)"
    )
    hidden_dim: int = param(512, ge=16, le=4096, description="hidden size of the head's MLP (paper: 2048)")
    bottleneck_dim: int = param(
        256, ge=8, le=1024, description="size of the L2-normalised bottleneck before the prototypes (paper: 256)"
    )
    n_local_crops: int = param(
        4, ge=0, le=10, description="local crops per image besides the 2 global crops (paper: 10)"
    )
    global_crop_min_scale: float = param(
        0.4,
        gt=0.0,
        le=1.0,
        description="smallest global crop area as a "
        "fraction of the image; also the largest local crop area (paper: 0.4)",
    )
    local_crop_min_scale: float = param(
        0.1,
        gt=0.0,
        lt=1.0,
        description="smallest local crop area as a fraction of the image (paper: 0.05, for 224 px images)",
    )
    student_temperature: float = param(0.1, gt=0.0, le=1.0, description="student softmax temperature")
    teacher_temperature: float = param(
        0.07, gt=0.0, le=1.0, description="teacher softmax temperature after the warm-up"
    )
    warmup_teacher_temperature: float = param(
        0.04,
        gt=0.0,
        le=1.0,
        description="teacher temperature at the first step, raised linearly to teacher_temperature",
    )
    warmup_teacher_temp_fraction: float = param(
        0.3,
        ge=0.0,
        le=1.0,
        description="fraction of the training steps over which the teacher temperature is warmed up",
    )
    center_momentum: float = param(
        0.9, ge=0.0, le=1.0, description="momentum of the running centre of the teacher outputs"
    )
    base_momentum: float = param(
        0.99,
        ge=0.0,
        le=1.0,
        description="teacher EMA momentum at the first step, raised to 1 along a cosine schedule (paper: 0.996)",
    )
    freeze_last_layer_steps: int = param(
        0,
        ge=0,
        le=1_000_000,
        description="optimiser steps during which the prototypes (last layer) are not trained (paper: one epoch)",
    )
    head_batch_norm: bool | None = param(
        None,
        description="batch norm after the hidden layers of the head (the "
        "reference implementation's use_bn_in_head); default: on for a "
        "ResNet, as in the paper's ResNet runs, off for a ViT",
    )
    norm_last_layer: bool = param(
        True, description="fix the weight-norm gain of the prototypes to 1 (paper); False learns it"
    )
    init_center_from_batch: bool = param(
        True, description="start the centre at the mean teacher output of the first batch instead of zero (the paper)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.local_crop_min_scale >= self.global_crop_min_scale:
            raise ValueError(
                f"local_crop_min_scale ({self.local_crop_min_scale}) must be below "
                f"global_crop_min_scale ({self.global_crop_min_scale}), the largest local crop"
            )


def teacher_temperature(step: int, total_steps: int, start: float, end: float, warmup_fraction: float) -> float:
    """The teacher temperature at ``step``: linear from ``start`` at step 0 to ``end`` after
    ``warmup_fraction`` · ``total_steps`` steps, then ``end``. With an unknown length (``total_steps`` ≤ 0),
    ``start``."""
    warmup = warmup_fraction * total_steps
    if total_steps <= 0:
        return start
    if warmup <= 0 or step >= warmup:
        return end
    return start + (end - start) * step / warmup


@METHODS.register("dino")
class DINO(SSLMethod[DINOParams]):
    recipe = Recipe(
        OptimizerDefaults(
            "adamw",
            5e-4,
            0.04,
            clip_grad_norm=3.0,
            weight_decay_end_factor=10.0,
            why="the paper's ViT recipe: weight decay 0.04 rising to 0.4",
        ),
        by_family={
            "resnet": OptimizerDefaults(
                "sgd",
                0.12,
                5e-4,
                clip_grad_norm=3.0,
                weight_decay_end_factor=10.0,
                why="the SGD recipe that makes BYOL and SwAV learn on small images; the paper's 0.03 learned slowly",
            )
        },
    )
    families = ("vit", "resnet", "mobile")
    category = "transformer"
    summary = (
        "self-distillation of a centred, sharpened EMA teacher into a multi-crop student (DINO: Caron et al. 2021)"
    )
    steps_done: torch.Tensor
    total_steps: torch.Tensor

    def __init__(self, backbone: Backbone, params: DINOParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        head_batch_norm = params.head_batch_norm if params.head_batch_norm is not None else backbone.family != "vit"
        self.head = DINOHead(
            backbone.dim,
            params.hidden_dim,
            params.bottleneck_dim,
            params.output_dim,
            head_batch_norm,
            not params.norm_last_layer,
        )
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(
            params.output_dim, params.warmup_teacher_temperature, params.student_temperature, params.center_momentum
        )
        self.local_size = local_view_size(image_size, multiple=getattr(backbone, "patch_size", 1))
        global_views = byol_view_configs(image_size, params.global_crop_min_scale)
        local_view = replace(
            global_views[0],
            size=self.local_size,
            blur_p=0.5,
            crop_scale=(params.local_crop_min_scale, params.global_crop_min_scale),
        )
        self.view_configs = global_views + (local_view,) * params.n_local_crops
        self.fp32_sizes = fp32_view_sizes(backbone, {image_size, self.local_size})
        # Saved so a resumed run continues the temperature warm-up.
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        #: Teacher outputs of the last training step, folded into the centre by ``on_step_end``.
        self.pending_teacher_out: list[torch.Tensor] | None = None

    def current_teacher_temperature(self) -> float:
        """The teacher temperature of the next training step."""
        p = self.params
        return teacher_temperature(
            int(self.steps_done),
            int(self.total_steps),
            p.warmup_teacher_temperature,
            p.teacher_temperature,
            p.warmup_teacher_temp_fraction,
        )

    def _embed(
        self, backbone: Backbone, head: DINOHead, crops: list[torch.Tensor], freeze_last_layer: bool = False
    ) -> list[torch.Tensor]:
        """Head outputs (B, K) per crop; consecutive crops of one size go through the backbone together."""
        features = multi_size_features(backbone, crops, self.fp32_sizes)
        return list(head(features, freeze_last_layer=freeze_last_layer).split(crops[0].shape[0]))

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        crops = self.views(images, generator)
        freeze = int(self.steps_done) < self.params.freeze_last_layer_steps
        student = self._embed(self.backbone, self.head, crops, freeze_last_layer=freeze)
        with torch.no_grad():
            teacher = self._embed(self.teacher_backbone, self.teacher_head, crops[:2])
        if self.training and int(self.steps_done) == 0 and self.params.init_center_from_batch:
            with torch.no_grad():
                self.criterion.center.copy_(torch.cat(teacher).float().mean(dim=0, keepdim=True))
        temperature = self.current_teacher_temperature()
        loss = self.criterion(student, teacher, teacher_temperature=temperature)
        if self.training:
            self.pending_teacher_out = [t.detach() for t in teacher]
        return StepOutput(loss, {"teacher_temperature": temperature})

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.update_teachers(
            step,
            total_steps,
            self.params.base_momentum,
            (self.teacher_backbone, self.backbone),
            (self.teacher_head, self.head),
        )
        if self.pending_teacher_out is not None:
            self.criterion.update_center(self.pending_teacher_out)
            self.pending_teacher_out = None
        self.steps_done.fill_(step + 1)
        self.total_steps.fill_(total_steps)

    def encoder(self) -> Backbone:
        """The teacher's backbone: the paper evaluates the teacher, which is the better encoder."""
        return self.teacher_backbone
