"""MAE: masks, the masked-patch loss, patch order and position embeddings, the training step."""

from __future__ import annotations

import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.methods.mae import (
    MAE,
    MAEParams,
    masked_patch_loss,
    num_visible,
    patchify,
    random_masking,
    sincos_position_embedding,
    unpatchify,
)
from ssl_core.train import build_method
from tests.ssl_core.methods.helpers import tiny_vit

B = 4


def _images(size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "ratio"), [(16, 0.75), (64, 0.75), (16, 0.5), (49, 0.6), (4, 0.9), (4, 0.1)])
def test_mask_keeps_the_requested_number_of_patches(n: int, ratio: float) -> None:
    keep, mask, restore = random_masking(6, n, ratio, torch.Generator().manual_seed(0))
    n_keep = min(n - 1, max(1, round(n * (1 - ratio))))
    assert num_visible(n, ratio) == n_keep
    assert keep.shape == (6, n_keep)
    assert mask.shape == (6, n)
    assert restore.shape == (6, n)
    assert (mask.sum(dim=1) == n - n_keep).all()
    assert (mask.gather(1, keep) == 0).all()  # the kept patches are the unmasked ones
    assert all(len(set(row.tolist())) == n_keep for row in keep)


def test_mask_differs_between_images_and_is_reproducible() -> None:
    _, mask, _ = random_masking(8, 16, 0.75, torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in mask}) > 1
    _, again, _ = random_masking(8, 16, 0.75, torch.Generator().manual_seed(0))
    _, other, _ = random_masking(8, 16, 0.75, torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)
    assert not torch.equal(mask, other)


def test_restore_puts_tokens_back_in_place() -> None:
    n = 16
    keep, mask, restore = random_masking(3, n, 0.75, torch.Generator().manual_seed(0))
    positions = torch.arange(n).expand(3, n)
    visible = positions.gather(1, keep)
    filled = torch.cat([visible, torch.full((3, n - keep.shape[1]), -1)], dim=1).gather(1, restore)
    assert torch.equal(filled == -1, mask.bool())
    assert torch.equal(filled[~mask.bool()], positions[~mask.bool()])


def test_mae_loss_depends_only_on_masked_patches() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 8, 8)
    _, mask, _ = random_masking(2, 4, 0.5, torch.Generator().manual_seed(0))
    pred = torch.randn(2, 4, 48, requires_grad=True)
    for norm in (True, False):
        loss = masked_patch_loss(pred, images, mask, 4, norm)
        visible_noise = torch.randn(2, 4, 48) * (1 - mask)[..., None]
        masked_noise = torch.randn(2, 4, 48) * mask[..., None]
        torch.testing.assert_close(masked_patch_loss(pred + 10 * visible_noise, images, mask, 4, norm), loss)
        assert not torch.allclose(masked_patch_loss(pred + masked_noise, images, mask, 4, norm), loss)
        (grad,) = torch.autograd.grad(loss, pred)
        assert (grad[~mask.bool()] == 0).all()
        assert (grad[mask.bool()] != 0).any()


def test_mae_loss_matches_a_reference() -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 8, 8)
    pred = torch.randn(2, 4, 48)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1]])
    target = patchify(images, 4)
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    for norm, t in ((False, target), (True, normed)):
        per_patch = ((pred - t) ** 2).mean(-1)
        want = (per_patch[0, 0] + per_patch[0, 2] + per_patch[1, 3]) / 3
        torch.testing.assert_close(masked_patch_loss(pred, images, mask, 4, norm), want)
    assert masked_patch_loss(normed, images, mask, 4, True) < 1e-6


def test_patchify_round_trip_and_patch_order() -> None:
    x = torch.randn(2, 3, 12, 8)
    patches = patchify(x, 4)
    assert patches.shape == (2, 6, 48)
    torch.testing.assert_close(unpatchify(patches, 4, 12, 8), x, rtol=0, atol=0)
    # Row-major patch order, as the ViT's patch tokens: patch i covers rows 4·(i // 2), columns 4·(i % 2).
    for i in range(6):
        r, c = divmod(i, 2)
        region = x[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
        torch.testing.assert_close(unpatchify(patches[:, i : i + 1], 4, 4, 4), region)
    with pytest.raises(ValueError, match="must divide"):
        patchify(torch.randn(1, 3, 10, 8), 4)


def test_patch_order_matches_the_vit_tokens() -> None:
    """A patch embedding equal to patchify + a linear map gives the backbone's tokens (without positions)."""
    vit = tiny_vit()
    x = torch.randn(2, 3, 16, 16)
    conv = vit.net.patch_embed.proj
    # The conv weight flattened in patchify's (row, column, channel) order.
    w = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
    with torch.no_grad():
        tokens = vit.patch_tokens(x) - vit.net.pos_embed[:, 1:]
        torch.testing.assert_close(tokens, patchify(x, 4) @ w.T + conv.bias, atol=1e-5, rtol=1e-5)


def test_sincos_position_embedding() -> None:
    pe = sincos_position_embedding(16, 3, 4)
    assert pe.shape == (12, 16)
    assert torch.isfinite(pe).all()
    assert len({tuple(row.tolist()) for row in pe.round(decimals=5)}) == 12
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_position_embedding(10, 2, 2)


def test_mae_step_reconstructs_every_patch_and_trains_the_encoder() -> None:
    m = MAE(tiny_vit(), MAEParams(), 16, DataInfo(8, 1))
    assert m.encoder() is m.backbone
    pred, mask = m.reconstruct(torch.randn(B, 3, 16, 16), torch.Generator().manual_seed(0))
    assert pred.shape == (B, 16, 48)
    assert (mask.sum(1) == 12).all()
    before = [p.detach().clone() for p in m.backbone.parameters()]
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
    out = m.training_step(_images(channels=1, size=20), torch.arange(B), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.backbone.parameters(), strict=True))


def test_mae_refuses_a_resnet() -> None:
    cfg = TrainConfig(method="mae", backbone="resnet18", image_size=32, epochs=1)
    with pytest.raises(ValueError, match="does not support"):
        build_method(cfg, {})
    with pytest.raises(ValueError, match="does not support"):
        MAE(build_backbone("resnet18", "standard"), MAEParams(), 32, DataInfo())


def test_mae_refuses_a_decoder_width_the_heads_do_not_divide() -> None:
    with pytest.raises(ValueError, match="decoder_dim"):
        MAEParams(decoder_dim=100, decoder_heads=8)
