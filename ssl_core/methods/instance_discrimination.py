"""Non-parametric instance discrimination with a memory bank (Wu et al. 2018, "Unsupervised Feature Learning
via Non-Parametric Instance Discrimination").

A 128-d normalised embedding is classified among all N images against a memory bank of one embedding per
image. Differs from the paper: an exact softmax, not NCE, which bounds ``max_images``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.backbones import Backbone
from ssl_core.losses.memory_bank import MemoryBank
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param


@dataclass(frozen=True, kw_only=True)
class InstanceDiscriminationParams(MethodParams):
    feature_dim: int = param(
        128, ge=8, le=1024, description="size of the L2-normalised embedding stored in the memory bank (paper: 128)"
    )
    temperature: float = param(0.07, gt=0.0, le=10.0, description="softmax temperature (paper: 0.07)")
    bank_momentum: float = param(
        0.5,
        ge=0.0,
        le=1.0,
        description="weight of the old bank row when it is moved towards a new embedding (paper: 0.5)",
    )
    proximal_weight: float = param(
        0.0, ge=0.0, le=100.0, description="weight of the proximal term ||f - v||^2 of the paper's eq. 8 (0: off)"
    )
    max_images: int = param(
        100_000,
        ge=2,
        le=500_000,
        description="largest dataset accepted: the memory bank "
        "holds feature_dim floats per image and every step compares the batch with all of it",
    )
    crop_min_scale: float = param(
        0.2, gt=0.0, le=1.0, description="smallest crop area as a fraction of the image (paper: 0.2)"
    )
    jitter: float = param(
        0.4,
        ge=0.0,
        le=0.5,
        description="colour-jitter strength for brightness, contrast, saturation and hue (paper: 0.4)",
    )
    grayscale_p: float = param(0.2, ge=0.0, le=1.0, description="probability of converting a view to grayscale")


@METHODS.register("instance_discrimination")
class InstanceDiscrimination(SSLMethod[InstanceDiscriminationParams]):
    recipe = Recipe(OptimizerDefaults("sgd", 0.03, 5e-4, why="the paper's"))
    category = "contrastive"
    summary = "every image its own class, softmax against a memory bank of embeddings (Wu et al. 2018)"

    def __init__(
        self, backbone: Backbone, params: InstanceDiscriminationParams, image_size: int, data: DataInfo
    ) -> None:
        super().__init__(backbone, params, image_size, data)
        if data.num_images <= 0:
            raise ValueError(
                "instance discrimination needs the number of training images to size its memory "
                "bank: pass DataInfo(num_images=...)"
            )
        self.embedding = nn.Linear(backbone.dim, params.feature_dim)
        self.bank = MemoryBank(data.num_images, params.feature_dim, params.temperature, params.proximal_weight)
        j = params.jitter
        self.view = ViewConfig(
            size=image_size,
            crop_scale=(params.crop_min_scale, 1.0),
            jitter_p=1.0,
            brightness=j,
            contrast=j,
            saturation=j,
            hue=j,
            grayscale_p=params.grayscale_p,
        )
        #: Embeddings and dataset indices of the last training step, written to the bank by ``on_step_end``.
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def check_data(cls, params: InstanceDiscriminationParams, data: DataInfo) -> None:
        if data.num_images > params.max_images:
            raise ValueError(
                f"instance discrimination keeps one memory-bank row per image and compares every "
                f"batch with all of them: at most {params.max_images} images (max_images), the "
                f"dataset has {data.num_images}"
            )
        if data.num_images == 1:
            raise ValueError("instance discrimination needs at least 2 images (one class per image)")

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        view = augment_view(images, self.view, generator)
        features = self.embedding(self.backbone.features(view))
        loss = self.bank(features, indices)
        self.pending = (features.detach().float(), indices.detach().clone())
        return StepOutput(loss)

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.pending is not None:
            features, indices = self.pending
            self.bank.update(features, indices, self.params.bank_momentum)
            self.pending = None
