"""The base of every SSL method: a backbone, a ``training_step`` and a parameter model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ssl_core.backbones import ResNetBackbone


class MethodParams(BaseModel):
    """Method-specific hyper-parameters. Subclasses add fields with bounds; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StepOutput:
    """What one training step returns: the loss to minimise and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class SSLMethod(nn.Module):
    """A self-supervised method: owns the backbone and its heads, turns a batch into a loss.

    Subclasses set ``Params`` and the defaults below, and implement ``training_step``.
    """

    Params: ClassVar[type[MethodParams]] = MethodParams
    #: Base learning rate for a batch of 256 with the method's default optimiser (scaled linearly).
    default_lr: ClassVar[float] = 0.1
    default_optimizer: ClassVar[str] = "sgd"
    default_weight_decay: ClassVar[float] = 1e-4

    def __init__(self, backbone: ResNetBackbone, params: MethodParams, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.params = params
        self.image_size = image_size

    def training_step(self, images: torch.Tensor, generator: torch.Generator | None) -> StepOutput:
        """images: (B, C, H, W) float in [0, 1] on the training device, not yet augmented."""
        raise NotImplementedError
