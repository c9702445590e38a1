"""The base of every SSL method: a backbone, a ``training_step`` and a parameter model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.backbones import Backbone, Family
from ssl_core.evaluate import PatchGrid


class MethodParams(BaseModel):
    """Method-specific hyper-parameters. Subclasses add fields with bounds; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataInfo:
    """What a method may need to know about its training data before it sees a batch."""

    num_images: int = 0
    channels: int = 3  # as stored: 1 (grayscale) or 3


@dataclass
class StepOutput:
    """What one training step returns: the loss to minimise and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimizerDefaults:
    """How a method trains unless the spec says otherwise (see the class variables of ``SSLMethod``)."""

    optimizer: str
    learning_rate: float
    weight_decay: float
    clip_grad_norm: float | None
    adamw_betas: tuple[float, float]
    no_decay_lr_scale: float
    weight_decay_end_factor: float


class SSLMethod(nn.Module):
    """A self-supervised method: owns the backbone and its heads, turns a batch into a loss.

    Subclasses set ``Params``, the defaults below and ``families``, and implement ``training_step``;
    methods with a teacher or a queue also override ``on_step_end``.
    """

    Params: ClassVar[type[MethodParams]] = MethodParams
    #: Base learning rate for a batch of 256 with the method's default optimiser (scaled linearly).
    default_lr: ClassVar[float] = 0.1
    default_optimizer: ClassVar[str] = "sgd"
    default_weight_decay: ClassVar[float] = 1e-4
    #: Gradient-norm clipping the method trains with unless the spec says otherwise (None: no clipping).
    default_clip_grad_norm: ClassVar[float | None] = None
    #: AdamW's (beta1, beta2) when the method trains with AdamW.
    adamw_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    #: Learning rate of biases and normalisation parameters as a fraction of the weights' rate.
    no_decay_lr_scale: ClassVar[float] = 1.0
    #: Weight decay at the end of training as a multiple of its starting value, reached along a cosine
    #: (1: constant).
    weight_decay_end_factor: ClassVar[float] = 1.0
    #: Backbone families the method works with.
    families: ClassVar[tuple[Family, ...]] = ("resnet", "vit")
    #: The family of methods it belongs to, for listings: pretext, contrastive, non_contrastive,
    #: transformer, multitask.
    category: ClassVar[str] = ""
    #: One line on what the method does, with its paper.
    summary: ClassVar[str] = ""
    #: The augmentation of each view a training step takes, in order (set in ``__init__``; empty for methods
    #: whose input is not a set of augmented views of the batch).
    view_configs: tuple[ViewConfig, ...] = ()
    #: How the trained encoder embeds an image: None, the whole image; a ``PatchGrid`` for methods whose
    #: backbone only ever sees tiles (set in ``__init__``). Evaluation, the monitor and served embeddings
    #: all follow it.
    patch_grid: PatchGrid | None = None

    def __init__(self, backbone: Backbone, params: MethodParams, image_size: int, data: DataInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.image_size = image_size
        self.data = data

    @classmethod
    def optimizer_defaults(cls, params: Any, family: Family | None = None) -> OptimizerDefaults:
        """The optimiser settings the method trains with for ``params`` on a backbone of ``family`` (None: the
        method's first family) when the spec names none: the class variables above; a method whose defaults
        depend on its parameters or on the backbone overrides this."""
        return OptimizerDefaults(cls.default_optimizer, cls.default_lr, cls.default_weight_decay,
                                 cls.default_clip_grad_norm, cls.adamw_betas, cls.no_decay_lr_scale,
                                 cls.weight_decay_end_factor)

    @classmethod
    def check_data(cls, params: Any, data: DataInfo) -> None:
        """Raise ``ValueError`` with the reason when the method cannot train on such data."""

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
                      ) -> StepOutput:
        """images: (B, C, H, W) float in [0, 1] on the training device, not yet augmented; indices: (B,)
        int64 positions of the images in the dataset (for memory banks and per-image classes)."""
        raise NotImplementedError

    def views(self, images: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """The augmented views of a batch, one per entry of ``view_configs``: a list of (B, C, s, s), s the
        view's size. Each image gets its own random augmentation parameters."""
        return [augment_view(images, view, generator) for view in self.view_configs]

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` counts from 0): momentum teachers, queues."""

    def encoder(self) -> Backbone:
        """The backbone to evaluate and save (a teacher for methods whose teacher is the better encoder)."""
        return self.backbone


def multi_size_features(backbone: Backbone, crops: list[torch.Tensor], fp32_sizes: set[int] | None = None
                        ) -> torch.Tensor:
    """Backbone features of multi-crop views, in crop order: consecutive crops of one size go through the
    backbone in one call (as SwAV's and DINO's reference code do). Crops whose side is in ``fp32_sizes`` run
    outside autocast (see ``ssl_core.device.one_pixel_convs``). Shapes: V tensors (B, 3, s_v, s_v) → (V·B, D)."""
    features: list[torch.Tensor] = []
    start = 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
            end += 1
        x = torch.cat(crops[start:end])
        if backbone.family == "resnet":
            x = x.contiguous(memory_format=torch.channels_last)
        if fp32_sizes and x.shape[-1] in fp32_sizes:
            with torch.autocast(x.device.type, enabled=False):
                features.append(backbone.features(x.float()))
        else:
            features.append(backbone.features(x))
        start = end
    return torch.cat(features)
