"""The "does this method learn" protocol of ``tests/ssl_core/methods/test_every_method_learns.py`` and
``bench/learning_control.py``: Fashion-MNIST (``TRAIN_IMAGES`` to pretrain and as the kNN bank, ``QUERIES``
test images), ResNet-18 (standard stem) or ViT-Tiny (patch 4) at 32 px, batch 128, the method's defaults for
``epochs_for(method)`` epochs, then weighted kNN on whole images (or tile means for tile-trained methods).
Colorization pretrains on a class-tinted copy (:func:`pretraining_images`).
"""

from __future__ import annotations

import numpy as np
import torch

from ssl_core.backbones import Backbone, Family
from ssl_core.config import TrainConfig
from ssl_core.evaluate import PatchGrid, embed_images, knn_accuracy
from ssl_core.fashion_mnist import class_tinted
from ssl_core.methods import METHODS

TRAIN_IMAGES = 2048
QUERIES = 1000
IMAGE_SIZE = 32
BATCH_SIZE = 128
KNN_K = 20
KNN_TEMPERATURE = 0.1
#: Epochs of a method not in ``LONGER`` (128 steps).
DEFAULT_EPOCHS = 8
#: Methods that need longer than ``DEFAULT_EPOCHS`` to pass their random init by a clear margin
#: (docs/experiments/2026-12-02-below-random-init-longer-budgets.md and the later rounds).
LONGER: dict[str, int] = {
    "barlow_twins": 16,
    "byol": 192,
    "colorization": 16,
    "dino": 192,
    "exemplar": 32,
    "inpainting": 32,
    "instance_discrimination": 64,
    "mae": 32,
    "moco": 16,
    "simsiam": 192,
    "swav": 192,
    "vicreg": 32,
}


#: Methods checked on a family other than their first: DINO did not learn on ViT-Tiny within a test's
#: budget (docs/experiments/2026-12-03-below-random-init-long-schedules.md).
FAMILY: dict[str, Family] = {"dino": "resnet"}


def family_for(method: str) -> Family:
    """The backbone family the protocol trains ``method`` on: ResNet-18 or ViT-Tiny."""
    return FAMILY.get(method, METHODS.get(method).families[0])


def epochs_for(method: str) -> int:
    """The protocol's training budget for ``method``, in epochs."""
    return LONGER.get(method, DEFAULT_EPOCHS)


def config(method: str, *, epochs: int | None = None, seed: int = 0, learning_rate: float | None = None) -> TrainConfig:
    """The protocol's training configuration for ``method`` (``epochs``: the protocol's budget when None)."""
    family = family_for(method)
    size = {"resnet": dict(backbone="resnet18", stem="standard"), "vit": dict(backbone="vit_tiny", patch_size=4)}
    budget = epochs if epochs is not None else epochs_for(method)
    return TrainConfig(
        method=method,
        image_size=IMAGE_SIZE,
        batch_size=BATCH_SIZE,
        epochs=budget,
        seed=seed,
        learning_rate=learning_rate,
        **size[family],
    )  # type: ignore[arg-type]


def pretraining_images(method: str, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """What ``method`` pretrains on, from (N, 1, H, W) grayscale ``images``: the images, or for colorization a
    copy with one tint per garment type, so colour is predictable only by recognising the garment."""
    return class_tinted(images, labels, seed) if method == "colorization" else images


def encoder_knn(
    encoder: Backbone,
    bank: np.ndarray,
    bank_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    device: torch.device,
    image_size: int = IMAGE_SIZE,
    patches: PatchGrid | None = None,
) -> float:
    """Weighted kNN accuracy (k = ``KNN_K``, T = ``KNN_TEMPERATURE``, cosine) of ``encoder`` on (N, C, H, W)
    uint8 ``queries`` against ``bank`` at ``image_size``, whole or, with ``patches``, as the mean of tiles."""
    return knn_accuracy(
        embed_images(encoder, bank, image_size, device, patches=patches),
        bank_labels,
        embed_images(encoder, queries, image_size, device, patches=patches),
        query_labels,
        KNN_K,
        KNN_TEMPERATURE,
    )
