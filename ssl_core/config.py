"""The training configuration shared by the training loop and the job spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ssl_core.params import Checked, param

#: The budget when a spec gives neither ``epochs`` nor ``max_minutes``.
DEFAULT_MAX_MINUTES = 10.0
#: What a spec without ``method`` / ``backbone`` trains (the job spec's validation reads these too).
DEFAULT_METHOD = "simclr"
DEFAULT_BACKBONE = "resnet18"


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Checked):
    """Everything the training loop needs besides the data. Unknown keys are refused."""

    method: str = DEFAULT_METHOD
    backbone: str = DEFAULT_BACKBONE
    #: ``standard`` by default, as ``small`` costs ~16× the compute; choose ``small`` when compute allows.
    stem: Literal["small", "standard"] = "standard"
    image_size: int = param(32, ge=8, le=512)
    patch_size: int | None = param(
        None,
        ge=2,
        le=32,
        description="ViT patch side (default: the largest of 16, "
        "8, 4, 2 dividing image_size with at least 8x8 patches); must divide image_size",
    )
    epochs: int | None = param(None, ge=1, le=10_000)
    max_minutes: float | None = param(None, gt=0, le=7 * 24 * 60)
    batch_size: int = param(256, ge=4, le=8192)
    optimizer: Literal["sgd", "lars", "adamw"] | None = None
    learning_rate: float | None = param(None, gt=0, le=100, description="base LR for batch 256, scaled linearly")
    weight_decay: float | None = param(None, ge=0, le=1)
    clip_grad_norm: float | None = param(
        None, ge=0, le=1000, description="clip the gradient norm to this (default: the method's; 0: no clipping)"
    )
    warmup_fraction: float = param(0.1, ge=0, le=0.5, description="fraction of steps spent warming up")
    precision: Literal["auto", "bf16", "float32"] = param(
        "auto", description="auto: bf16 autocast where the hardware runs it faster than float32 (measured)"
    )
    seed: int = param(0, ge=0, le=2**31 - 1)
    checkpoint_every_steps: int = param(200, ge=1, le=1_000_000)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is not None and self.max_minutes is not None:
            raise ValueError("give either epochs or max_minutes, not both")
        if self.epochs is None and self.max_minutes is None:
            object.__setattr__(self, "max_minutes", DEFAULT_MAX_MINUTES)
