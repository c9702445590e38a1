"""Inpainting, after Pathak et al. 2016, "Context Encoders: Feature Learning by Inpainting" (CVPR 2016).

A central square (or random blocks) of each view is blanked; an up-convolutional decoder paints the view
back from the pooled features (MSE over the hole plus ``context_weight`` times that over the context).
Differs from the paper: no adversarial loss, and the context counts by default (0 is the paper's loss).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch

from ssl_core.augment import ViewConfig, augment_view
from ssl_core.backbones import Backbone
from ssl_core.heads import UpConvDecoder
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param

MaskKind = Literal["center", "random_blocks"]


def inpainting_mask(
    batch: int,
    size: int,
    kind: MaskKind,
    fraction: float,
    block_grid: int = 4,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Where to paint: (``batch``, 1, ``size``, ``size``) float, 1 in the hole. ``center``: one middle square of
    side round(``fraction`` · ``size``); ``random_blocks``: round(``fraction``² · ``block_grid``²) (≥ 1) random
    cells of a ``block_grid``² grid per image. Raises ``ValueError`` on an unknown kind."""
    if kind == "center":
        side = max(1, min(size, round(fraction * size)))
        lo = (size - side) // 2
        mask = torch.zeros(batch, 1, size, size, device=device)
        mask[:, :, lo : lo + side, lo : lo + side] = 1.0
        return mask
    if kind == "random_blocks":
        g = max(1, min(block_grid, size))
        n = max(1, min(g * g, round(fraction * fraction * g * g)))
        order = torch.rand(batch, g * g, generator=generator, device=device).argsort(dim=1)
        cells = torch.zeros(batch, g * g, device=device)
        cells.scatter_(1, order[:, :n], 1.0)
        edges = [round(i * size / g) for i in range(g + 1)]
        sides = torch.tensor([b - a for a, b in itertools.pairwise(edges)], device=device)
        cells = cells.view(batch, g, g).repeat_interleave(sides, dim=1).repeat_interleave(sides, dim=2)
        return cells.unsqueeze(1)
    raise ValueError(f"mask must be 'center' or 'random_blocks', got {kind!r}")


def masked_l2(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, context_weight: float = 0.0
) -> torch.Tensor:
    """MSE over the hole plus ``context_weight`` times the MSE over the context, in float32.
    Shapes: pred, target (B, C, H, W); mask (B, 1, H, W) with 1 in the hole → scalar."""
    se = (pred.float() - target.float()).pow(2)
    hole = mask.float().expand_as(se)
    loss = (se * hole).sum() / hole.sum().clamp(min=1.0)
    if context_weight > 0:
        context = 1.0 - hole
        loss = loss + context_weight * (se * context).sum() / context.sum().clamp(min=1.0)
    return loss


@dataclass(frozen=True, kw_only=True)
class InpaintingParams(MethodParams):
    mask: MaskKind = param(
        "center",
        description="'center': one central square (the paper's main variant); "
        "'random_blocks': random cells of a block_grid x block_grid grid",
    )
    mask_fraction: float = param(
        0.5,
        gt=0.0,
        lt=1.0,
        description="side of the hole as a fraction of the view's "
        "side; the masked area is its square (0.5: 1/4 of the view, as in the paper)",
    )
    block_grid: int = param(
        4, ge=2, le=16, description="random_blocks: cells per side of the grid the view is split into"
    )
    context_weight: float = param(
        1.0,
        ge=0.0,
        le=1.0,
        description="weight of the reconstruction error on the "
        "unmasked context (0: only the hole counts, as in the paper; 1 learns far "
        "more on small images)",
    )
    crop_min_scale: float = param(
        0.8,
        gt=0.0,
        le=1.0,
        description="smallest crop area as a fraction of the image (random resized crop and flip, no colour jitter)",
    )
    decoder_width: int = param(
        256, ge=16, le=1024, description="channels of the decoder's first (4x4) map, halved at every upsampling"
    )


@METHODS.register("inpainting")
class Inpainting(SSLMethod[InpaintingParams]):
    recipe = Recipe(OptimizerDefaults("adamw", 1e-3, 0.05, why="a standard AdamW recipe for an encoder-decoder"))
    category = "pretext"
    summary = (
        "paint a masked region back from its context, L2 on the hole and the context "
        "(Pathak et al. 2016, Context Encoders)"
    )

    def __init__(self, backbone: Backbone, params: InpaintingParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.decoder = UpConvDecoder(backbone.dim, 3, image_size, params.decoder_width)
        self.view = ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), jitter_p=0.0, grayscale_p=0.0)

    def masked_views(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised view, the view with its hole set to 0, mask with 1 in the hole), each (B, ·, S, S)."""
        p = self.params
        view = augment_view(images, self.view, generator)
        mask = inpainting_mask(
            view.shape[0], self.image_size, p.mask, p.mask_fraction, p.block_grid, generator, view.device
        )
        return view, view * (1.0 - mask), mask

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        view, masked, mask = self.masked_views(images, generator)
        pred = self.decoder(self.backbone.features(masked))
        return StepOutput(masked_l2(pred, view, mask, self.params.context_weight))
