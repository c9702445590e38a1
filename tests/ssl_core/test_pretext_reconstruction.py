"""Pretext tasks that reconstruct or identify their input: colorization, inpainting and exemplar."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core.augment import normalize
from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.heads import UpConvDecoder
from ssl_core.methods.base import DataInfo
from ssl_core.methods.colorization import (
    Colorization,
    ColorizationParams,
    ab_bins,
    rebalance_weights,
    rgb_to_lab,
    soft_encode,
)
from ssl_core.methods.exemplar import Exemplar, ExemplarParams, random_rotation
from ssl_core.methods.inpainting import Inpainting, InpaintingParams, inpainting_mask, masked_l2
from ssl_core.train import build_method


def _vit(size: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_tiny", image_size=size, patch_size=4)


def _uniform_images(colours: list[tuple[float, float, float]], size: int = 24) -> torch.Tensor:
    return torch.tensor(colours).view(-1, 3, 1, 1).expand(-1, -1, size, size).contiguous()


# Colorization ------------------------------------------------------------------------------------------------

def test_lab_conversion_matches_reference_values() -> None:
    lab = rgb_to_lab(_uniform_images([(1, 0, 0), (1, 1, 1), (0, 0, 0), (0.5, 0.5, 0.5)], size=1))[:, :, 0, 0]
    torch.testing.assert_close(lab[0], torch.tensor([53.24, 80.09, 67.20]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([100.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[2], torch.zeros(3), atol=0.05, rtol=0)
    assert abs(lab[3, 1]) < 0.05 and abs(lab[3, 2]) < 0.05  # grays have no chroma


def test_ab_bins_are_a_grid_of_in_gamut_cells() -> None:
    bins = ab_bins(10.0)
    assert bins.shape == (261, 2)
    assert torch.equal(bins, torch.round(bins / 10) * 10)
    assert (bins == 0).all(dim=1).any()  # the gray bin
    assert (bins.abs() <= 110).all()


def test_soft_encoding_puts_gaussian_weights_on_the_five_nearest_bins() -> None:
    bins = ab_bins(10.0)
    ab = torch.tensor([[0.0, 0.0], [33.0, -47.0]])
    t = soft_encode(ab, bins, sigma=5.0)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(2))
    assert ((t > 0).sum(dim=1) == 5).all()
    for row, value in zip(t, ab, strict=True):
        d = (bins - value).norm(dim=1)
        near = d.topk(5, largest=False).indices
        expected = torch.softmax(-d[near] ** 2 / 50, dim=0)
        torch.testing.assert_close(row[near], expected)
        assert int(row.argmax()) == int(d.argmin())


def test_rebalancing_weights_have_unit_mean_under_the_prior() -> None:
    prior = torch.tensor([0.7, 0.2, 0.05, 0.05])
    w = rebalance_weights(prior, 0.5)
    torch.testing.assert_close((prior * w).sum(), torch.tensor(1.0))
    assert w[0] < w[1] < w[2]  # rare colours weigh more
    torch.testing.assert_close(rebalance_weights(prior, 1.0), torch.ones(4))


def test_colorization_input_is_colourless_and_the_target_carries_the_colour() -> None:
    m = Colorization(_vit(), ColorizationParams(), 16, DataInfo(4, 3))
    images = _uniform_images([(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5), (0.2, 0.7, 0.3)])
    gray, x, ab = m.inputs_and_targets(images, torch.Generator().manual_seed(0))
    assert gray.shape == x.shape == (4, 3, 16, 16) and ab.shape == (4, 2, 4, 4)
    # Three equal channels holding the luma; the network input is that gray image normalised.
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    torch.testing.assert_close(gray[:, 0, 0, 0], torch.tensor([0.299, 0.114, 0.5, 0.2 * 0.299 + 0.7 * 0.587
                                                               + 0.3 * 0.114]))
    torch.testing.assert_close(x, normalize(gray))
    # The target is the colour: red and blue are far from gray and from each other, gray has none.
    expected = rgb_to_lab(images[:, :, :1, :1])[:, 1:, 0, 0]
    torch.testing.assert_close(ab.mean(dim=(2, 3)), expected, atol=1e-3, rtol=1e-4)
    assert ab[0, 0].min() > 70 and ab[1, 1].max() < -100 and ab[2].abs().max() < 0.05


def test_colorization_prior_is_committed_only_at_the_end_of_a_step() -> None:
    m = Colorization(_vit(), ColorizationParams(), 16, DataInfo(4, 3))
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    m.training_step(images, torch.arange(4), torch.Generator().manual_seed(0))
    assert m.prior_weight == 0 and not m.prior_sum.any()  # a skipped step leaves the prior alone
    histogram = m._pending_histogram
    assert histogram is not None
    m.on_step_end(0, 10)
    torch.testing.assert_close(m.prior_sum / m.prior_weight, histogram)
    assert "prior_sum" in m.state_dict() and "prior_weight" in m.state_dict()


def test_colorization_refuses_grayscale_datasets() -> None:
    message = r"colorization needs colour images; this dataset is grayscale \(1 channel\)"
    with pytest.raises(ValueError, match=message):
        Colorization.check_data(ColorizationParams(), DataInfo(100, 1))
    with pytest.raises(ValueError, match=message):
        build_method(TrainConfig(method="colorization", backbone="vit_tiny", image_size=16, patch_size=4, epochs=1),
                     {}, DataInfo(8, 1))
    Colorization.check_data(ColorizationParams(), DataInfo(100, 3))
    Colorization.check_data(ColorizationParams(), DataInfo())


# Inpainting ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "fraction"), [(32, 0.5), (16, 0.25), (32, 0.75)])
def test_center_mask_is_a_central_square_of_the_requested_side(size: int, fraction: float) -> None:
    mask = inpainting_mask(3, size, "center", fraction)
    side = round(fraction * size)
    assert mask.shape == (3, 1, size, size) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.mean().item() == pytest.approx(fraction ** 2)
    rows = mask[0, 0].any(dim=1).nonzero().squeeze(1)
    assert len(rows) == side and rows[0] == (size - side) // 2
    assert torch.equal(mask[0, 0], mask[0, 0].T) and torch.equal(mask[0], mask[2])


@pytest.mark.parametrize(("fraction", "grid"), [(0.5, 4), (0.5, 8), (0.75, 4)])
def test_random_block_mask_covers_the_requested_area(fraction: float, grid: int) -> None:
    mask = inpainting_mask(16, 32, "random_blocks", fraction, grid, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), torch.full((16,), round(fraction ** 2 * grid ** 2)
                                                                       / grid ** 2))
    cell = 32 // grid
    cells = mask[:, 0, ::cell, ::cell]  # whole cells are masked
    assert torch.equal(cells.repeat_interleave(cell, 1).repeat_interleave(cell, 2), mask[:, 0])
    assert len({tuple(c.flatten().tolist()) for c in cells}) > 1  # a different choice per image


def test_inpainting_loss_counts_only_the_masked_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 16, 16, generator=g)
    pred = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    mask = inpainting_mask(2, 16, "center", 0.5)
    loss = masked_l2(pred, target, mask)
    torch.testing.assert_close(loss, ((pred - target)[:, :, 4:12, 4:12] ** 2).mean())
    outside = pred.detach() + 5.0 * (1 - mask)
    inside = pred.detach() + 5.0 * mask
    assert masked_l2(outside, target, mask) == loss
    assert masked_l2(inside, target, mask) != loss
    loss.backward()
    assert pred.grad is not None and not (pred.grad * (1 - mask)).any() and (pred.grad * mask).any()
    assert masked_l2(outside, target, mask, context_weight=0.1) > masked_l2(pred.detach(), target, mask, 0.1)


def test_inpainting_input_has_the_hole_filled_with_the_mean() -> None:
    m = Inpainting(_vit(), InpaintingParams(mask="random_blocks"), 16, DataInfo(4, 3))
    images = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    view, masked, mask = m.masked_views(images, torch.Generator().manual_seed(0))
    assert view.shape == masked.shape == (4, 3, 16, 16) and mask.shape == (4, 1, 16, 16)
    assert not (masked * mask).any()  # zero after normalisation is the mean colour
    torch.testing.assert_close(masked * (1 - mask), view * (1 - mask))
    assert mask.mean().item() == pytest.approx(0.25)


@pytest.mark.parametrize("size", [1, 4, 8, 12, 32])
def test_decoder_paints_the_requested_size(size: int) -> None:
    assert UpConvDecoder(24, 5, size, width=32)(torch.randn(2, 24)).shape == (2, 5, size, size)


# Exemplar --------------------------------------------------------------------------------------------------

def test_exemplar_classes_are_the_images() -> None:
    m = Exemplar(_vit(), ExemplarParams(views_per_image=3), 16, DataInfo(11, 3))
    assert m.classifier[-1][0].out_features == 11
    indices = torch.tensor([7, 0, 10, 3])
    assert torch.equal(m.labels(indices), torch.tensor([7, 0, 10, 3] * 3))
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = m.training_step(images, indices, torch.Generator().manual_seed(0)).loss
        views = torch.cat(m.views(images, torch.Generator().manual_seed(0)))
        logits = m.classifier(m.backbone.features(views))
    assert views.shape == (12, 3, 16, 16)
    torch.testing.assert_close(loss, F.cross_entropy(logits, indices.repeat(3)))
    assert abs(loss.item() - math.log(11)) < 1.0  # a fresh classifier is close to uniform


def test_exemplar_hidden_layer() -> None:
    m = Exemplar(_vit(), ExemplarParams(hidden_dim=32), 16, DataInfo(5, 3))
    assert m.classifier[0][0].out_features == 32 and m.classifier[-1][0].out_features == 5


def test_exemplar_refuses_too_many_images_with_the_limit() -> None:
    with pytest.raises(ValueError, match="exemplar trains one class per image and handles at most 50000 images; "
                                         "this dataset has 60000"):
        Exemplar.check_data(ExemplarParams(), DataInfo(60_000, 3))
    with pytest.raises(ValueError, match="at most 100 images; this dataset has 101"):
        build_method(TrainConfig(method="exemplar", backbone="vit_tiny", image_size=16, patch_size=4, epochs=1),
                     {"max_images": 100}, DataInfo(101, 3))
    Exemplar.check_data(ExemplarParams(), DataInfo(50_000, 1))
    Exemplar.check_data(ExemplarParams(), DataInfo(0, 3))  # unknown size: decided when the data is known


def test_exemplar_needs_the_image_count_to_build() -> None:
    with pytest.raises(ValueError, match="number of images"):
        Exemplar(_vit(), ExemplarParams(), 16, DataInfo())


def test_exemplar_refuses_indices_beyond_its_classes() -> None:
    m = Exemplar(_vit(), ExemplarParams(), 16, DataInfo(4, 3))
    with pytest.raises(ValueError, match="out of range"):
        m.training_step(torch.rand(2, 3, 16, 16), torch.tensor([1, 4]), torch.Generator().manual_seed(0))


def test_random_rotation() -> None:
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(random_rotation(x, 0.0), x)
    y = random_rotation(x, 30.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(y, x)
    # A centred radially symmetric blob is unchanged inside the inscribed disc by any rotation about the centre.
    c = torch.arange(16) - 7.5
    r2 = c[:, None] ** 2 + c[None] ** 2
    blob = torch.exp(-r2 / 18).expand(3, 3, 16, 16)
    turned = random_rotation(blob, 180.0, torch.Generator().manual_seed(0))
    disc = r2 <= 7 ** 2
    torch.testing.assert_close(turned[..., disc], blob[..., disc], atol=0.02, rtol=0)
