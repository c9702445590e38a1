"""Batched augmentations: crop geometry, colour maps against their formulas, seeding, and the eval transform."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ssl_core.augment import (
    GRAY_MEAN,
    GRAY_STD,
    RGB_MEAN,
    RGB_STD,
    ViewConfig,
    assemble_tiles,
    augment_view,
    color_jitter,
    eval_transform,
    grid_tiles,
    local_view_size,
    multi_crop,
    normalize,
    random_resized_crop,
    standardize_per_image,
)
from ssl_core.backbones import build_backbone


def _images(
    b: int = 6, c: int = 3, h: int = 12, w: int = 12, seed: int = 0, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g) * (high - low) + low


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


# random_resized_crop ------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize(("h", "w", "size"), [(12, 12, 8), (12, 12, 16), (10, 14, 8), (16, 9, 12)])
def test_crop_output_shape(c: int, h: int, w: int, size: int) -> None:
    out = random_resized_crop(_images(c=c, h=h, w=w), size, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, _gen())
    assert out.shape == (6, c, size, size)
    assert out.dtype == torch.float32
    assert out.min() >= 0
    assert out.max() <= 1  # bilinear sampling stays within the input's range


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [12, 8, 16, 9])
def test_full_crop_without_flip_is_a_plain_resize(c: int, size: int) -> None:
    x = _images(c=c)
    out = random_resized_crop(x, size, (1.0, 1.0), (1.0, 1.0), flip_p=0.0, generator=_gen())
    expected = x if size == 12 else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_flip_p_1_flips_horizontally() -> None:
    x = _images()
    out = random_resized_crop(x, 12, (1.0, 1.0), (1.0, 1.0), flip_p=1.0, generator=_gen())
    torch.testing.assert_close(out, x.flip(-1), rtol=0, atol=1e-5)


def test_crop_parameters_differ_between_images_of_a_batch() -> None:
    x = _images(b=1).expand(8, -1, -1, -1)
    out = random_resized_crop(x, 8, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, _gen())
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(out[i], out[j], atol=1e-3), (i, j)


def test_small_crops_with_extreme_ratios_stay_finite_and_in_range() -> None:
    x = _images(b=16, seed=3)
    out = random_resized_crop(x, 6, (0.05, 0.2), (1 / 3, 3.0), 0.5, _gen(1))
    assert torch.isfinite(out).all()
    assert out.min() >= x.min() - 1e-6
    assert out.max() <= x.max() + 1e-6


def test_same_seed_same_crops_other_seed_other_crops() -> None:
    x = _images()
    a = random_resized_crop(x, 8, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, _gen(5))
    b = random_resized_crop(x, 8, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, _gen(5))
    c = random_resized_crop(x, 8, (0.2, 1.0), (3 / 4, 4 / 3), 0.5, _gen(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


# color_jitter -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("strength", [0.4, 0.9])
def test_jitter_keeps_values_in_unit_range(c: int, strength: float) -> None:
    out = color_jitter(_images(b=16, c=c), strength, strength, strength, min(strength, 0.5), _gen())
    assert out.shape == (16, c, 12, 12)
    assert out.min() >= 0
    assert out.max() <= 1


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("brightness", [0.2, 0.8])
def test_brightness_scales_each_image_by_one_factor_in_range(c: int, brightness: float) -> None:
    """Inputs in [0.05, 0.5] are never clipped: out = x·f with one f ∈ [1 - v, 1 + v] per image."""
    x = _images(b=8, c=c, low=0.05, high=0.5)
    out = color_jitter(x, brightness, 0.0, 0.0, 0.0, _gen())
    factors = out / x
    per_image = factors.flatten(1)[:, :1]
    torch.testing.assert_close(factors.flatten(1), per_image.expand(-1, factors[0].numel()), rtol=1e-5, atol=1e-6)
    assert (per_image >= 1 - brightness - 1e-6).all()
    assert (per_image <= 1 + brightness + 1e-6).all()
    assert len(set(per_image.flatten().tolist())) == 8


def test_brightness_clips_at_one() -> None:
    """On a white image the output is min(f, 1) per image."""
    out = color_jitter(torch.ones(16, 3, 4, 4), 0.5, 0.0, 0.0, 0.0, _gen())
    per_image = out.flatten(1)
    assert (per_image == per_image[:, :1]).all()
    assert (per_image[:, 0] == 1).any()
    assert (per_image[:, 0] < 1).any()
    assert out.max() <= 1


@pytest.mark.parametrize("c", [1, 3])
def test_contrast_scales_deviations_from_the_mean_luma(c: int) -> None:
    x = _images(b=8, c=c, low=0.4, high=0.6)
    out = color_jitter(x, 0.0, 0.5, 0.0, 0.0, _gen())
    mean = (x if c == 1 else _luma(x).unsqueeze(1)).mean(dim=(1, 2, 3), keepdim=True)
    factors = ((out - mean) / (x - mean)).flatten(1)
    torch.testing.assert_close(factors, factors[:, :1].expand_as(factors), rtol=1e-3, atol=1e-3)
    assert (factors >= 0.5 - 1e-3).all()
    assert (factors <= 1.5 + 1e-3).all()


def test_saturation_keeps_luma() -> None:
    x = _images(b=8, low=0.3, high=0.7)
    out = color_jitter(x, 0.0, 0.0, 0.5, 0.0, _gen())
    torch.testing.assert_close(_luma(out), _luma(x), rtol=0, atol=1e-5)


def test_hue_rotation_keeps_luma_and_changes_colour() -> None:
    x = _images(b=8, low=0.4, high=0.6)
    out = color_jitter(x, 0.0, 0.0, 0.0, 0.5, _gen())
    torch.testing.assert_close(_luma(out), _luma(x), rtol=0, atol=1e-5)
    assert (out - x).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_hue_rotation_leaves_gray_pixels_unchanged() -> None:
    """Gray pixels have no chroma, so any hue rotation leaves them unchanged."""
    x = torch.full((4, 3, 5, 5), 0.3)
    torch.testing.assert_close(color_jitter(x, 0.0, 0.0, 0.0, 0.5, _gen()), x, rtol=0, atol=1e-5)


def test_jitter_is_seeded() -> None:
    x = _images()
    a = color_jitter(x, 0.4, 0.4, 0.4, 0.1, _gen(2))
    b = color_jitter(x, 0.4, 0.4, 0.4, 0.1, _gen(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# normalize, augment_view, eval_transform ----------------------------------------------------------------


def test_normalize_rgb_per_channel() -> None:
    x = _images(c=3)
    out = normalize(x)
    for ch in range(3):
        torch.testing.assert_close(out[:, ch], (x[:, ch] - RGB_MEAN[ch]) / RGB_STD[ch])


def test_normalize_gray_returns_three_equal_channels() -> None:
    x = _images(c=1)
    out = normalize(x)
    assert out.shape == (6, 3, 12, 12)
    for ch in range(3):
        torch.testing.assert_close(out[:, ch], (x[:, 0] - GRAY_MEAN[0]) / GRAY_STD[0])


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [8, 16])
def test_augment_view_shape_and_seeding(c: int, size: int) -> None:
    x = _images(b=8, c=c)
    cfg = ViewConfig(size=size)
    a = augment_view(x, cfg, _gen(4))
    assert a.shape == (8, 3, size, size)
    assert a.dtype == torch.float32
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, augment_view(x, cfg, _gen(4)), rtol=0, atol=0)
    assert not torch.allclose(a, augment_view(x, cfg, _gen(5)))


def test_augment_view_under_bf16_autocast() -> None:
    x = _images(b=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment_view(x, ViewConfig(size=8, jitter_p=0.5), _gen(0))
    assert out.shape == (8, 3, 8, 8)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize(("stored", "size"), [(12, 12), (12, 8), (8, 16)])
def test_eval_transform_uint8_and_float_agree(c: int, stored: int, size: int) -> None:
    raw = torch.randint(0, 256, (3, c, stored, stored), generator=_gen(), dtype=torch.uint8)
    out = eval_transform(raw, size)
    assert out.shape == (3, 3, size, size)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, eval_transform(raw.float() / 255, size))
    resized = raw.float() / 255
    if stored != size:
        resized = F.interpolate(resized, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(out, normalize(resized))
    assert raw.dtype == torch.uint8  # the input is not modified in place


def _blur_reference(image: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Direct 2-D convolution with an explicit normalised Gaussian, reflect padding, one image (C, H, W)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    k2d = torch.outer(g, g) / torch.outer(g, g).sum()
    c = image.shape[0]
    padded = torch.nn.functional.pad(image[None].double(), (radius,) * 4, mode="reflect")
    return torch.nn.functional.conv2d(padded, k2d.expand(c, 1, -1, -1), groups=c)[0].float()


@pytest.mark.parametrize("c", [1, 3])
def test_gaussian_blur_matches_a_direct_2d_convolution_per_image(c: int) -> None:
    from ssl_core.augment import gaussian_blur

    x = _images(b=3, c=c)
    sigma = torch.tensor([0.4, 0.9, 1.5])
    out = gaussian_blur(x, sigma)
    radius = 5  # ceil(3 * 1.5), capped at (12 - 1) // 2
    for i in range(3):
        torch.testing.assert_close(out[i], _blur_reference(x[i], float(sigma[i]), radius), atol=1e-5, rtol=1e-5)


def test_gaussian_blur_keeps_constant_images_and_the_mean_range() -> None:
    from ssl_core.augment import gaussian_blur

    x = torch.full((2, 1, 10, 10), 0.3)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.5, 2.0])), x)


def test_solarize_inverts_values_at_or_above_the_threshold() -> None:
    from ssl_core.augment import solarize

    x = torch.tensor([0.0, 0.49, 0.5, 0.8, 1.0]).view(1, 1, 1, 5)
    torch.testing.assert_close(solarize(x), torch.tensor([0.0, 0.49, 0.5, 0.2, 0.0]).view(1, 1, 1, 5))


def test_view_with_blur_and_solarize_is_seeded_and_finite() -> None:
    x = _images(b=8, c=3)
    cfg = ViewConfig(size=8, blur_p=0.5, solarize_p=0.5)
    a = augment_view(x, cfg, _gen(1))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, augment_view(x, cfg, _gen(1)), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("size", "multiple", "want"), [(224, 1, 96), (32, 1, 14), (32, 4, 16), (16, 4, 8), (16, 1, 8), (8, 4, 8)]
)
def test_local_view_size(size: int, multiple: int, want: int) -> None:
    assert local_view_size(size, multiple) == want


def test_multi_crop_gives_global_then_local_views_seeded() -> None:
    x = torch.rand(4, 1, 20, 20)
    g, loc = ViewConfig(size=16, crop_scale=(0.4, 1.0)), ViewConfig(size=8, crop_scale=(0.05, 0.4))
    views = multi_crop(x, g, loc, 2, 3, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 3
    again = multi_crop(x, g, loc, 2, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))
    assert not torch.equal(views[0], views[1])
    with pytest.raises(ValueError, match="n_global >= 1"):
        multi_crop(x, g, loc, 0, 2)


def test_grid_tiles_are_crops_of_their_own_cells() -> None:
    x = torch.arange(2 * 1 * 9 * 9, dtype=torch.float32).view(2, 1, 9, 9)
    tiles = grid_tiles(x, 3, 2, torch.Generator().manual_seed(0))
    assert tiles.shape == (2, 9, 1, 2, 2)
    for b in range(2):
        for cell in range(9):
            r0, c0 = (cell // 3) * 3, (cell % 3) * 3
            tile = tiles[b, cell, 0]
            # the tile is a contiguous 2x2 window inside cell rows r0..r0+2 and columns c0..c0+2
            matches = [
                (dy, dx)
                for dy, dx in itertools.product(range(2), range(2))
                if torch.equal(tile, x[b, 0, r0 + dy : r0 + dy + 2, c0 + dx : c0 + dx + 2])
            ]
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
            found = [
                (r0 + dy, c0 + dx)
                for dy, dx in itertools.product(range(2), range(2))
                if torch.equal(canvas[b, :, r0 + dy : r0 + dy + 3, c0 + dx : c0 + dx + 3], tiles[b, cell])
            ]
            assert len(found) == 1, (b, cell)
            ((y, x),) = found
            covered[y : y + 3, x : x + 3] = True
        assert (canvas[b][:, ~covered] == tiles[b].min()).all()
    offsets = {tuple(map(int, torch.nonzero(canvas[0, 0] == tiles[0, c, 0, 0, 0])[0])) for c in range(9)}
    again = assemble_tiles(tiles, 14, torch.Generator().manual_seed(1))
    assert offsets != {tuple(map(int, torch.nonzero(again[0, 0] == tiles[0, c, 0, 0, 0])[0])) for c in range(9)}
    with pytest.raises(ValueError, match="cell size 4"):
        assemble_tiles(torch.zeros(1, 9, 1, 5, 5), 14)
    with pytest.raises(ValueError, match="square number"):
        assemble_tiles(torch.zeros(1, 8, 1, 3, 3), 14)


def test_standardize_per_image_gives_zero_mean_unit_std_per_channel() -> None:
    x = torch.rand(5, 3, 6, 6) * 4 + 2
    y = standardize_per_image(x)
    torch.testing.assert_close(y.mean(dim=(2, 3)), torch.zeros(5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(2, 3), unbiased=False), torch.ones(5, 3), atol=1e-3, rtol=0)


def test_tiles_are_resized_to_a_safe_multiple_of_the_patch_size() -> None:
    from ssl_core.augment import tile_input_size
    from ssl_core.device import one_pixel_convs

    standard = build_backbone("resnet18", "standard")
    assert tile_input_size(9, standard) == 17
    assert not one_pixel_convs(standard, 17)  # 16 px meets 1x1 maps
    assert tile_input_size(9, build_backbone("resnet18", "small")) == 16
    vit = build_backbone("vit_tiny", image_size=32, patch_size=4)
    assert tile_input_size(9, vit) == 16
    assert tile_input_size(21, vit) == 24


def test_centred_grid_tiles_are_the_middle_of_their_cells() -> None:
    x = torch.rand(2, 3, 32, 32)
    tiles = grid_tiles(x, 3, 8, jitter=False)  # cells of 10 px: each tile starts 1 px into its cell
    for cell in range(9):
        r0, c0 = (cell // 3) * 10 + 1, (cell % 3) * 10 + 1
        assert torch.equal(tiles[:, cell], x[:, :, r0 : r0 + 8, c0 : c0 + 8])
