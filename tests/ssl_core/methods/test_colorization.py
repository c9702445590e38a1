"""Colorization: Lab conversion, the ab bins, soft encoding, rebalancing and the colourless input."""

from __future__ import annotations

import pytest
import torch

from ssl_core.augment import normalize
from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.methods.colorization import (
    Colorization,
    ColorizationParams,
    ab_bins,
    rebalance_weights,
    rgb_to_lab,
    soft_encode,
)
from ssl_core.train import build_method
from tests.ssl_core.methods.helpers import tiny_vit


def _uniform_images(colours: list[tuple[float, float, float]], size: int = 24) -> torch.Tensor:
    return torch.tensor(colours).view(-1, 3, 1, 1).expand(-1, -1, size, size).contiguous()


def test_lab_conversion_matches_reference_values() -> None:
    lab = rgb_to_lab(_uniform_images([(1, 0, 0), (1, 1, 1), (0, 0, 0), (0.5, 0.5, 0.5)], size=1))[:, :, 0, 0]
    torch.testing.assert_close(lab[0], torch.tensor([53.24, 80.09, 67.20]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([100.0, 0.0, 0.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(lab[2], torch.zeros(3), atol=0.05, rtol=0)
    assert abs(lab[3, 1]) < 0.05
    assert abs(lab[3, 2]) < 0.05  # grays have no chroma


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
        expected = torch.softmax(-(d[near] ** 2) / 50, dim=0)
        torch.testing.assert_close(row[near], expected)
        assert int(row.argmax()) == int(d.argmin())


def test_rebalancing_weights_have_unit_mean_under_the_prior() -> None:
    prior = torch.tensor([0.7, 0.2, 0.05, 0.05])
    w = rebalance_weights(prior, 0.5)
    torch.testing.assert_close((prior * w).sum(), torch.tensor(1.0))
    assert w[0] < w[1] < w[2]  # rare colours weigh more
    torch.testing.assert_close(rebalance_weights(prior, 1.0), torch.ones(4))


def test_colorization_input_is_colourless_and_the_target_carries_the_colour() -> None:
    m = Colorization(tiny_vit(), ColorizationParams(), 16, DataInfo(4, 3))
    images = _uniform_images([(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.5), (0.2, 0.7, 0.3)])
    gray, x, ab = m.inputs_and_targets(images, torch.Generator().manual_seed(0))
    assert gray.shape == x.shape == (4, 3, 16, 16)
    assert ab.shape == (4, 2, 4, 4)
    # Three equal channels holding the luma; the network input is that gray image normalised.
    assert torch.equal(gray[:, 0], gray[:, 1])
    assert torch.equal(gray[:, 0], gray[:, 2])
    torch.testing.assert_close(
        gray[:, 0, 0, 0], torch.tensor([0.299, 0.114, 0.5, 0.2 * 0.299 + 0.7 * 0.587 + 0.3 * 0.114])
    )
    torch.testing.assert_close(x, normalize(gray))
    # The target is the colour: red and blue are far from gray and from each other, gray has none.
    expected = rgb_to_lab(images[:, :, :1, :1])[:, 1:, 0, 0]
    torch.testing.assert_close(ab.mean(dim=(2, 3)), expected, atol=1e-3, rtol=1e-4)
    assert ab[0, 0].min() > 70
    assert ab[1, 1].max() < -100
    assert ab[2].abs().max() < 0.05


def test_colorization_prior_is_committed_only_at_the_end_of_a_step() -> None:
    m = Colorization(tiny_vit(), ColorizationParams(), 16, DataInfo(4, 3))
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    m.training_step(images, torch.arange(4), torch.Generator().manual_seed(0))
    assert m.prior_weight == 0
    assert not m.prior_sum.any()  # a skipped step leaves the prior alone
    histogram = m._pending_histogram
    assert histogram is not None
    m.on_step_end(0, 10)
    torch.testing.assert_close(m.prior_sum / m.prior_weight, histogram)
    assert "prior_sum" in m.state_dict()
    assert "prior_weight" in m.state_dict()


def test_colorization_refuses_grayscale_datasets() -> None:
    message = r"colorization needs colour images; this dataset is grayscale \(1 channel\)"
    with pytest.raises(ValueError, match=message):
        Colorization.check_data(ColorizationParams(), DataInfo(100, 1))
    with pytest.raises(ValueError, match=message):
        build_method(
            TrainConfig(method="colorization", backbone="vit_tiny", image_size=16, patch_size=4, epochs=1),
            {},
            DataInfo(8, 1),
        )
    Colorization.check_data(ColorizationParams(), DataInfo(100, 3))
    Colorization.check_data(ColorizationParams(), DataInfo())
