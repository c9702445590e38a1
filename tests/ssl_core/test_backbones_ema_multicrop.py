"""ViT backbones, EMA teachers and multi-crop: the shared pieces the methods build on."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.augment import ViewConfig, local_view_size, multi_crop
from ssl_core.backbones import ViTBackbone, backbone_family, build_backbone, default_patch_size
from ssl_core.ema import ema_update, frozen_copy, momentum_schedule
from ssl_core.encoder import Embedder, EncoderInfo, load_encoder, save_encoder

# ViT backbones ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("vit_tiny", 192), ("vit_small", 384)])
def test_vit_features_tokens_and_other_input_sizes(name: str, dim: int) -> None:
    vit = build_backbone(name, image_size=16, patch_size=4).eval()
    assert isinstance(vit, ViTBackbone) and vit.dim == dim and backbone_family(name) == "vit"
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert vit.features(x).shape == (2, dim)
        tokens = vit.patch_tokens(x)
        assert tokens.shape == (2, 16, dim)
        # encode(all patch tokens) is the full forward pass: its class token is the features.
        torch.testing.assert_close(vit.encode(tokens)[:, 0], vit.features(x))
        assert vit.encode(tokens[:, :5]).shape == (2, 6, dim)
        assert vit.features(torch.randn(2, 3, 8, 8)).shape == (2, dim)  # position embeddings interpolated


def test_resnet_keeps_its_weights_in_channels_last_and_computes_the_same_features() -> None:
    resnet = build_backbone("resnet18", "standard").eval()
    assert resnet.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert frozen_copy(resnet).net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    plain = frozen_copy(resnet.net).to(memory_format=torch.contiguous_format)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(resnet.features(x), plain(x), rtol=1e-4, atol=1e-5)


def test_vit_refuses_a_patch_size_that_does_not_divide_the_image() -> None:
    with pytest.raises(ValueError, match="patch_size 5 must divide image_size 16"):
        build_backbone("vit_tiny", image_size=16, patch_size=5)


@pytest.mark.parametrize(("size", "patch"), [(32, 4), (64, 8), (224, 16), (28, 2), (16, 2), (96, 8)])
def test_default_patch_size(size: int, patch: int) -> None:
    assert default_patch_size(size) == patch and size % patch == 0


def test_vit_encoder_round_trip(tmp_path: Path, cpu: torch.device) -> None:
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=16, patch_size=4).eval()
    info = EncoderInfo("dino", "vit_tiny", "standard", 16, 3, (20, 20), 192, patch_size=4)
    save_encoder(tmp_path / "e.pt", vit, info, {})
    loaded, loaded_info = load_encoder(tmp_path / "e.pt", cpu)
    assert loaded_info == info
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 20, 20), dtype=np.uint8)
    np.testing.assert_allclose(Embedder(loaded, info, cpu).embed_arrays(images),
                               Embedder(vit, info, cpu).embed_arrays(images), atol=1e-6, rtol=0)


# EMA --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0.9, 0.99, 0.996])
def test_momentum_schedule_is_byols_cosine(base: float) -> None:
    total = 100
    for step in (0, 1, 25, 50, 99, 100, 150):
        k = min(step, total)
        want = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
        assert momentum_schedule(base, step, total) == pytest.approx(want)
    assert momentum_schedule(base, 0, total) == pytest.approx(base)
    assert momentum_schedule(base, total, total) == pytest.approx(1.0)
    assert momentum_schedule(base, 5, 0) == base


def test_ema_update_mixes_parameters_and_copies_buffers() -> None:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    before = [p.detach().clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(8, 4))  # moves the batch-norm statistics
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers(), strict=True):
        assert torch.equal(t_buf, s_buf)


def test_ema_update_refuses_different_structures() -> None:
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), 0.5)


# Multi-crop -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "multiple", "want"), [(224, 1, 96), (32, 1, 14), (32, 4, 16), (16, 4, 8),
                                                        (16, 1, 8), (8, 4, 8)])
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
