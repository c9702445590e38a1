"""Inpainting: the masks, the loss on masked pixels only, the filled input."""

from __future__ import annotations

import pytest
import torch

from ssl_core.methods.base import DataInfo
from ssl_core.methods.inpainting import Inpainting, InpaintingParams, inpainting_mask, masked_l2
from tests.ssl_core.methods.helpers import tiny_vit


@pytest.mark.parametrize(("size", "fraction"), [(32, 0.5), (16, 0.25), (32, 0.75)])
def test_center_mask_is_a_central_square_of_the_requested_side(size: int, fraction: float) -> None:
    mask = inpainting_mask(3, size, "center", fraction)
    side = round(fraction * size)
    assert mask.shape == (3, 1, size, size)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.mean().item() == pytest.approx(fraction**2)
    rows = mask[0, 0].any(dim=1).nonzero().squeeze(1)
    assert len(rows) == side
    assert rows[0] == (size - side) // 2
    assert torch.equal(mask[0, 0], mask[0, 0].T)
    assert torch.equal(mask[0], mask[2])


@pytest.mark.parametrize(("fraction", "grid"), [(0.5, 4), (0.5, 8), (0.75, 4)])
def test_random_block_mask_covers_the_requested_area(fraction: float, grid: int) -> None:
    mask = inpainting_mask(16, 32, "random_blocks", fraction, grid, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mask.mean(dim=(1, 2, 3)), torch.full((16,), round(fraction**2 * grid**2) / grid**2))
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
    assert pred.grad is not None
    assert not (pred.grad * (1 - mask)).any()
    assert (pred.grad * mask).any()
    assert masked_l2(outside, target, mask, context_weight=0.1) > masked_l2(pred.detach(), target, mask, 0.1)


def test_inpainting_input_has_the_hole_filled_with_the_mean() -> None:
    m = Inpainting(tiny_vit(), InpaintingParams(mask="random_blocks"), 16, DataInfo(4, 3))
    images = torch.rand(4, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    view, masked, mask = m.masked_views(images, torch.Generator().manual_seed(0))
    assert view.shape == masked.shape == (4, 3, 16, 16)
    assert mask.shape == (4, 1, 16, 16)
    assert not (masked * mask).any()  # zero after normalisation is the mean colour
    torch.testing.assert_close(masked * (1 - mask), view * (1 - mask))
    assert mask.mean().item() == pytest.approx(0.25)
