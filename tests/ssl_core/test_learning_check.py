"""The learning protocol shared by the learning tests and bench/learning_control.py."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_core import learning_check as protocol
from ssl_core.methods import METHODS


def test_every_longer_budget_names_a_registered_method_and_is_longer() -> None:
    for method, epochs in protocol.LONGER.items():
        assert method in METHODS.names()
        assert epochs > protocol.DEFAULT_EPOCHS
        assert protocol.epochs_for(method) == epochs
    assert protocol.epochs_for("simclr") == protocol.DEFAULT_EPOCHS


@pytest.mark.parametrize("method", METHODS.names())
def test_the_config_is_the_protocols_for_every_method(method: str) -> None:
    cfg = protocol.config(method)
    assert (cfg.image_size, cfg.batch_size, cfg.seed, cfg.epochs) == (32, 128, 0, protocol.epochs_for(method))
    assert protocol.family_for(method) in METHODS.get(method).families
    if protocol.family_for(method) == "vit":
        assert (cfg.backbone, cfg.patch_size) == ("vit_tiny", 4)
    else:
        assert (cfg.backbone, cfg.stem) == ("resnet18", "standard")
    cfg = protocol.config(method, epochs=3, seed=5, learning_rate=0.5)
    assert (cfg.epochs, cfg.seed, cfg.learning_rate) == (3, 5, 0.5)


def test_only_colorization_pretrains_on_a_tinted_copy() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert protocol.pretraining_images("simclr", gray, labels) is gray
    tinted = protocol.pretraining_images("colorization", gray, labels)
    assert tinted.shape == (6, 3, 8, 8)
    assert not np.array_equal(tinted[:, 0], tinted[:, 1])
