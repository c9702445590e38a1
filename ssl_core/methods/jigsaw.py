"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving
Jigsaw Puzzles").

A view's 3×3 tiles (random gaps, each normalised on its own) are shuffled by one of a fixed set of
permutations, which an MLP on their concatenated features classifies. Differs from the paper: the set
maximises the minimum Hamming distance (paper: the sum); ``layout="image"`` lays the tiles out as one image.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.augment import (
    ViewConfig,
    assemble_tiles,
    augment_view,
    grid_tiles,
    tile_input_size,
    tile_inputs,
)
from ssl_core.backbones import Backbone
from ssl_core.evaluate import PatchGrid
from ssl_core.heads import MLPHead
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo, MethodParams, OptimizerDefaults, Recipe, SSLMethod, StepOutput
from ssl_core.params import param

GRID = 3


@functools.lru_cache(maxsize=8)
def maximal_hamming_permutations(count: int, seed: int = 0, size: int = GRID * GRID) -> np.ndarray:
    """``count`` permutations of ``size`` items, each added greedily as the farthest in minimum Hamming distance
    from those chosen, starting from a seeded random one. Shapes: → (count, size) int64."""
    every = np.array(list(itertools.permutations(range(size))), dtype=np.int8)
    if not 1 <= count <= len(every):
        raise ValueError(f"count must be between 1 and {len(every)}, got {count}")
    columns = np.ascontiguousarray(every.T)

    def distance_to(i: int) -> np.ndarray:
        d = np.zeros(len(every), dtype=np.int8)
        for position, value in enumerate(every[i]):
            d += columns[position] != value
        return d

    chosen = [int(np.random.default_rng(seed).integers(len(every)))]
    min_distance = distance_to(chosen[0])
    for _ in range(count - 1):
        nxt = int(np.argmax(min_distance))
        chosen.append(nxt)
        np.minimum(min_distance, distance_to(nxt), out=min_distance)
    return every[chosen].astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class JigsawParams(MethodParams):
    num_permutations: int = param(10, ge=2, le=1000, description="size of the permutation set (classes; paper: 1,000)")
    tile_fraction: float = param(
        0.85, gt=0.3, le=1.0, description="tile side as a fraction of its grid cell; the rest is a random gap"
    )
    crop_min_scale: float = param(0.6, gt=0.0, le=1.0, description="smallest crop area before tiling")
    hidden_dim: int = param(512, ge=8, le=8192, description="hidden size of the permutation classifier")
    permutation_seed: int = param(0, ge=0, le=2**31 - 1, description="seed of the permutation set")
    layout: Literal["tiles", "image"] = param(
        "tiles",
        description="tiles: each tile through the backbone on "
        "its own, features concatenated (the paper); image: the shuffled "
        "tiles laid out as one image, classified whole",
    )


@METHODS.register("jigsaw")
class Jigsaw(SSLMethod[JigsawParams]):
    recipe = Recipe(OptimizerDefaults("sgd", 0.1, 5e-4, why="the pretext tasks' common SGD recipe"))
    category = "pretext"
    summary = "reassemble a shuffled 3x3 puzzle: classify its permutation (Noroozi & Favaro 2016)"
    permutations: torch.Tensor

    def __init__(self, backbone: Backbone, params: JigsawParams, image_size: int, data: DataInfo) -> None:
        super().__init__(backbone, params, image_size, data)
        # A copy: load_state_dict writes into the buffer, which must not alias the cached array.
        self.register_buffer(
            "permutations",
            torch.from_numpy(maximal_hamming_permutations(params.num_permutations, params.permutation_seed).copy()),
        )
        cell = image_size // GRID
        self.tile = max(1, round(cell * params.tile_fraction))
        self.tile_input = tile_input_size(self.tile, backbone)
        features = backbone.dim * (GRID * GRID if params.layout == "tiles" else 1)
        self.classifier = MLPHead(features, params.hidden_dim, params.num_permutations)
        self.view = ViewConfig(size=image_size, crop_scale=(params.crop_min_scale, 1.0), grayscale_p=0.3)
        if params.layout == "tiles":
            self.patch_grid = PatchGrid(GRID, self.tile, self.tile_input)

    def puzzles(self, images: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffled tiles (B, 9, 3, t, t) and each puzzle's permutation index (B,): position j of puzzle b holds
        tile ``permutations[label[b], j]``."""
        tiles = grid_tiles(augment_view(images, self.view, generator), GRID, self.tile, generator)
        b = tiles.shape[0]
        labels = torch.randint(0, len(self.permutations), (b,), generator=generator, device=images.device)
        order = self.permutations[labels]
        shuffled = tiles[torch.arange(b, device=images.device)[:, None], order]
        return shuffled, labels

    def training_step(
        self, images: torch.Tensor, indices: torch.Tensor, generator: torch.Generator | None
    ) -> StepOutput:
        shuffled, labels = self.puzzles(images, generator)
        b = shuffled.shape[0]
        if self.params.layout == "image":
            x = assemble_tiles(shuffled, self.image_size, generator)
        else:
            x = tile_inputs(shuffled.flatten(0, 1), self.tile_input)
        features = self.backbone.features(x).reshape(b, -1)
        logits = self.classifier(features)
        loss = F.cross_entropy(logits.float(), labels)
        return StepOutput(loss, {"jigsaw_accuracy": float((logits.argmax(dim=1) == labels).float().mean())})
