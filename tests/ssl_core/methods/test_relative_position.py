"""Relative position: pairs of the centre tile and the labelled neighbour."""

from __future__ import annotations

import torch

from ssl_core.augment import grid_tiles
from ssl_core.methods.relative_position import CENTRE, NEIGHBOURS
from tests.ssl_core.methods.helpers import resnet_method


def test_relative_position_pairs_take_the_centre_and_the_labelled_neighbour() -> None:
    method = resnet_method("relative_position", image_size=33, num_images=4)
    images = torch.rand(6, 3, 33, 33)
    centre, neighbour, labels = method.pairs(images, torch.Generator().manual_seed(2))
    from ssl_core.augment import augment_view

    gen = torch.Generator().manual_seed(2)
    tiles = grid_tiles(augment_view(images, method.view, gen), 3, method.tile, gen)
    for b in range(6):
        assert torch.equal(centre[b], tiles[b, CENTRE])
        assert torch.equal(neighbour[b], tiles[b, NEIGHBOURS[int(labels[b])]])
    assert len(NEIGHBOURS) == 8
    assert CENTRE not in NEIGHBOURS
