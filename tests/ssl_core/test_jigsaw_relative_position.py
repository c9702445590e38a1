"""Tiles, permutation sets and labels of the jigsaw and context-prediction pretext tasks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssl_core.augment import assemble_tiles, grid_tiles, standardize_per_image
from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.methods.jigsaw import maximal_hamming_permutations
from ssl_core.methods.relative_position import CENTRE, NEIGHBOURS
from ssl_core.train import build_method


def test_grid_tiles_are_crops_of_their_own_cells() -> None:
    x = torch.arange(2 * 1 * 9 * 9, dtype=torch.float32).view(2, 1, 9, 9)
    tiles = grid_tiles(x, 3, 2, torch.Generator().manual_seed(0))
    assert tiles.shape == (2, 9, 1, 2, 2)
    for b in range(2):
        for cell in range(9):
            r0, c0 = (cell // 3) * 3, (cell % 3) * 3
            tile = tiles[b, cell, 0]
            # the tile is a contiguous 2x2 window inside cell rows r0..r0+2 and columns c0..c0+2
            matches = [(dy, dx) for dy, dx in itertools.product(range(2), range(2))
                       if torch.equal(tile, x[b, 0, r0 + dy:r0 + dy + 2, c0 + dx:c0 + dx + 2])]
            assert matches, (b, cell)
    with pytest.raises(ValueError, match="cell size 3"):
        grid_tiles(x, 3, 4)


def test_assembled_tiles_sit_inside_their_cells_on_the_darkest_value() -> None:
    tiles = torch.arange(1, 2 * 9 * 2 * 3 * 3 + 1, dtype=torch.float32).view(2, 9, 2, 3, 3)
    canvas = assemble_tiles(tiles, 14, torch.Generator().manual_seed(0))  # cells of 4 px, a 1 px margin
    assert canvas.shape == (2, 2, 14, 14)
    for b in range(2):
        covered = torch.zeros(14, 14, dtype=torch.bool)
        for cell in range(9):
            r0, c0 = 1 + (cell // 3) * 4, 1 + (cell % 3) * 4
            found = [(r0 + dy, c0 + dx) for dy, dx in itertools.product(range(2), range(2))
                     if torch.equal(canvas[b, :, r0 + dy:r0 + dy + 3, c0 + dx:c0 + dx + 3], tiles[b, cell])]
            assert len(found) == 1, (b, cell)
            (y, x), = found
            covered[y:y + 3, x:x + 3] = True
        assert (canvas[b][:, ~covered] == tiles[b].min()).all()
    offsets = {tuple(map(int, torch.nonzero(canvas[0, 0] == tiles[0, c, 0, 0, 0])[0])) for c in range(9)}
    again = assemble_tiles(tiles, 14, torch.Generator().manual_seed(1))
    assert offsets != {tuple(map(int, torch.nonzero(again[0, 0] == tiles[0, c, 0, 0, 0])[0])) for c in range(9)}
    with pytest.raises(ValueError, match="cell size 4"):
        assemble_tiles(torch.zeros(1, 9, 1, 5, 5), 14)
    with pytest.raises(ValueError, match="square number"):
        assemble_tiles(torch.zeros(1, 8, 1, 3, 3), 14)


@pytest.mark.parametrize("layout", ["image", "tiles"])
def test_jigsaw_trains_in_either_layout(layout: str) -> None:
    method = build_method(TrainConfig(method="jigsaw", image_size=33, stem="standard"), {"layout": layout},
                          DataInfo(4, 3))
    out = method.training_step(torch.rand(4, 3, 33, 33), torch.arange(4), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and 0 <= out.logs["jigsaw_accuracy"] <= 1
    assert method.backbone.net.conv1.weight.grad.abs().sum() > 0


def test_standardize_per_image() -> None:
    x = torch.rand(5, 3, 6, 6) * 4 + 2
    y = standardize_per_image(x)
    torch.testing.assert_close(y.mean(dim=(2, 3)), torch.zeros(5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), torch.ones(5, 3), atol=1e-3, rtol=0)


@pytest.mark.parametrize("count", [2, 10, 100])
def test_permutation_set_is_unique_deterministic_and_far_apart(count: int) -> None:
    perms = maximal_hamming_permutations(count, seed=0)
    assert perms.shape == (count, 9) and len({tuple(p) for p in perms}) == count
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert np.array_equal(perms, maximal_hamming_permutations(count, seed=0))
    distances = [(a != b).sum() for a, b in itertools.combinations(perms, 2)]
    rng = np.random.default_rng(1)
    random_set = [rng.permutation(9) for _ in range(count)]
    random_min = min((a != b).sum() for a, b in itertools.combinations(random_set, 2))
    assert min(distances) >= random_min and min(distances) >= 6


def _method(name: str):  # type: ignore[no-untyped-def]
    return build_method(TrainConfig(method=name, image_size=33, stem="standard"), {}, DataInfo(4, 3))


def test_jigsaw_puzzles_are_tiles_in_the_labelled_order() -> None:
    method = _method("jigsaw")
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


def test_relative_position_pairs_take_the_centre_and_the_labelled_neighbour() -> None:
    method = _method("relative_position")
    images = torch.rand(6, 3, 33, 33)
    centre, neighbour, labels = method.pairs(images, torch.Generator().manual_seed(2))
    from ssl_core.augment import augment_view
    gen = torch.Generator().manual_seed(2)
    tiles = grid_tiles(augment_view(images, method.view, gen), 3, method.tile, gen)
    for b in range(6):
        assert torch.equal(centre[b], tiles[b, CENTRE])
        assert torch.equal(neighbour[b], tiles[b, NEIGHBOURS[int(labels[b])]])
    assert len(NEIGHBOURS) == 8 and CENTRE not in NEIGHBOURS


def test_tiles_are_resized_to_a_safe_multiple_of_the_patch_size() -> None:
    from ssl_core.augment import tile_input_size
    from ssl_core.backbones import build_backbone
    from ssl_core.device import one_pixel_convs

    standard = build_backbone("resnet18", "standard")
    assert tile_input_size(9, standard) == 17 and not one_pixel_convs(standard, 17)  # 16 px meets 1x1 maps
    assert tile_input_size(9, build_backbone("resnet18", "small")) == 16
    vit = build_backbone("vit_tiny", image_size=32, patch_size=4)
    assert tile_input_size(9, vit) == 16 and tile_input_size(21, vit) == 24


def test_loading_a_checkpoint_does_not_change_other_models_permutations() -> None:
    first = _method("jigsaw")
    state = first.state_dict()
    state["permutations"] = state["permutations"].flip(0)
    first.load_state_dict(state)
    assert torch.equal(_method("jigsaw").permutations, torch.from_numpy(maximal_hamming_permutations(10, 0)))


def test_centred_grid_tiles_are_the_middle_of_their_cells() -> None:
    x = torch.rand(2, 3, 32, 32)
    tiles = grid_tiles(x, 3, 8, jitter=False)  # cells of 10 px: each tile starts 1 px into its cell
    for cell in range(9):
        r0, c0 = (cell // 3) * 10 + 1, (cell % 3) * 10 + 1
        assert torch.equal(tiles[:, cell], x[:, :, r0:r0 + 8, c0:c0 + 8])


def _reference_patch_embedding(backbone: torch.nn.Module, images: np.ndarray, size: int, tile: int,
                               tile_input: int) -> torch.Tensor:
    """A hand-written patch embedding: per image, the nine centred tiles of the eval-transformed image, each
    standardised by the formula and resized, their features averaged, then L2-normalised."""
    import torch.nn.functional as F

    from ssl_core.augment import eval_transform

    out = []
    with torch.no_grad():
        for image in images:
            x = eval_transform(torch.from_numpy(image)[None], size)[0]
            cell, offset = size // 3, (size // 3 - tile) // 2
            features = []
            for r in range(3):
                for c in range(3):
                    t = x[:, r * cell + offset:r * cell + offset + tile, c * cell + offset:c * cell + offset + tile]
                    mean = t.mean(dim=(1, 2), keepdim=True)
                    std = ((t - mean) ** 2).mean(dim=(1, 2), keepdim=True).sqrt()
                    t = F.interpolate(((t - mean) / (std + 1e-5))[None], size=(tile_input, tile_input),
                                      mode="bilinear", align_corners=False)
                    features.append(backbone.features(t)[0])
            out.append(F.normalize(torch.stack(features).mean(dim=0), dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["jigsaw", "relative_position"])
def test_methods_trained_on_tiles_embed_an_image_by_its_tiles(name: str, cpu: torch.device) -> None:
    from ssl_core.evaluate import embed_images

    method = build_method(TrainConfig(method=name, image_size=32, stem="standard"), {}, DataInfo(4, 1))
    grid = method.patch_grid
    assert grid is not None and (grid.grid, grid.tile, grid.tile_input) == (3, method.tile, method.tile_input)
    backbone = method.encoder().eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    got = embed_images(backbone, images, 32, cpu, patches=grid)
    want = _reference_patch_embedding(backbone, images, 32, method.tile, method.tile_input)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, embed_images(backbone, images, 32, cpu), atol=1e-2)


def test_only_methods_trained_on_tiles_have_a_patch_grid() -> None:
    from ssl_core.methods import METHODS

    def built(name: str):  # type: ignore[no-untyped-def]
        on_resnet = "resnet" in METHODS.get(name).families
        cfg = (TrainConfig(method=name, image_size=32, stem="standard") if on_resnet else
               TrainConfig(method=name, backbone="vit_tiny", image_size=32, patch_size=4))
        return build_method(cfg, {}, DataInfo(16, 3))

    assert {name for name in METHODS.names() if built(name).patch_grid is not None} == {"jigsaw",
                                                                                        "relative_position"}
    image_layout = build_method(TrainConfig(method="jigsaw", image_size=32), {"layout": "image"}, DataInfo(4, 3))
    assert image_layout.patch_grid is None  # the backbone saw whole (shuffled) images
