"""Jigsaw: the permutation set, puzzles in the labelled order, training in either layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssl_core.augment import grid_tiles
from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.methods.jigsaw import maximal_hamming_permutations
from ssl_core.train import build_method
from tests.ssl_core.methods.helpers import resnet_method


@pytest.mark.parametrize("layout", ["image", "tiles"])
def test_jigsaw_trains_in_either_layout(layout: str) -> None:
    method = build_method(
        TrainConfig(method="jigsaw", image_size=33, stem="standard"), {"layout": layout}, DataInfo(4, 3)
    )
    out = method.training_step(torch.rand(4, 3, 33, 33), torch.arange(4), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert 0 <= out.logs["jigsaw_accuracy"] <= 1
    assert method.backbone.net.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("count", [2, 10, 100])
def test_permutation_set_is_unique_deterministic_and_far_apart(count: int) -> None:
    perms = maximal_hamming_permutations(count, seed=0)
    assert perms.shape == (count, 9)
    assert len({tuple(p) for p in perms}) == count
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert np.array_equal(perms, maximal_hamming_permutations(count, seed=0))
    distances = [(a != b).sum() for a, b in itertools.combinations(perms, 2)]
    rng = np.random.default_rng(1)
    random_set = [rng.permutation(9) for _ in range(count)]
    random_min = min((a != b).sum() for a, b in itertools.combinations(random_set, 2))
    assert min(distances) >= random_min
    assert min(distances) >= 6


def test_jigsaw_puzzles_are_tiles_in_the_labelled_order() -> None:
    method = resnet_method("jigsaw", image_size=33, num_images=4)
    images = torch.rand(4, 3, 33, 33)
    gen_state = torch.Generator().manual_seed(5)
    shuffled, labels = method.puzzles(images, gen_state)
    # Recompute the unshuffled tiles with the same random draws: augment + tiles consume the generator first.
    from ssl_core.augment import augment_view

    gen = torch.Generator().manual_seed(5)
    tiles = grid_tiles(augment_view(images, method.view, gen), 3, method.tile, gen)
    for b in range(4):
        order = method.permutations[labels[b]]
        for j in range(9):
            assert torch.equal(shuffled[b, j], tiles[b, order[j]])
        # the inverse permutation reassembles the grid
        inverse = torch.argsort(order)
        assert torch.equal(shuffled[b][inverse], tiles[b])


def test_loading_a_checkpoint_does_not_change_other_models_permutations() -> None:
    first = resnet_method("jigsaw", image_size=33, num_images=4)
    state = first.state_dict()
    state["permutations"] = state["permutations"].flip(0)
    first.load_state_dict(state)
    fresh = resnet_method("jigsaw", image_size=33, num_images=4)
    assert torch.equal(fresh.permutations, torch.from_numpy(maximal_hamming_permutations(10, 0)))
