"""Every method learns: on a Fashion-MNIST subset with a small CPU budget, the trained encoder's kNN accuracy
beats the randomly initialised encoder's under the same protocol (``ssl_core.learning_check``: 2,048 train
images, 1,000 test queries, ResNet-18 or ViT-Tiny at 32 px, batch 128, 8 epochs or a method's longer budget,
seed 0, k = 20, T = 0.1), both embedding images as the method does: whole, or for a method trained on tiles
by its tiles (``SSLMethod.patch_grid``).

``CI_SAMPLE`` runs in every test run; the rest are marked ``slow`` (``pytest -m slow``, from a minute to most
of an hour per method on a CPU with bf16, the 192-epoch budgets the longest; five to ten times as long on a
CPU without it, in float32). ``bench/learning_control.py`` measures every method under this protocol beside
a control run that cannot move the weights (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ssl_core import learning_check as protocol
from ssl_core.backbones import Backbone
from ssl_core.evaluate import PatchGrid
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.precision import native_bf16_units
from ssl_core.train import Trainer, build_method, initial_backbone

#: Methods whose learning test runs in every CI run on a CPU with bf16 units (about a minute); the others, and on a
#: CPU without bf16 these too (rotation's took 8.7 of the suite's 27 minutes on two AVX2 cores), are marked
#: slow. Every run still checks that training learns: tests/integration/test_celery_pipeline.py trains
#: SimCLR at this protocol's budget through the API and a real worker and asserts it beats its random init
#: (on a kNN split of the uploaded images).
CI_SAMPLE: tuple[str, ...] = ("rotation",) if native_bf16_units(torch.device("cpu")) else ()


def _cases() -> list[object]:
    return [pytest.param(m, marks=() if m in CI_SAMPLE else pytest.mark.slow) for m in METHODS.names()]


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from ssl_core.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist

    if not (DEFAULT_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    train, train_labels = load_fashion_mnist("train", limit=protocol.TRAIN_IMAGES)
    test, test_labels = load_fashion_mnist("test", limit=protocol.QUERIES)
    return train[:, None], train_labels, test[:, None], test_labels


@pytest.fixture(autouse=True)
def both_cores(one_thread: None) -> None:
    """Train on two cores (``one_thread`` restores the setting afterwards): these tests start no worker
    process that two threads could spin against, and a second thread makes a ResNet-18 step about 1.4×
    faster on two AVX2 cores."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def _knn(encoder: Backbone, data: tuple[np.ndarray, ...], cpu: torch.device, patches: PatchGrid | None) -> float:
    train, train_labels, test, test_labels = data
    return protocol.encoder_knn(encoder, train, train_labels, test, test_labels, cpu, patches=patches)


# The suite's 900 s timeout is for hangs; BYOL's 192-epoch budget runs for hours on a CPU without bf16.
@pytest.mark.timeout(6 * 3600)
@pytest.mark.parametrize("method", _cases())
def test_the_trained_encoder_beats_its_random_initialisation(method: str, fashion, cpu: torch.device) -> None:
    cfg = protocol.config(method)
    images = protocol.pretraining_images(method, fashion[0], fashion[1])
    trained = build_method(cfg, {}, DataInfo(len(images), images.shape[1]))
    Trainer(trained, images, cfg, cpu).run()
    # Both embedded as the method embeds images: whole, or (methods trained on tiles) by their tiles.
    after = _knn(trained.encoder(), fashion, cpu, trained.patch_grid)
    before = _knn(initial_backbone(cfg), fashion, cpu, trained.patch_grid)
    assert after > before, f"{method}: kNN {after:.4f} after {cfg.epochs} epochs vs {before:.4f} at random init"
