"""Encoder files round trip and the Embedder serves unit vectors, by tiles for encoders trained on tiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.encoder import Embedder, EncoderInfo, Predictor, load_classifier, load_encoder, save_encoder
from ssl_core.evaluate import PatchGrid, embed_images
from ssl_core.finetune import Classifier, predict_logits


def _info(channels: int = 3, stem: str = "standard") -> EncoderInfo:
    return EncoderInfo(
        method="simclr",
        backbone="resnet18",
        stem=stem,
        image_size=16,
        channels=channels,
        stored_size=(12, 14),
        embedding_dim=512,
    )


def _trained_looking_backbone(stem: str) -> torch.nn.Module:
    """A fresh backbone with non-trivial batch-norm statistics, so a lost buffer would show."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", stem)
    with torch.no_grad():
        backbone.train()(torch.randn(4, 3, 16, 16))
    return backbone.eval()


@pytest.mark.parametrize("stem", ["standard", "small"])
def test_save_load_round_trip_gives_identical_embeddings(stem: str, tmp_path: Path, cpu: torch.device) -> None:
    backbone = _trained_looking_backbone(stem)
    info = _info(stem=stem)
    path = tmp_path / "encoder.pt"
    save_encoder(path, backbone, info, {"job_id": "abc", "knn_accuracy": 0.5})
    loaded, loaded_info = load_encoder(path, cpu)
    assert loaded_info == info
    assert isinstance(loaded_info.stored_size, tuple)
    assert not loaded.training
    assert torch.load(path, weights_only=True)["job_id"] == "abc"
    assert not path.with_suffix(".tmp").exists()

    images = np.random.default_rng(0).integers(0, 256, (5, 3, 12, 14), dtype=np.uint8)
    want = Embedder(backbone.to(memory_format=torch.channels_last), info, cpu).embed_arrays(images)
    got = Embedder(loaded, loaded_info, cpu).embed_arrays(images)
    assert got.shape == (5, 512)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_an_encoder_trained_on_tiles_is_served_by_its_tiles(tmp_path: Path, cpu: torch.device) -> None:
    backbone = _trained_looking_backbone("standard")
    grid = PatchGrid(grid=3, tile=4, tile_input=17)
    info = dataclasses.replace(_info(), patch_grid=grid)
    save_encoder(tmp_path / "encoder.pt", backbone, info, {})
    loaded, loaded_info = load_encoder(tmp_path / "encoder.pt", cpu)
    assert loaded_info == info
    assert isinstance(loaded_info.patch_grid, PatchGrid)
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 12, 14), dtype=np.uint8)
    got = Embedder(loaded, loaded_info, cpu).embed_arrays(images)
    want = embed_images(loaded, images, info.image_size, cpu, patches=grid).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.allclose(got, Embedder(loaded, _info(), cpu).embed_arrays(images), atol=1e-3)


def test_an_encoder_file_without_a_patch_grid_embeds_whole_images(tmp_path: Path, cpu: torch.device) -> None:
    """Files written before patch grids existed have no such key: they load as whole-image encoders."""
    backbone = _trained_looking_backbone("standard")
    save_encoder(tmp_path / "encoder.pt", backbone, _info(), {})
    state = torch.load(tmp_path / "encoder.pt", weights_only=True)
    del state["info"]["patch_grid"]
    torch.save(state, tmp_path / "old.pt")
    assert load_encoder(tmp_path / "old.pt", cpu)[1] == _info()


@pytest.mark.parametrize("channels", [1, 3])
def test_embed_arrays_returns_unit_vectors(channels: int, cpu: torch.device) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, channels, 12, 14), dtype=np.uint8)  # the stored size
    embedder = Embedder(_trained_looking_backbone("standard"), _info(channels=channels), cpu)
    out = embedder.embed_arrays(images)
    assert out.shape == (3, 512)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # Embedding one at a time gives the same vectors as the batch (eval mode: no batch statistics).
    np.testing.assert_allclose(embedder.embed_arrays(images[:1])[0], out[0], rtol=0, atol=1e-5)


def test_vit_encoder_round_trip(tmp_path: Path, cpu: torch.device) -> None:
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=16, patch_size=4).eval()
    info = EncoderInfo("dino", "vit_tiny", "standard", 16, 3, (20, 20), 192, patch_size=4)
    save_encoder(tmp_path / "e.pt", vit, info, {})
    loaded, loaded_info = load_encoder(tmp_path / "e.pt", cpu)
    assert loaded_info == info
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 20, 20), dtype=np.uint8)
    np.testing.assert_allclose(
        Embedder(loaded, info, cpu).embed_arrays(images),
        Embedder(vit, info, cpu).embed_arrays(images),
        atol=1e-6,
        rtol=0,
    )


def test_a_classifier_file_round_trips_and_predicts_probabilities(tmp_path: Path, cpu: torch.device) -> None:
    backbone = _trained_looking_backbone("standard")
    torch.manual_seed(1)
    classifier = Classifier(backbone, 3)
    path = tmp_path / "classifier.pt"
    save_encoder(path, backbone, _info(), {}, head=classifier.head, classes=["x", "y", "z"])
    loaded, info, classes = load_classifier(path, cpu)
    assert (info, classes) == (_info(), ["x", "y", "z"])
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 12, 14), dtype=np.uint8)
    predictor = Predictor(loaded, info, classes, cpu)
    probs = predictor.predict_arrays(images)
    expected = torch.softmax(predict_logits(classifier.eval(), images, 16, cpu), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    # Its encoder embeds as the encoder it was built from.
    np.testing.assert_allclose(
        predictor.embed_arrays(images), Embedder(backbone, _info(), cpu).embed_arrays(images), atol=1e-6
    )
    assert load_encoder(path, cpu)[1] == _info()


def test_an_encoder_file_is_not_a_classifier(tmp_path: Path, cpu: torch.device) -> None:
    save_encoder(tmp_path / "e.pt", _trained_looking_backbone("standard"), _info(), {})
    with pytest.raises(ValueError, match="not a classifier"):
        load_classifier(tmp_path / "e.pt", cpu)
    with pytest.raises(ValueError, match="one class name per output"):
        save_encoder(
            tmp_path / "c.pt", _trained_looking_backbone("standard"), _info(), {}, torch.nn.Linear(512, 3), ["a"]
        )
