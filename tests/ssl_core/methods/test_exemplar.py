"""Exemplar: one class per image, its limits, and the random rotation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.methods.exemplar import Exemplar, ExemplarParams, random_rotation
from ssl_core.train import build_method
from tests.ssl_core.methods.helpers import tiny_vit


def test_exemplar_classes_are_the_images() -> None:
    m = Exemplar(tiny_vit(), ExemplarParams(views_per_image=3), 16, DataInfo(11, 3))
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
    m = Exemplar(tiny_vit(), ExemplarParams(hidden_dim=32), 16, DataInfo(5, 3))
    assert m.classifier[0][0].out_features == 32
    assert m.classifier[-1][0].out_features == 5


def test_exemplar_refuses_too_many_images_with_the_limit() -> None:
    with pytest.raises(
        ValueError, match="exemplar trains one class per image and handles at most 50000 images; this dataset has 60000"
    ):
        Exemplar.check_data(ExemplarParams(), DataInfo(60_000, 3))
    with pytest.raises(ValueError, match="at most 100 images; this dataset has 101"):
        build_method(
            TrainConfig(method="exemplar", backbone="vit_tiny", image_size=16, patch_size=4, epochs=1),
            {"max_images": 100},
            DataInfo(101, 3),
        )
    Exemplar.check_data(ExemplarParams(), DataInfo(50_000, 1))
    Exemplar.check_data(ExemplarParams(), DataInfo(0, 3))  # unknown size: decided when the data is known


def test_exemplar_needs_the_image_count_to_build() -> None:
    with pytest.raises(ValueError, match="number of images"):
        Exemplar(tiny_vit(), ExemplarParams(), 16, DataInfo())


def test_exemplar_refuses_indices_beyond_its_classes() -> None:
    m = Exemplar(tiny_vit(), ExemplarParams(), 16, DataInfo(4, 3))
    with pytest.raises(ValueError, match="out of range"):
        m.training_step(torch.rand(2, 3, 16, 16), torch.tensor([1, 4]), torch.Generator().manual_seed(0))


def test_random_rotation() -> None:
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(random_rotation(x, 0.0), x)
    y = random_rotation(x, 30.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert not torch.allclose(y, x)
    # A centred radially symmetric blob is unchanged inside the inscribed disc by any rotation about the centre.
    c = torch.arange(16) - 7.5
    r2 = c[:, None] ** 2 + c[None] ** 2
    blob = torch.exp(-r2 / 18).expand(3, 3, 16, 16)
    turned = random_rotation(blob, 180.0, torch.Generator().manual_seed(0))
    disc = r2 <= 7**2
    torch.testing.assert_close(turned[..., disc], blob[..., disc], atol=0.02, rtol=0)
