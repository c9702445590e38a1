"""Every method learns: on a Fashion-MNIST subset with a small CPU budget, the trained encoder's kNN accuracy
beats the randomly initialised encoder's under the same protocol.

Protocol: the first 2,048 Fashion-MNIST train images (pretraining set and kNN bank), the first 1,000 test
images as queries; ResNet-18 (standard stem) at 32 px, or ViT-tiny (patch 4) at 32 px for ViT-only methods;
batch 128, ``EPOCHS`` epochs (a fixed amount of compute, so the outcome does not depend on how busy the
machine is), seed 0, each method's default recipe; weighted kNN, k = 20, T = 0.1, cosine similarity, the
evaluation transform. Colorization trains on a class-tinted copy (``class_tinted``) and is evaluated on the
grayscale images like every other method.

``CI_SAMPLE`` runs in every test run; the rest are marked ``slow`` (``pytest -m slow``, up to two minutes
per method). Not every method beats its random initialisation at this budget yet: ``bench/bench_methods.py``
measures them all at a 2-minute budget and ``bench/learning_control.py`` under this protocol, beside a control
run that cannot move the weights (docs/BENCHMARKS.md); the slow tests of those that do not still fail, on
purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_core.config import TrainConfig
from ssl_core.evaluate import embed_images, knn_accuracy
from ssl_core.fashion_mnist import class_tinted
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.train import Trainer, build_method, initial_backbone

EPOCHS = 8
TRAIN_IMAGES = 2048
QUERIES = 1000
#: Methods whose learning test runs in every CI run; the others are marked slow.
CI_SAMPLE: tuple[str, ...] = ("simclr", "rotation")


def _cases() -> list[object]:
    return [pytest.param(m, marks=() if m in CI_SAMPLE else pytest.mark.slow) for m in METHODS.names()]


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from ssl_core.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist

    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    train, train_labels = load_fashion_mnist("train", limit=TRAIN_IMAGES)
    test, test_labels = load_fashion_mnist("test", limit=QUERIES)
    return train[:, None], train_labels, test[:, None], test_labels


def _knn(encoder: torch.nn.Module, data: tuple[np.ndarray, ...], cpu: torch.device) -> float:
    train, train_labels, test, test_labels = data
    bank = embed_images(encoder, train, 32, cpu)
    queries = embed_images(encoder, test, 32, cpu)
    return knn_accuracy(bank, train_labels, queries, test_labels, k=20, temperature=0.1)


@pytest.mark.parametrize("method", _cases())
def test_the_trained_encoder_beats_its_random_initialisation(method: str, fashion, cpu: torch.device) -> None:
    family = METHODS.get(method).families[0]
    size = {"resnet": dict(backbone="resnet18", stem="standard"), "vit": dict(backbone="vit_tiny", patch_size=4)}
    cfg = TrainConfig(method=method, image_size=32, batch_size=128, epochs=EPOCHS,
                      **size[family])  # type: ignore[arg-type]
    images = fashion[0]
    if method == "colorization":  # needs colour: each garment type gets its own tint, which the grayscale
        images = class_tinted(images, fashion[1])  # input can only predict by recognising the garment
    trained = build_method(cfg, {}, DataInfo(len(images), images.shape[1]))
    Trainer(trained, images, cfg, cpu).run()
    after = _knn(trained.encoder(), fashion, cpu)
    before = _knn(initial_backbone(cfg), fashion, cpu)
    assert after > before, f"{method}: kNN {after:.4f} after training vs {before:.4f} at random init"
