"""DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021).

A student (backbone + DINO head) sees two global crops and ``n_local_crops`` small local crops of every image;
a teacher, an exponential moving average of the student, sees the two global crops only. The teacher's
outputs are centred (a running mean of its outputs, against collapse to one dimension) and sharpened by a low
temperature, and the student is trained to match them by cross-entropy over every (teacher crop, other
student crop) pair (``ssl_core.losses.dino.DINOLoss``). The teacher is the encoder that is evaluated and
saved, as in the paper. Works with Vision Transformers and ResNets.

Choices the paper leaves open or that differ here, and why:

- **Head size.** The paper's head is a 3-layer MLP (hidden 2048, GELU, no batch norm), a 256-d bottleneck
  that is L2-normalised, and a weight-normalised linear layer to K = 65536 prototypes whose weight-norm
  gain is fixed to 1. Here the structure is the same with a 512-d hidden layer and K = 4096 by default: the
  datasets are orders of magnitude smaller than ImageNet. The fixed gain is implemented by normalising
  each prototype's weight vector in the forward pass (``NormalizedLinear``), which is weight normalisation
  with g ≡ 1.
- **Teacher momentum** 0.99 at the first step, raised to 1 along the paper's cosine schedule (paper:
  0.996, tuned for ~125k steps on ImageNet; runs of a few hundred CPU steps need a teacher that follows
  faster).
- **Teacher temperature** warmed up linearly from 0.04 to 0.07 over the first ``warmup_teacher_temp_fraction``
  (30 %) of the steps, then constant (the paper: the first 30 epochs, of 100 in the reference's default
  run). The trainer only tells the method the schedule's length after a step, so the step count and the
  length are buffers updated in ``on_step_end``, from which the next step's temperature is computed (the
  first step uses 0.04). They are in ``state_dict()``, so a resumed run continues the warm-up exactly.
- **Crops.** 2 global crops at ``image_size`` with area scale (0.4, 1) and ``n_local_crops`` = 4 (paper: 10)
  local crops at ``local_view_size(image_size, patch)`` (3/7 of the side, 96 for 224; a multiple of the
  ViT patch) with area scale (0.1, 0.4): the paper's lower bound 0.05 leaves a crop of a 32 px image a few
  pixels wide. Colour augmentation as in the paper (jitter 0.8, grayscale 0.2); blur and solarization keep
  the paper's asymmetry: the first global crop is always blurred, the second rarely blurred (0.1) and
  solarized with probability 0.2, the local crops blurred with probability 0.5.
- **Forward passes.** Crops of equal size are concatenated and go through the backbone together, one pass
  per size, as in the reference implementation (batch-norm statistics of a ResNet are per size group). A
  ResNet whose local crops are small enough to meet a strided convolution on a 1×1 map (``one_pixel_convs``,
  e.g. a 14 px crop behind the standard stem) runs those crops in fp32: oneDNN's bf16 backward is unreliable
  there, and the trainer only checks the global size.
- **Optimiser.** On a ViT, AdamW, base learning rate 5e-4 per 256 images, gradient clipping at 3.0, weight
  decay raised from 0.04 to 0.4 along a cosine over the training, as in the paper (a spec's
  ``weight_decay`` sets the start; the end is 10× it). On a ResNet, SGD at 0.12 per 256 images, weight decay
  5e-4 (to 5e-3), the same clipping, and batch norm in the head (``head_batch_norm``'s default there): the
  paper's ResNet runs use SGD and batch norm in the head too, but at 0.03 with 1e-4, which on 32 px
  Fashion-MNIST learned far more slowly (docs/BENCHMARKS.md); 0.12 with 5e-4 is the recipe that makes BYOL
  and SwAV learn there.
- **Freezing the last layer.** The paper keeps the prototypes fixed during the first epoch for stability.
  Here ``freeze_last_layer_steps`` counts optimiser steps (the method does not know the epoch length);
  the default 0 does not freeze, since the trainer's learning-rate warm-up already keeps the first steps
  small. While frozen, the last layer gets no gradient and so no update (also no weight decay).
- **The centre's start.** Algorithm 1 starts the centre at zero, so the first ~20 steps (centre momentum
  0.9) distil targets dominated by the one output a freshly initialised network gives every image: they
  pull the student towards collapse, and the loss rises while the centre catches up. Here the centre starts
  at the mean teacher output of the first batch (``init_center_from_batch``; ``False`` for the paper's zero).
- **Side effects after the step.** The centre of the teacher outputs moves in ``on_step_end`` (with the
  outputs of the step just taken), like the teacher, so a step the trainer skips leaves both untouched.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ssl_core.augment import ViewConfig, local_view_size
from ssl_core.backbones import Backbone, Family
from ssl_core.device import one_pixel_convs
from ssl_core.ema import ema_update, frozen_copy, momentum_schedule
from ssl_core.losses.dino import DINOLoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import (
    DataInfo,
    MethodParams,
    OptimizerDefaults,
    SSLMethod,
    StepOutput,
    multi_size_features,
)


class DINOParams(MethodParams):
    output_dim: int = Field(4096, ge=16, le=65536, description="number of prototypes K, the head's output size "
                            "(paper: 65536, for ImageNet)")
    hidden_dim: int = Field(512, ge=16, le=4096, description="hidden size of the head's MLP (paper: 2048)")
    bottleneck_dim: int = Field(256, ge=8, le=1024, description="size of the L2-normalised bottleneck before "
                                "the prototypes (paper: 256)")
    n_local_crops: int = Field(4, ge=0, le=10, description="local crops per image besides the 2 global crops "
                               "(paper: 10)")
    global_crop_min_scale: float = Field(0.4, gt=0.0, le=1.0, description="smallest global crop area as a "
                                         "fraction of the image; also the largest local crop area (paper: 0.4)")
    local_crop_min_scale: float = Field(0.1, gt=0.0, lt=1.0, description="smallest local crop area as a "
                                        "fraction of the image (paper: 0.05, for 224 px images)")
    student_temperature: float = Field(0.1, gt=0.0, le=1.0, description="student softmax temperature")
    teacher_temperature: float = Field(0.07, gt=0.0, le=1.0, description="teacher softmax temperature after "
                                       "the warm-up")
    warmup_teacher_temperature: float = Field(0.04, gt=0.0, le=1.0, description="teacher temperature at the "
                                              "first step, raised linearly to teacher_temperature")
    warmup_teacher_temp_fraction: float = Field(0.3, ge=0.0, le=1.0, description="fraction of the training "
                                                "steps over which the teacher temperature is warmed up")
    center_momentum: float = Field(0.9, ge=0.0, le=1.0, description="momentum of the running centre of the "
                                   "teacher outputs")
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="teacher EMA momentum at the first step, "
                                 "raised to 1 along a cosine schedule (paper: 0.996)")
    freeze_last_layer_steps: int = Field(0, ge=0, le=1_000_000, description="optimiser steps during which "
                                         "the prototypes (last layer) are not trained (paper: one epoch)")
    head_batch_norm: bool | None = Field(None, description="batch norm after the hidden layers of the head (the "
                                         "reference implementation's use_bn_in_head); default: on for a "
                                         "ResNet, as in the paper's ResNet runs, off for a ViT")
    norm_last_layer: bool = Field(True, description="fix the weight-norm gain of the prototypes to 1 (paper); "
                                  "False learns it")
    init_center_from_batch: bool = Field(True, description="start the centre at the mean teacher output of the "
                                         "first batch instead of zero (the paper)")

    @model_validator(mode="after")
    def _local_smaller_than_global(self) -> DINOParams:
        if self.local_crop_min_scale >= self.global_crop_min_scale:
            raise ValueError(f"local_crop_min_scale ({self.local_crop_min_scale}) must be below "
                             f"global_crop_min_scale ({self.global_crop_min_scale}), the largest local crop")
        return self


class NormalizedLinear(nn.Module):
    """A bias-free linear layer whose output rows (prototypes) have unit norm, times a gain: weight
    normalisation (Salimans & Kingma 2016), DINO's last layer. The gain is fixed to 1 unless ``learn_gain``
    (the reference implementation's ``norm_last_layer=False``). Shapes: (B, in_dim) → (B, out_dim).

    ``forward(x, frozen=True)`` uses detached weights, so the layer gets no gradient (DINO's frozen last
    layer in the first epoch)."""

    def __init__(self, in_dim: int, out_dim: int, learn_gain: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(out_dim, 1)) if learn_gain else None

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        weight = F.normalize(self.weight, dim=1)
        if self.gain is not None:
            weight = weight * self.gain
        return F.linear(x, weight.detach() if frozen else weight)


class DINOHead(nn.Module):
    """DINO's projection head: Linear-GELU-Linear-GELU-Linear MLP to a bottleneck, L2 normalisation, then
    ``NormalizedLinear`` to ``output_dim`` prototypes (Caron et al. 2021, §3.1 and Appendix).

    Shapes: (B, input_dim) → (B, output_dim). Example: ``DINOHead(192, 512, 256, 4096)(torch.randn(2, 192))``.
    """

    def __init__(self, input_dim: int, hidden_dim: int, bottleneck_dim: int, output_dim: int,
                 batch_norm: bool = False, learn_gain: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for d_in in (input_dim, hidden_dim):
            layers += [nn.Linear(d_in, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.GELU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(hidden_dim, bottleneck_dim))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck_dim, output_dim, learn_gain)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return self.last_layer(z, frozen=freeze_last_layer)


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
class DINO(SSLMethod):
    Params = DINOParams
    default_lr = 5e-4
    default_optimizer = "adamw"
    default_weight_decay = 0.04
    default_clip_grad_norm = 3.0
    weight_decay_end_factor = 10.0
    families = ("vit", "resnet")
    category = "transformer"
    summary = ("self-distillation of a centred, sharpened EMA teacher into a multi-crop student "
               "(DINO: Caron et al. 2021)")
    params: DINOParams
    steps_done: torch.Tensor
    total_steps: torch.Tensor

    @classmethod
    def optimizer_defaults(cls, params: DINOParams, family: Family | None = None) -> OptimizerDefaults:
        """The paper's AdamW recipe on a ViT. On a ResNet, SGD at 0.12 per 256 images with weight decay 5e-4
        (rising to 5e-3 along the same cosine), the recipe that makes BYOL and SwAV learn on small images
        (docs/BENCHMARKS.md; the paper's ResNet recipe, SGD 0.03 with 1e-4, learned far more slowly there)."""
        defaults = super().optimizer_defaults(params, family)
        if family == "resnet":
            return dataclasses.replace(defaults, optimizer="sgd", learning_rate=0.12, weight_decay=5e-4)
        return defaults

    def __init__(self, backbone: Backbone, params: DINOParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        head_batch_norm = (params.head_batch_norm if params.head_batch_norm is not None
                           else backbone.family == "resnet")
        self.head = DINOHead(backbone.dim, params.hidden_dim, params.bottleneck_dim, params.output_dim,
                             head_batch_norm, not params.norm_last_layer)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.criterion = DINOLoss(params.output_dim, params.warmup_teacher_temperature, params.student_temperature,
                                  params.center_momentum)
        patch = getattr(backbone, "patch_size", 1)
        self.local_size = local_view_size(image_size, multiple=patch)
        global_scale = (params.global_crop_min_scale, 1.0)
        jitter = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, jitter_p=0.8, grayscale_p=0.2)
        global_views = (
            ViewConfig(size=image_size, crop_scale=global_scale, blur_p=1.0, **jitter),  # type: ignore[arg-type]
            ViewConfig(size=image_size, crop_scale=global_scale, blur_p=0.1, solarize_p=0.2,
                       **jitter),  # type: ignore[arg-type]
        )
        local_view = ViewConfig(size=self.local_size,
                                crop_scale=(params.local_crop_min_scale, params.global_crop_min_scale),
                                blur_p=0.5, **jitter)  # type: ignore[arg-type]
        #: The 2 global crops, then the local ones.
        self.view_configs = global_views + (local_view,) * params.n_local_crops
        #: View sizes at which a ResNet meets strided convolutions on 1x1 maps: run in fp32 (module docstring).
        self.fp32_sizes = {s for s in {image_size, self.local_size}
                           if backbone.family == "resnet" and one_pixel_convs(backbone, s)}
        # Optimiser steps taken and the schedule length last announced by the trainer (0: not yet known).
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("total_steps", torch.zeros((), dtype=torch.long))
        #: Teacher outputs of the last training step, folded into the centre by ``on_step_end``.
        self.pending_teacher_out: list[torch.Tensor] | None = None

    def current_teacher_temperature(self) -> float:
        """The teacher temperature of the next training step."""
        p = self.params
        return teacher_temperature(int(self.steps_done), int(self.total_steps), p.warmup_teacher_temperature,
                                   p.teacher_temperature, p.warmup_teacher_temp_fraction)

    def _embed(self, backbone: Backbone, head: DINOHead, crops: list[torch.Tensor], freeze_last_layer: bool = False
               ) -> list[torch.Tensor]:
        """Head outputs (B, K) per crop; consecutive crops of one size go through the backbone together."""
        b = crops[0].shape[0]
        features = multi_size_features(backbone, crops, self.fp32_sizes)
        out = head(features, freeze_last_layer=freeze_last_layer)
        return list(out.split(b))

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
                      ) -> StepOutput:
        crops = self.views(images, generator)
        freeze = int(self.steps_done) < self.params.freeze_last_layer_steps
        student = self._embed(self.backbone, self.head, crops, freeze_last_layer=freeze)
        with torch.no_grad():
            teacher = self._embed(self.teacher_backbone, self.teacher_head, crops[:2])  # type: ignore[arg-type]
        temperature = self.current_teacher_temperature()
        if self.training and int(self.steps_done) == 0 and self.params.init_center_from_batch:
            with torch.no_grad():
                self.criterion.center.copy_(torch.cat(teacher).float().mean(dim=0, keepdim=True))
        # The loss in eval mode leaves the centre alone; on_step_end moves it, so a skipped step does not.
        was_training = self.criterion.training
        self.criterion.eval()
        try:
            loss = self.criterion(student, teacher, teacher_temperature=temperature)
        finally:
            self.criterion.train(was_training)
        if was_training:
            self.pending_teacher_out = [t.detach() for t in teacher]
        return StepOutput(loss, {"teacher_temperature": temperature})

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = momentum_schedule(self.params.base_momentum, step, total_steps)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        if self.pending_teacher_out is not None:
            self.criterion.update_center(self.pending_teacher_out)
            self.pending_teacher_out = None
        self.steps_done.fill_(step + 1)
        self.total_steps.fill_(total_steps)

    def encoder(self) -> Backbone:
        """The teacher's backbone: the paper evaluates the teacher, which is the better encoder."""
        return self.teacher_backbone  # type: ignore[return-value]
