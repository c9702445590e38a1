"""Lightly's side of the Jaga-vs-lightly method benchmarks: nine SSL methods built with lightly 1.6.0's modules.

For each method in ``LIGHTLY_METHODS``, ``build`` returns the model, lightly's transform, the optimiser and one
training step, written the way lightly trains the method itself, so that a harness can run lightly's recipe
next to Jaga's on the same data, backbone, batch, image size and time budget. The harness owns the loop: it
batches the transform's views, moves them to the device, calls ``training_step``, ``backward``,
``before_optimizer_step`` (if any), ``optimizer.step`` and ``zero_grad``, and anneals every param group's lr
from ``base_lrs`` by a cosine over the budget.

Sources, in the lightly repository (github.com/lightly-ai/lightly):

- ``docs/source/getting_started/benchmarks/cifar10_benchmark.py`` (ResNet-18 at 32 px, the setting closest to
  ours) for SimCLR, MoCo, BYOL, SimSiam, SwaV, DINO and Barlow Twins: heads, losses, transform arguments
  (``cj_strength=0.5`` where it sets it, no Gaussian blur at 32 px) and optimisers (SGD 0.06 × batch/128,
  momentum 0.9, weight decay 5e-4; Adam for SwaV).
- ``docs/source/getting_started/benchmarks/imagenette_benchmark.py`` for VICReg's optimiser (LARS: the CIFAR-10
  benchmark has no VICReg), ``examples/pytorch/vicreg.py`` for its head.
- ``examples/pytorch/mae.py`` and ``benchmarks/imagenet/vitb16/mae.py`` for MAE (masked ViT encoder,
  ``MaskedVisionTransformerDecoderTIMM`` with a linear embedding and prediction head, MSE on raw patches,
  AdamW 1.5e-4 × batch/256), on the ViT-Tiny Jaga uses with Jaga's decoder size.
- ``examples/pytorch/{moco,byol,dino}.py`` for the EMA momentum, ``cosine_schedule`` from 0.996 to 1 (the
  CIFAR-10 benchmark keeps it at 0.99), and DINO's frozen last layer during the first of 10 epochs.
- SwaV and DINO get multi-crop (2 global + ``N_LOCAL_CROPS`` local crops of 3/7 the side), as many local crops
  as Jaga's defaults take, so that both sides compute the same views (lightly's defaults take 6); the
  CIFAR-10 benchmark turns it off at 32 px.

All transforms are made grayscale-appropriate: saturation, hue and random grayscale do nothing to a mode-L
image and are set to 0, and views are normalised with one channel, with the statistics Jaga's evaluation
transform uses (``GRAY_NORMALIZE``). Every view is a (1, h, w) tensor; the harness expands it to 3 channels.
Each setup's ``recipe`` spells out its settings. fp32 unless the harness wraps the step in autocast.

Importing this module does not import lightly (only ``build`` does), so a process that only trains Jaga's side
does not pay for it.

    /work/main/.venv/bin/python bench/lightly_methods.py    # smoke check: every method, 2 steps, batch 8, 32 px
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torchvision
from PIL import Image
from torch import nn

from ssl_core.augment import GRAY_MEAN, GRAY_STD

if TYPE_CHECKING:
    from lightly.models.modules import DINOProjectionHead

LIGHTLY_METHODS: tuple[str, ...] = (
    "simclr",
    "moco",
    "byol",
    "simsiam",
    "swav",
    "dino",
    "mae",
    "barlow_twins",
    "vicreg",
)

# One-channel normalisation with the statistics of Jaga's evaluation transform (ssl_core.augment.normalize), so
# that lightly's encoders are trained on the input distribution they are evaluated on.
GRAY_NORMALIZE: dict[str, list[float]] = {"mean": list(GRAY_MEAN), "std": list(GRAY_STD)}
# Colour settings that would act on colour only: off for mode-L images.
GRAY_COLOUR: dict[str, Any] = {"cj_sat": 0.0, "cj_hue": 0.0, "random_gray_scale": 0.0, "normalize": GRAY_NORMALIZE}
_GRAY_NOTE = (
    f"cj_sat=0, cj_hue=0, random_gray_scale=0, normalize=mean {GRAY_NORMALIZE['mean']} std "
    f"{GRAY_NORMALIZE['std']} (1 channel)"
)

# EMA momentum of the momentum/teacher networks, as in lightly's examples: cosine_schedule(step, steps, 0.996, 1),
# there per epoch; here over a virtual step count spanning the harness's time budget.
EMA_START, EMA_END = 0.996, 1.0
EMA_VIRTUAL_STEPS = 1000
# examples/pytorch/dino.py trains 10 epochs and keeps the student's last layer fixed during the first one.
DINO_VIRTUAL_EPOCHS = 10
DINO_FREEZE_LAST_LAYER_EPOCHS = 1

FEATURE_DIM = 512  # ResNet-18's pooled features
# Local crops of DINO and SwAV: Jaga's default n_local_crops for both, so both sides compute the same views.
N_LOCAL_CROPS = 4


@dataclass
class LightlySetup:
    """Everything the harness needs to train one method the way lightly does."""

    #: Every module of the method (backbone, heads, momentum copies, stateful losses), already on the device.
    model: nn.Module
    #: Lightly's transform: a mode-L PIL image → its views, each (1, h, w) float.
    transform: Callable[[Image.Image], list[torch.Tensor]]
    optimizer: torch.optim.Optimizer
    #: Peak lr of each of ``optimizer``'s param groups, in order.
    base_lrs: list[float]
    #: (views, each (B, 3, h, w) on the device; progress in [0, 1]) → loss. Does any momentum update first.
    training_step: Callable[[list[torch.Tensor], float], torch.Tensor]
    #: → a module whose ``features(x)`` maps (B, 3, H, W) to (B, D): the encoder lightly evaluates.
    encoder: Callable[[], nn.Module]
    #: Human-readable settings: transform, heads, loss, optimizer, momentum, encoder, source, notes.
    recipe: dict[str, str]
    #: Called with progress after ``backward`` and before ``optimizer.step`` (DINO: last-layer freezing).
    before_optimizer_step: Callable[[float], None] | None = None


def local_crop_size(image_size: int) -> int:
    """Side of a multi-crop local view: 3/7 of the global side (96 for 224) rounded to an even number, ≥ 8."""
    return max(8, 2 * round(image_size * 3 / 14))


def ema_momentum(progress: float) -> float:
    """The examples' cosine EMA schedule from ``EMA_START`` to ``EMA_END``, at ``progress`` ∈ [0, 1]."""
    from lightly.utils.scheduler import cosine_schedule

    step = int(min(max(progress, 0.0), 1.0) * EMA_VIRTUAL_STEPS)
    return cosine_schedule(step, EMA_VIRTUAL_STEPS, EMA_START, EMA_END)


def resnet18_backbone(stem: str) -> nn.Sequential:
    """torchvision ResNet-18 without its fc layer: (B, 3, H, W) → (B, 512, 1, 1). ``stem="small"`` swaps in a
    3×3 stride-1 conv1 and drops the max-pool (the same modification as ``ssl_core.backbones``);
    ``stem="lightly_cifar"`` is lightly's own CIFAR ResNet-18 (``ResNetGenerator``) as its CIFAR-10 benchmark
    builds the backbone: its children without the linear layer, then adaptive average pooling."""
    if stem == "lightly_cifar":
        from lightly.models import ResNetGenerator

        resnet_cifar = ResNetGenerator("resnet-18")
        return nn.Sequential(*list(resnet_cifar.children())[:-1], nn.AdaptiveAvgPool2d(1))
    if stem not in ("small", "standard"):
        raise ValueError(f"stem must be 'small', 'standard' or 'lightly_cifar', got {stem!r}")
    resnet = torchvision.models.resnet18()
    if stem == "small":
        resnet.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        resnet.maxpool = nn.Identity()
    return nn.Sequential(*list(resnet.children())[:-1])


class ResNetFeatures(nn.Module):
    """The evaluated encoder of the ResNet methods: ``features(x)`` = pooled backbone output, (B, 512)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(start_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ViTFeatures(nn.Module):
    """MAE's evaluated encoder: ``MaskedVisionTransformerTIMM.forward`` without a mask, i.e. the normed class token
    of the ViT (global_pool "token"), as lightly's MAE benchmark evaluates it. (B, 3, H, W) → (B, embed_dim)."""

    def __init__(self, masked_vit: nn.Module) -> None:
        super().__init__()
        self.masked_vit = masked_vit

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked_vit(images=x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _two_layer_head(hidden_dim: int, output_dim: int, output_bn: bool, activation: nn.Module) -> nn.Module:
    """The CIFAR-10 benchmark's 2-layer heads: Linear(512, hidden) + BN + activation, Linear(hidden, output)
    (+ BN when ``output_bn``)."""
    from lightly.models.modules.heads import ProjectionHead

    return ProjectionHead(
        [
            (FEATURE_DIM, hidden_dim, nn.BatchNorm1d(hidden_dim), activation),
            (hidden_dim, output_dim, nn.BatchNorm1d(output_dim) if output_bn else None, None),
        ]
    )


# The methods ----------------------------------------------------------------------------------------------
class LightlyMethod(nn.Module):
    """A method's modules and its training step: ``training_step(views, progress)`` → loss; subclasses that need
    to act between ``backward`` and ``optimizer.step`` also define ``before_optimizer_step(progress)``."""

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        raise NotImplementedError


class TwoViewProjection(LightlyMethod):
    """One encoder and projection head for both views, the loss between the two projections (SimCLR, Barlow
    Twins, VICReg in lightly's examples)."""

    projection_head: nn.Module
    criterion: nn.Module

    def __init__(self, stem: str) -> None:
        """Builds the backbone first (the seeded weights match Jaga's); subclasses add the head and loss."""
        super().__init__()
        self.backbone = resnet18_backbone(stem)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        x0, x1 = views
        return self.criterion(self(x0), self(x1))


class SimCLR(TwoViewProjection):
    """cifar10_benchmark.py ``SimCLRModel``: one encoder, NT-Xent between the two views."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__(stem)
        self.projection_head = SimCLRProjectionHead(FEATURE_DIM, 512, 128)
        self.criterion = NTXentLoss()


class MoCo(LightlyMethod):
    """cifar10_benchmark.py ``MocoModel`` (MoCo v2: MLP head, memory bank of 4096 keys): a query encoder and its
    EMA key encoder; keys are computed on a shuffled batch (shuffled BN) and the loss is symmetrised."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = resnet18_backbone(stem)
        self.projection_head = MoCoProjectionHead(FEATURE_DIM, 512, 128)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128))

    def _query_key(self, x_query: torch.Tensor, x_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from lightly.models.utils import batch_shuffle, batch_unshuffle

        query = self.projection_head(self.backbone(x_query).flatten(start_dim=1))
        x_key, shuffle = batch_shuffle(x_key)
        key = self.projection_head_momentum(self.backbone_momentum(x_key).flatten(start_dim=1))
        return query, batch_unshuffle(key, shuffle)

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        from lightly.models.utils import update_momentum

        m = ema_momentum(progress)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        x0, x1 = views
        return 0.5 * (self.criterion(*self._query_key(x0, x1)) + self.criterion(*self._query_key(x1, x0)))


class BYOL(LightlyMethod):
    """cifar10_benchmark.py ``BYOLModel``: online network with predictor regresses the EMA target's projection of
    the other view, symmetrised."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = resnet18_backbone(stem)
        self.projection_head = BYOLProjectionHead(FEATURE_DIM, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        from lightly.models.utils import update_momentum

        m = ema_momentum(progress)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        x0, x1 = views
        p0, p1 = self(x0), self(x1)
        z0, z1 = self.forward_momentum(x0), self.forward_momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


class SimSiam(LightlyMethod):
    """cifar10_benchmark.py ``SimSiamModel``: 2-layer projector (CIFAR variant of the paper), predictor, stop-grad."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import SimSiamPredictionHead

        super().__init__()
        self.backbone = resnet18_backbone(stem)
        self.projection_head = _two_layer_head(2048, 2048, output_bn=True, activation=nn.ReLU(inplace=True))
        self.prediction_head = SimSiamPredictionHead(2048, 512, 2048)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        return z.detach(), self.prediction_head(z)

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        x0, x1 = views
        (z0, p0), (z1, p1) = self(x0), self(x1)
        return 0.5 * (self.criterion(z0, p1) + self.criterion(z1, p0))


class SwaV(LightlyMethod):
    """cifar10_benchmark.py ``SwaVModel`` with multi-crop: L2-normalised projections scored against 512 prototypes,
    which are renormalised before every step; codes from the 2 high-resolution crops (Sinkhorn)."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import SwaVLoss
        from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

        super().__init__()
        self.backbone = resnet18_backbone(stem)
        self.projection_head = SwaVProjectionHead(FEATURE_DIM, 512, 128)
        self.prototypes = SwaVPrototypes(128, n_prototypes=512)
        self.criterion = SwaVLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection_head(self.backbone(x).flatten(start_dim=1))
        return self.prototypes(nn.functional.normalize(z, dim=1, p=2))

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        self.prototypes.normalize()
        scores = [self(view) for view in views]
        return self.criterion(scores[:2], scores[2:])


def _dino_head(freeze_last_layer: int) -> DINOProjectionHead:
    """cifar10_benchmark.py's DINO head: ``DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)`` with its
    MLP cut to 2 layers (512 → 2048, BN, GELU → 256), then the L2-normalised bottleneck and the weight-normalised
    last layer to 2048 outputs."""
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.modules.heads import ProjectionHead

    head = DINOProjectionHead(FEATURE_DIM, 2048, 256, 2048, batch_norm=True, freeze_last_layer=freeze_last_layer)
    head.layers = ProjectionHead([(FEATURE_DIM, 2048, nn.BatchNorm1d(2048), nn.GELU()), (2048, 256, None, None)]).layers
    return head


class DINO(LightlyMethod):
    """cifar10_benchmark.py ``DINOModel`` with multi-crop and examples/pytorch/dino.py's EMA schedule and
    last-layer freezing: the EMA teacher sees the 2 global crops, the student all 8."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import DINOLoss
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.student_backbone = resnet18_backbone(stem)
        self.student_head = _dino_head(freeze_last_layer=DINO_FREEZE_LAST_LAYER_EPOCHS)
        self.teacher_backbone = copy.deepcopy(self.student_backbone)
        # A separately initialised head, as in lightly's example and benchmarks (not a copy of the student's).
        self.teacher_head = _dino_head(freeze_last_layer=-1)
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        # warmup_teacher_temp = teacher_temp = 0.04 by default: a constant teacher temperature.
        self.criterion = DINOLoss(output_dim=2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        from lightly.models.utils import update_momentum

        m = ema_momentum(progress)
        update_momentum(self.student_backbone, self.teacher_backbone, m)
        update_momentum(self.student_head, self.teacher_head, m)
        teacher_out = [self.forward_teacher(view) for view in views[:2]]
        student_out = [self(view) for view in views]
        return self.criterion(teacher_out, student_out)

    def before_optimizer_step(self, progress: float) -> None:
        """Zero the last layer's gradients during the first of ``DINO_VIRTUAL_EPOCHS`` virtual epochs."""
        epoch = min(int(max(progress, 0.0) * DINO_VIRTUAL_EPOCHS), DINO_VIRTUAL_EPOCHS - 1)
        self.student_head.cancel_last_layer_gradients(current_epoch=epoch)


MAE_EMBED_DIM, MAE_DEPTH, MAE_HEADS = 192, 12, 3  # ViT-Tiny, as Jaga's
MAE_DECODER_DIM, MAE_DECODER_DEPTH, MAE_DECODER_HEADS = 128, 2, 4  # Jaga's decoder size
MAE_MASK_RATIO = 0.75


class MAE(LightlyMethod):
    """examples/pytorch/mae.py / benchmarks/imagenet/vitb16/mae.py: the ViT encodes the class token and the 25 %
    visible patches; the decoder embeds them, scatters them into the full sequence (mask tokens elsewhere) and a
    linear head predicts the raw pixels of the masked patches, scored by MSE."""

    def __init__(self, image_size: int, patch_size: int) -> None:
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
        from lightly.models.modules.masked_vision_transformer_timm import init_weights
        from timm.models.vision_transformer import VisionTransformer

        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        vit = VisionTransformer(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=MAE_EMBED_DIM,
            depth=MAE_DEPTH,
            num_heads=MAE_HEADS,
            num_classes=0,
            dynamic_img_size=True,
        )
        self.patch_size = patch_size
        self.backbone = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.backbone.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, MAE_DECODER_DIM)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            embed_dim=MAE_DECODER_DIM,
            depth=MAE_DECODER_DEPTH,
            num_heads=MAE_DECODER_HEADS,
            num_prefix_tokens=vit.num_prefix_tokens,
            mlp_ratio=4.0,
        )
        self.prediction_head = nn.Linear(MAE_DECODER_DIM, patch_size**2 * 3)
        self.decoder_embed.apply(init_weights)
        self.prediction_head.apply(init_weights)
        self.criterion = nn.MSELoss()

    def training_step(self, views: list[torch.Tensor], progress: float) -> torch.Tensor:
        from lightly.models.utils import get_at_index, patchify, random_token_mask, set_at_index

        (images,) = views
        batch_size = images.shape[0]
        idx_keep, idx_mask = random_token_mask(
            size=(batch_size, self.sequence_length), mask_ratio=MAE_MASK_RATIO, device=images.device
        )
        encoded = self.decoder_embed(self.backbone.encode(images=images, idx_keep=idx_keep))
        tokens = encoded.new_zeros(batch_size, self.sequence_length, encoded.shape[-1])
        tokens = set_at_index(tokens, idx_keep, encoded.type_as(tokens))
        decoded = self.decoder(tokens, idx_mask=idx_mask)
        predictions = self.prediction_head(get_at_index(decoded, idx_mask))
        # Patch indices are token indices minus the class token.
        targets = get_at_index(patchify(images, self.patch_size), idx_mask - 1)
        return self.criterion(predictions, targets)


class BarlowTwins(TwoViewProjection):
    """cifar10_benchmark.py ``BarlowTwinsModel``: 2-layer projector, cross-correlation to the identity."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import BarlowTwinsLoss

        super().__init__(stem)
        self.projection_head = _two_layer_head(2048, 2048, output_bn=False, activation=nn.ReLU(inplace=True))
        self.criterion = BarlowTwinsLoss()


class VICReg(TwoViewProjection):
    """examples/pytorch/vicreg.py's model (the imagenette benchmark's ResNet-18 VICReg uses LARS, see build)."""

    def __init__(self, stem: str) -> None:
        from lightly.loss import VICRegLoss
        from lightly.models.modules.heads import VICRegProjectionHead

        super().__init__(stem)
        self.projection_head = VICRegProjectionHead(
            input_dim=FEATURE_DIM, hidden_dim=2048, output_dim=2048, num_layers=2
        )
        self.criterion = VICRegLoss()


# Building --------------------------------------------------------------------------------------------------
def _sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    """The CIFAR-10 benchmark's optimiser: SGD, momentum 0.9, weight decay 5e-4."""
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)


def _sgd_note(lr: float, rule: str = "0.06 × batch/128") -> str:
    return f"SGD lr {lr:g} ({rule}), momentum 0.9, weight decay 5e-4"


def _params(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


_EMA_NOTE = (
    f"EMA momentum cosine_schedule from {EMA_START} to {EMA_END} over the budget (examples/pytorch; the "
    "CIFAR-10 benchmark uses a constant 0.99), update_momentum before the forward passes"
)
_LR_NOTE = "peak lr; the harness anneals it by a cosine over the budget, no warm-up"


def _build(
    method: str, image_size: int, batch_size: int, stem: str, patch_size: int
) -> tuple[
    LightlyMethod, Callable[[Image.Image], list[torch.Tensor]], torch.optim.Optimizer, nn.Module, dict[str, str]
]:
    """(model, transform, optimizer, evaluated backbone wrapper, recipe) of ``method``, on the CPU."""
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.transforms import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
        DINOTransform,
        MAETransform,
        SimCLRTransform,
        SimSiamTransform,
        SwaVTransform,
        VICRegTransform,
    )
    from lightly.utils.lars import LARS

    lr_128 = 0.06 * batch_size / 128
    local = local_crop_size(image_size)
    bench = "docs/source/getting_started/benchmarks/cifar10_benchmark.py"
    model: Any  # the method's class, with its own attributes
    transform: Any  # lightly types it PIL | Tensor → list[Tensor] | list[PIL]; with ToTensor inside, tensors
    encoder: nn.Module
    if method in ("simclr", "moco"):
        model = SimCLR(stem) if method == "simclr" else MoCo(stem)
        transform = SimCLRTransform(input_size=image_size, cj_strength=0.5, gaussian_blur=0.0, **GRAY_COLOUR)
        t_note = (
            f"SimCLRTransform(input_size={image_size}, cj_strength=0.5, gaussian_blur=0.0, {_GRAY_NOTE}); "
            "min_scale 0.08, cj_prob 0.8, brightness/contrast 0.4 (0.8 × cj_strength), hflip 0.5 (defaults); "
            "2 views"
        )
        optimizer = _sgd(_params(model.backbone, model.projection_head), lr_128)
        if method == "simclr":
            recipe = {
                "source": f"{bench} SimCLRModel; examples/pytorch/simclr.py",
                "heads": "SimCLRProjectionHead(512, 512, 128)",
                "loss": "NTXentLoss() (temperature 0.5)",
            }
        else:
            recipe = {
                "source": f"{bench} MocoModel (MoCo v2); examples/pytorch/moco.py for the EMA schedule",
                "heads": "MoCoProjectionHead(512, 512, 128) + EMA copies of backbone and head",
                "loss": "NTXentLoss(temperature=0.1, memory_bank_size=(4096, 128)), symmetrised: "
                "0.5·(L(q0, k1) + L(q1, k0)); keys from batch_shuffle/batch_unshuffle (shuffled BN)",
                "momentum": _EMA_NOTE,
            }
        ema = "; the EMA copies are not optimised" if method == "moco" else ""
        recipe |= {"transform": t_note, "optimizer": _sgd_note(lr_128) + ema}
        encoder = ResNetFeatures(model.backbone)
    elif method in ("byol", "barlow_twins"):
        model = BYOL(stem) if method == "byol" else BarlowTwins(stem)
        transform = BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=image_size, gaussian_blur=0.0, **GRAY_COLOUR),
            view_2_transform=BYOLView2Transform(input_size=image_size, gaussian_blur=0.0, **GRAY_COLOUR),
        )
        t_note = (
            f"BYOLTransform(BYOLView1Transform(input_size={image_size}, gaussian_blur=0.0, ...), "
            f"BYOLView2Transform(input_size={image_size}, gaussian_blur=0.0, ...)) with {_GRAY_NOTE}; "
            "min_scale 0.08, cj_prob 0.8, brightness/contrast 0.4, hflip 0.5, solarization 0.2 on view 2 "
            "(defaults); 2 views"
        )
        if method == "byol":
            optimizer = _sgd(_params(model.backbone, model.projection_head, model.prediction_head), lr_128)
            recipe = {
                "source": f"{bench} BYOLModel; examples/pytorch/byol.py for the EMA schedule",
                "optimizer": _sgd_note(lr_128) + "; the EMA copies are not optimised",
                "heads": "BYOLProjectionHead(512, 1024, 256), BYOLPredictionHead(256, 1024, 256) + EMA "
                "copies of backbone and projection head",
                "loss": "NegativeCosineSimilarity, symmetrised: 0.5·(L(p0, z1) + L(p1, z0))",
                "momentum": _EMA_NOTE,
            }
        else:
            optimizer = _sgd(model.parameters(), lr_128)
            recipe = {
                "source": f"{bench} BarlowTwinsModel (BYOL transform, as there)",
                "optimizer": _sgd_note(lr_128),
                "heads": "ProjectionHead 512 → 2048 (BN, ReLU) → 2048 (the benchmark's 2-layer CIFAR head; "
                "examples/pytorch/barlowtwins.py uses the 3-layer BarlowTwinsProjectionHead(512, "
                "2048, 2048))",
                "loss": "BarlowTwinsLoss() (lambda 5e-3)",
            }
        recipe["transform"] = t_note
        encoder = ResNetFeatures(model.backbone)
    elif method == "simsiam":
        model = SimSiam(stem)
        transform = SimSiamTransform(input_size=image_size, gaussian_blur=0.0, **GRAY_COLOUR)
        optimizer = _sgd(model.parameters(), 0.06)
        recipe = {
            "source": f"{bench} SimSiamModel",
            "transform": f"SimSiamTransform(input_size={image_size}, gaussian_blur=0.0, {_GRAY_NOTE}); "
            "min_scale 0.2, cj_prob 0.8, brightness/contrast 0.4, hflip 0.5 (defaults); 2 views",
            "heads": "ProjectionHead 512 → 2048 (BN, ReLU) → 2048 (BN) (the benchmark's 2-layer CIFAR head), "
            "SimSiamPredictionHead(2048, 512, 2048)",
            "loss": "NegativeCosineSimilarity with stop-gradient on z, symmetrised: 0.5·(L(z0, p1) + L(z1, p0))",
            "optimizer": _sgd_note(0.06, "0.06, not scaled with the batch, as in the benchmark"),
        }
        encoder = ResNetFeatures(model.backbone)
    elif method == "swav":
        model = SwaV(stem)
        transform = SwaVTransform(
            crop_sizes=(image_size, local),
            crop_counts=(2, N_LOCAL_CROPS),
            cj_strength=0.5,
            gaussian_blur=0.0,
            **GRAY_COLOUR,
        )
        lr = 1e-3 * batch_size / 128
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-6)
        recipe = {
            "source": f"{bench} SwaVModel, with multi-crop, {N_LOCAL_CROPS} local crops (Jaga's default; the "
            "benchmark uses 2 crops at 32 px); examples/pytorch/swav.py",
            "transform": f"SwaVTransform(crop_sizes=({image_size}, {local}), crop_counts=(2, {N_LOCAL_CROPS}), "
            f"cj_strength=0.5, gaussian_blur=0.0, {_GRAY_NOTE}); crop scales (0.14, 1) global, "
            "(0.05, 0.14) local, cj_prob 0.8, brightness/contrast 0.4 (0.8 × cj_strength), "
            f"hflip 0.5 (defaults); {2 + N_LOCAL_CROPS} views",
            "heads": "SwaVProjectionHead(512, 512, 128), L2-normalised, SwaVPrototypes(128, n_prototypes=512); "
            "prototypes.normalize() before every step, never frozen (as in the example and the "
            "CIFAR-10 benchmark)",
            "loss": "SwaVLoss() (temperature 0.1, 3 Sinkhorn iterations, epsilon 0.05), codes from the 2 "
            "high-resolution crops, no queue",
            "optimizer": f"Adam lr {lr:g} (1e-3 × batch/128), weight decay 1e-6",
        }
        encoder = ResNetFeatures(model.backbone)
    elif method == "dino":
        model = DINO(stem)
        transform = DINOTransform(
            global_crop_size=image_size,
            local_crop_size=local,
            n_local_views=N_LOCAL_CROPS,
            cj_strength=0.5,
            gaussian_blur=(0.0, 0.0, 0.0),
            **GRAY_COLOUR,
        )
        optimizer = _sgd(_params(model.student_backbone, model.student_head), lr_128)
        recipe = {
            "source": f"{bench} DINOModel, with {N_LOCAL_CROPS} local crops (Jaga's default; lightly's is 6, "
            "its benchmark uses none at 32 px); examples/pytorch/dino.py for the EMA schedule and the "
            "frozen last layer",
            "transform": f"DINOTransform(global_crop_size={image_size}, local_crop_size={local}, "
            f"n_local_views={N_LOCAL_CROPS}, cj_strength=0.5, gaussian_blur=(0, 0, 0), "
            f"{_GRAY_NOTE}); crop scales (0.4, 1) global, (0.05, 0.4) local, cj_prob 0.8, "
            "brightness/contrast 0.4, "
            "hflip 0.5, solarization 0.2 on the 2nd global view (defaults); "
            f"{2 + N_LOCAL_CROPS} views",
            "heads": "DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True) with the benchmark's 2-layer "
            "MLP (512 → 2048, BN, GELU → 256), weight-normalised last layer 256 → 2048 (gain fixed); "
            "the teacher head is initialised separately (as in lightly), its backbone is a copy",
            "loss": "DINOLoss(output_dim=2048): teacher temperature 0.04 (constant: lightly's warm-up starts "
            "at 0.04 too), student 0.1, centre momentum 0.9; teacher on the 2 global crops, student "
            "on all 8",
            "optimizer": _sgd_note(lr_128) + " on the student; the student's last layer gets no update "
            f"during the first {DINO_FREEZE_LAST_LAYER_EPOCHS}/"
            f"{DINO_VIRTUAL_EPOCHS} of the budget (freeze_last_layer=1 of "
            "the example's 10 epochs, cancel_last_layer_gradients)",
            "momentum": _EMA_NOTE + " (teacher)",
        }
        encoder = ResNetFeatures(model.teacher_backbone)
    elif method == "mae":
        model = MAE(image_size, patch_size)
        transform = MAETransform(input_size=image_size, normalize=GRAY_NORMALIZE)
        decay, no_decay = get_weight_decay_parameters(
            [model.backbone, model.decoder_embed, model.decoder, model.prediction_head]
        )
        lr = 1.5e-4 * batch_size / 256
        optimizer = torch.optim.AdamW(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, weight_decay=0.05, betas=(0.9, 0.95)
        )
        n_patches = (image_size // patch_size) ** 2
        recipe = {
            "source": "examples/pytorch/mae.py, benchmarks/imagenet/vitb16/mae.py",
            "transform": f"MAETransform(input_size={image_size}, normalize=GRAY_NORMALIZE): "
            "RandomResizedCrop scale (0.2, 1) bicubic, hflip 0.5; 1 view",
            "heads": f"timm VisionTransformer(img_size={image_size}, patch_size={patch_size}, embed_dim=192, "
            "depth=12, num_heads=3, num_classes=0, dynamic_img_size=True) (ViT-Tiny) in "
            "MaskedVisionTransformerTIMM (MAE weight init, fixed sin-cos position embedding); "
            f"decoder: Linear(192, {MAE_DECODER_DIM}), MaskedVisionTransformerDecoderTIMM("
            f"embed_dim={MAE_DECODER_DIM}, depth={MAE_DECODER_DEPTH}, num_heads={MAE_DECODER_HEADS}, "
            f"mlp_ratio 4) (Jaga's decoder size; lightly's example: 512, depth 1, 16 heads), "
            f"Linear({MAE_DECODER_DIM}, {patch_size}²·3)",
            "loss": f"MSELoss on the raw (transform-normalised, not per-patch-normalised) pixels of the "
            f"masked patches; random_token_mask ratio {MAE_MASK_RATIO} "
            f"({int(n_patches * (1 - MAE_MASK_RATIO))} of {n_patches} patches visible + class token)",
            "optimizer": f"AdamW lr {lr:.4g} (1.5e-4 × batch/256), betas (0.9, 0.95), weight decay 0.05 "
            "except norm and bias parameters (2 param groups, get_weight_decay_parameters)",
        }
        encoder = ViTFeatures(model.backbone)
    elif method == "vicreg":
        model = VICReg(stem)
        transform = VICRegTransform(input_size=image_size, **GRAY_COLOUR)
        lr = 0.3 * batch_size / 256
        optimizer = LARS(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
        recipe = {
            "source": "examples/pytorch/vicreg.py (model, transform); docs/source/getting_started/benchmarks/"
            "imagenette_benchmark.py VICRegModel (optimizer: 'Training diverges without LARS'); "
            "the CIFAR-10 benchmark has no VICReg",
            "transform": f"VICRegTransform(input_size={image_size}, {_GRAY_NOTE}); cj_strength 0.5, "
            "brightness/contrast 0.4, min_scale 0.08, Gaussian blur 0.5 (sigmas 0.1–2), "
            "solarize 0.1, hflip 0.5 (defaults, as in the example); 2 views",
            "heads": "VICRegProjectionHead(512, 2048, 2048, num_layers=2): 512 → 2048 (BN, ReLU) → 2048",
            "loss": "VICRegLoss() (invariance 25, variance 25, covariance 1)",
            "optimizer": f"LARS lr {lr:g} (0.3 × batch/256), momentum 0.9, weight decay 1e-4, trust "
            "coefficient 0.001, on every parameter (the benchmark's 20-epoch warm-up is not "
            "reproduced)",
        }
        encoder = ResNetFeatures(model.backbone)
    else:
        raise ValueError(f"unknown method {method!r}; lightly methods: {', '.join(LIGHTLY_METHODS)}")
    recipe.setdefault("momentum", "none")
    recipe["optimizer"] += f"; {_LR_NOTE}"
    recipe["views"] = "each view a 1-channel (1, h, w) tensor, normalised; the harness expands it to 3 channels"
    recipe["encoder"] = {
        "dino": "the teacher backbone (as lightly's ImageNet DINO benchmark and the paper evaluate; the CIFAR-10 "
        "benchmark's kNN uses the student), features = pooled ResNet-18 output, 512-d",
        "mae": "MaskedVisionTransformerTIMM.forward(images), no mask: the ViT's normed class token, 192-d (as "
        "lightly's MAE benchmark evaluates)",
    }.get(
        method,
        f"the {'online ' if method in ('moco', 'byol') else ''}backbone, features = pooled ResNet-18 output, 512-d",
    )
    return model, transform, optimizer, encoder, recipe


def build(
    method: str, *, image_size: int, batch_size: int, stem: str, patch_size: int, device: torch.device, seed: int
) -> LightlySetup:
    """Lightly's ``method`` on a fresh backbone seeded by ``seed``. stem: "small" (3×3 stride-1 conv1, no max-pool)
    or "standard" torchvision ResNet-18 stem; ``patch_size`` is used by MAE's ViT only, ``stem`` by the others."""
    if method not in LIGHTLY_METHODS:
        raise ValueError(f"unknown method {method!r}; lightly methods: {', '.join(LIGHTLY_METHODS)}")
    torch.manual_seed(seed)
    model, transform, optimizer, encoder, recipe = _build(method, image_size, batch_size, stem, patch_size)
    model.to(device)  # in place, so the optimizer's parameters and the encoder's modules follow
    recipe["backbone"] = (
        f"timm ViT-Tiny, patch {patch_size}"
        if method == "mae"
        else "lightly ResNetGenerator('resnet-18') children without the linear layer + AdaptiveAvgPool2d (its "
        "CIFAR-10 benchmark's backbone)"
        if stem == "lightly_cifar"
        else f"torchvision resnet18() without fc, {stem} stem"
    )
    return LightlySetup(
        model=model,
        transform=transform,
        optimizer=optimizer,
        base_lrs=[g["lr"] for g in optimizer.param_groups],
        training_step=model.training_step,
        encoder=lambda: encoder,
        recipe=recipe,
        before_optimizer_step=getattr(model, "before_optimizer_step", None),
    )


# Smoke check -----------------------------------------------------------------------------------------------
def _smoke(method: str, images: list[Image.Image], device: torch.device) -> str:
    start = time.monotonic()
    setup = build(method, image_size=32, batch_size=len(images), stem="standard", patch_size=4, device=device, seed=0)
    views = torch.utils.data.default_collate([setup.transform(image) for image in images])
    channels = {v.shape[1] for v in views}
    views = [v.to(device).expand(-1, 3, -1, -1) if v.shape[1] == 1 else v.to(device) for v in views]
    losses = []
    for progress in (0.0, 0.5):
        for group, base_lr in zip(setup.optimizer.param_groups, setup.base_lrs, strict=True):
            group["lr"] = base_lr * 0.5 * (1 + math.cos(math.pi * progress))
        loss = setup.training_step(views, progress)
        if not torch.isfinite(loss):
            raise AssertionError(f"{method}: loss {loss.item()} at progress {progress}")
        loss.backward()
        if setup.before_optimizer_step is not None:
            setup.before_optimizer_step(progress)
        setup.optimizer.step()
        setup.optimizer.zero_grad()
        losses.append(loss.item())
    encoder = setup.encoder()
    encoder.eval()
    with torch.no_grad():
        features = cast(Any, encoder).features(torch.randn(len(images), 3, 32, 32, device=device))
    if features.ndim != 2 or features.shape[0] != len(images) or not torch.isfinite(features).all():
        raise AssertionError(f"{method}: features of shape {tuple(features.shape)}")
    sizes = sorted({v.shape[-1] for v in views}, reverse=True)
    return (
        f"{method:<13} {len(views)} view(s) of {'/'.join(map(str, sizes))} px, "
        f"{'/'.join(map(str, sorted(channels)))} channel(s) from the transform  "
        f"loss {losses[0]:.4f} → {losses[1]:.4f}  features {tuple(features.shape)}  "
        f"lr {', '.join(f'{lr:.3g}' for lr in setup.base_lrs)}  {time.monotonic() - start:.1f}s"
    )


if __name__ == "__main__":
    import numpy as np

    rng = np.random.default_rng(0)
    smoke_images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(8)]
    for name in LIGHTLY_METHODS:
        print(_smoke(name, smoke_images, torch.device("cpu")), flush=True)
