"""MoCo v2: momentum contrast with a queue of negatives (He et al. 2020, "Momentum Contrast for Unsupervised
Visual Representation Learning"; Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning").

A query encoder (backbone + 2-layer MLP head) is trained to pick the key of its own image, computed by a
key encoder, among the keys of earlier batches kept in a FIFO queue (InfoNCE, τ = 0.2). The key encoder is an
exponential moving average of the query encoder and takes no gradients.

Choices the papers leave open or that differ here, and why:

- **Momentum schedule.** Base momentum 0.99 (the paper's 0.999 is for 5000 steps per ImageNet epoch; short
  runs on small datasets need a key encoder that follows faster), raised to 1 along BYOL's cosine schedule
  (``ssl_core.ema.momentum_schedule``).
- **Symmetrised loss** (default; as in MoCo v3 and the authors' CIFAR demo): both views are queries and
  keys, the loss is the mean of the two directions and the keys of both views are enqueued. Every image
  contributes two loss terms per step, which matters more for small datasets than the extra key pass costs.
  ``symmetric=False`` gives the paper's one query, one key per image.
- **Queue size** 4096 by default (the paper's 65536 is 5 % of ImageNet), and never more than
  ``queue_max_fraction`` × the dataset size: a queue that holds keys of most of the dataset always holds a
  stale key of the query's own image, a near-copy of the positive counted as a negative.
- **The first step.** The queue is empty until the first step ends, and :class:`InfoNCELoss` refuses an empty
  queue. While it is empty, each query is contrasted with the keys of the *other* images of its batch (both
  views' keys when symmetrised), i.e. MoCo with the current batch as its dictionary. The queue itself only
  changes in ``on_step_end``, so a skipped step (non-finite gradients) leaves it untouched.
- **Shuffle-BN** is not used: it exists to stop batch-norm statistics leaking between the sub-batches of a
  multi-GPU step, and Jaga trains on one device.
- **Augmentations** are MoCo v2's (SimCLR's, with blur), with the milder crops and solarization this project
  measured to work better on 28–32 px images (see ``ssl_core.methods.simclr``).
- **Optimiser.** SGD (momentum 0.9) with weight decay 5e-4 (the CIFAR setting of the authors' demo; 1e-4 on
  ImageNet) and a base learning rate of 0.06 per 256 images, twice the paper's 0.03: on Fashion-MNIST (4096
  images, 10 epochs, batch 256, ResNet-18 at 32 px) 0.06 gave a kNN accuracy of 0.789, 0.03 gave 0.784 and
  0.12 gave 0.767.
- **Head.** MoCo v2's Linear(2048)-ReLU-Linear(128), no batch norm; at 512-d ResNet-18 features and 32 px it
  costs a few percent of a backbone pass, so it is not scaled down.
"""

from __future__ import annotations

import torch
from pydantic import Field

from ssl_core.augment import ViewConfig
from ssl_core.backbones import Backbone
from ssl_core.ema import ema_update, frozen_copy, momentum_schedule
from ssl_core.heads import ProjectionHead
from ssl_core.losses.info_nce import FeatureQueue, InfoNCELoss
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, SSLMethod, StepOutput


class MoCoParams(MethodParams):
    temperature: float = Field(0.2, gt=0.0, le=10.0, description="InfoNCE softmax temperature (MoCo v2: 0.2)")
    queue_size: int = Field(4096, ge=1, le=65536, description="number of negative keys kept in the queue "
                            "(the paper's 65536 is for ImageNet)")
    queue_max_fraction: float = Field(0.25, gt=0.0, le=1.0, description="the queue never holds more keys than "
                                      "this fraction of the number of training images, so that it rarely "
                                      "holds a stale key of the query's own image")
    base_momentum: float = Field(0.99, ge=0.0, le=1.0, description="key-encoder EMA momentum at the first "
                                 "step, raised to 1 along a cosine schedule (paper: 0.999, constant)")
    symmetric: bool = Field(True, description="use both views as queries and as keys (mean of the two losses) "
                            "instead of the paper's one query and one key per image")
    projection_dim: int = Field(128, ge=8, le=4096, description="output size of the MLP head (the key size)")
    hidden_dim: int = Field(2048, ge=8, le=8192, description="hidden size of the MLP head")
    crop_min_scale: float = Field(0.6, gt=0.0, le=1.0, description="smallest crop area as a fraction of the "
                                  "image (paper: 0.2; milder crops suit 28-32 px images)")
    blur_p: float = Field(0.5, ge=0.0, le=1.0, description="probability of a Gaussian blur per view")
    solarize_p: float = Field(0.2, ge=0.0, le=1.0, description="probability of solarization per view")


class MoCoHead(ProjectionHead):
    """MoCo v2's MLP head: Linear-ReLU-Linear, no batch norm."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__([(input_dim, hidden_dim, False, True), (hidden_dim, output_dim, False, False)])


def queue_length(params: MoCoParams, data: DataInfo) -> int:
    """``queue_size``, capped at ``queue_max_fraction`` of the dataset when its size is known (at least 1)."""
    if data.num_images <= 0:
        return params.queue_size
    return max(1, min(params.queue_size, int(params.queue_max_fraction * data.num_images)))


@METHODS.register("moco")
class MoCo(SSLMethod):
    Params = MoCoParams
    default_lr = 0.06
    default_optimizer = "sgd"
    default_weight_decay = 5e-4
    category = "contrastive"
    summary = "momentum key encoder and a queue of negatives, InfoNCE (MoCo v2: He et al. 2020, Chen et al. 2020)"
    params: MoCoParams

    def __init__(self, backbone: Backbone, params: MoCoParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.projection = MoCoHead(backbone.dim, params.hidden_dim, params.projection_dim)
        self.key_backbone = frozen_copy(backbone)
        self.key_projection = frozen_copy(self.projection)
        self.queue = FeatureQueue(queue_length(params, data), params.projection_dim)
        self.criterion = InfoNCELoss(params.temperature)
        view = ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), blur_p=params.blur_p,
                          solarize_p=params.solarize_p)
        self.view_configs = (view, view)
        #: Keys of the last training step, enqueued by ``on_step_end`` (dropped if the step is skipped).
        self.pending_keys: torch.Tensor | None = None

    def training_step(self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
                      ) -> StepOutput:
        b = images.shape[0]
        v1, v2 = self.views(images, generator)
        if self.params.symmetric:
            query_views, key_views = torch.cat([v1, v2]), torch.cat([v2, v1])
        else:
            query_views, key_views = v1, v2
        q = self.projection(self.backbone.features(query_views.contiguous(memory_format=torch.channels_last)))
        with torch.no_grad():
            k = self.key_projection(self.key_backbone.features(
                key_views.contiguous(memory_format=torch.channels_last)))
        # Row i of q and row i of k are two views of image i % b.
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
        losses = [self.criterion(q[i:i + 1], k[i:i + 1], k[image != i % b]) for i in range(q.shape[0])]
        return torch.stack(losses).mean()

    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = momentum_schedule(self.params.base_momentum, step, total_steps)
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_projection, self.projection, momentum)
        if self.pending_keys is not None:
            self.queue.enqueue(self.pending_keys)
            self.pending_keys = None
