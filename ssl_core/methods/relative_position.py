"""Context prediction (Doersch et al. 2015, "Unsupervised Visual Representation Learning by Context
Prediction").

An MLP on the features of a 3×3 grid's centre tile and one neighbour predicts where the neighbour sits;
tiles are grayed with probability ``gray_p`` against the paper's chromatic-aberration shortcut, and the
encoder embeds an image as the mean of its tiles (``patch_grid``, Kolesnikov et al. 2019).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_core.augment import ViewConfig, augment_view, grid_tiles, tile_input_size, tile_inputs
from ssl_core.backbones import Backbone
from ssl_core.evaluate import PatchGrid
from ssl_core.heads import MLPHead
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param

#: The paper's grid: a centre tile and its eight neighbours.
GRID = 3
#: The centre cell, row-major (4), and the cells around it: label i ↔ NEIGHBOURS[i].
CENTRE = GRID * GRID // 2
NEIGHBOURS = tuple(cell for cell in range(GRID * GRID) if cell != CENTRE)


@dataclass(frozen=True, kw_only=True)
class RelativePositionParams(MethodParams):
    tile_fraction: float = param(
        0.8, gt=0.3, le=1.0, description="tile side as a fraction of its grid cell; the rest is a random gap"
    )
    gray_p: float = param(0.66, ge=0.0, le=1.0, description="probability of turning each tile gray")
    crop_min_scale: float = param(0.6, gt=0.0, le=1.0, description="smallest crop area before tiling")
    hidden_dim: int = param(512, ge=8, le=8192, description="hidden size of the position classifier")


@METHODS.register("relative_position")
class RelativePosition(SSLMethod[RelativePositionParams]):
    recipe = Recipe(OptimizerDefaults("sgd", 0.1, 5e-4, why="the pretext tasks' common SGD recipe"))
    category = "pretext"
    summary = "predict which of the 8 neighbours of the centre patch another patch is (Doersch et al. 2015)"

    def __init__(self, backbone: Backbone, params: RelativePositionParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        self.tile = max(1, round(image_size // GRID * params.tile_fraction))
        self.tile_input = tile_input_size(self.tile, backbone)
        self.classifier = MLPHead(2 * backbone.dim, params.hidden_dim, len(NEIGHBOURS))
        self.view = ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), grayscale_p=0.0)
        self.patch_grid = PatchGrid(GRID, self.tile, self.tile_input)

    def pairs(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre tiles (B, 3, t, t), neighbour tiles (B, 3, t, t) and labels (B,) in 0..7."""
        tiles = grid_tiles(augment_view(images, self.view, generator), GRID, self.tile, generator)
        b = tiles.shape[0]
        labels = torch.randint(0, len(NEIGHBOURS), (b,), generator=generator, device=images.device)
        cells = torch.tensor(NEIGHBOURS, device=images.device)[labels]
        rows = torch.arange(b, device=images.device)
        return tiles[:, CENTRE], tiles[rows, cells], labels

    def _prepare(self, tiles: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        gray = torch.rand(tiles.shape[0], generator=generator, device=tiles.device) < self.params.gray_p
        tiles = torch.where(gray[:, None, None, None], tiles.mean(dim=1, keepdim=True).expand_as(tiles), tiles)
        return tile_inputs(tiles, self.tile_input)

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        centre, neighbour, labels = self.pairs(images, generator)
        b = centre.shape[0]
        features = self.backbone.features(self._prepare(torch.cat([centre, neighbour]), generator))
        logits = self.classifier(torch.cat([features[:b], features[b:]], dim=1))
        loss = F.cross_entropy(logits.float(), labels)
        return StepOutput(loss, {"position_accuracy": float((logits.argmax(dim=1) == labels).float().mean())})
