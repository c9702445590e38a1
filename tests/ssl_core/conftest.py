"""Fixtures for the SSL core tests: tiny random images and tiny training configurations, all on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from ssl_core.config import TrainConfig


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def make_images() -> Callable[..., np.ndarray]:
    """Random (N, C, size, size) uint8 images, seeded."""

    def _make(n: int = 8, channels: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)

    return _make


@pytest.fixture
def make_config() -> Callable[..., TrainConfig]:
    """A tiny SimCLR configuration: standard stem, 16 px, batch 8, one epoch, no periodic checkpoints."""

    def _make(**overrides: Any) -> TrainConfig:
        values: dict[str, Any] = dict(
            stem="standard", image_size=16, batch_size=8, epochs=1, checkpoint_every_steps=1_000_000
        )
        values.update(overrides)
        return TrainConfig(**values)

    return _make


@pytest.fixture
def fp32_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train without bf16 autocast, whatever the CPU supports, so runs are exact and comparable."""
    monkeypatch.setattr("ssl_core.precision.bf16_pays", lambda device, cache_path=None: (False, "float32 for tests"))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run intra-op work on one thread: on a shared two-core machine two OpenMP threads spin against other
    processes and make a forward pass several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
