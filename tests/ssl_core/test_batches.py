"""Training batches (``ssl_core.batches``) and step-phase timing (``ssl_core.timing``) on the CPU; the pinned and
CUDA-event paths run in tests/gpu/test_cuda.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_core.batches import BatchSource, choose_placement
from ssl_core.config import TrainConfig
from ssl_core.timing import PhaseClock
from ssl_core.train import Trainer, build_method


def _expected(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images[idx].astype(np.float32) / 255)


def test_a_cpu_reads_batches_from_the_host_array() -> None:
    assert choose_placement(10**12, torch.device("cpu")) == "host"


@pytest.mark.parametrize("placement", ["host", "device"])
def test_batches_hold_the_chosen_images_scaled_to_unit_range(
    placement: str, make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    images = make_images(10)
    source = BatchSource(images, cpu, batch_size=4, placement=placement)  # type: ignore[arg-type]
    for idx in (np.array([0, 3, 7]), np.array([1, 2, 8, 9])):
        batch, indices = source.take(idx)
        assert batch.dtype == torch.float32
        torch.testing.assert_close(batch, _expected(images, idx), rtol=0, atol=1e-7)
        assert indices.tolist() == idx.tolist()
    assert (source.resident is not None) == (placement == "device")


def test_a_memory_mapped_dataset_is_loaded_in_chunks(
    make_images: Callable[..., np.ndarray], tmp_path: Path, cpu: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = make_images(9)
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    monkeypatch.setattr("ssl_core.batches.LOAD_CHUNK_BYTES", 2 * images[0].nbytes)  # 5 chunks, the last one short
    source = BatchSource(mapped, cpu, batch_size=3, placement="device")
    assert source.resident is not None
    assert torch.equal(source.resident, torch.from_numpy(images))


@pytest.mark.usefixtures("fp32_training")
def test_training_from_device_resident_images_matches_reading_the_host_array(
    make_config: Callable[..., TrainConfig], make_images: Callable[..., np.ndarray], cpu: torch.device
) -> None:
    cfg = make_config(epochs=3)
    images = make_images(16)
    results = []
    for placement in ("host", "device"):
        torch.manual_seed(0)
        trainer = Trainer(build_method(cfg, {"hidden_dim": 32, "projection_dim": 16}), images, cfg, cpu)
        trainer.batches = BatchSource(trainer.images, cpu, trainer.batch_size, placement)  # type: ignore[arg-type]
        results.append(trainer.run())
    assert results[0].steps == results[1].steps == 6
    assert results[0].final_loss == results[1].final_loss


def test_phase_clock_adds_wall_time_between_marks_on_a_cpu(cpu: torch.device) -> None:
    clock = PhaseClock(cpu, ("a", "b"))
    start = clock.mark()
    total = torch.zeros(())
    for _ in range(50):
        total += torch.randn(64, 64).sum()
    middle = clock.lap("a", start)
    clock.lap("b", middle)
    seconds = clock.flush()
    assert seconds["a"] > 0
    assert seconds["b"] >= 0
    assert seconds["a"] + seconds["b"] < 60
    clock.reset()
    assert clock.flush() == {"a": 0.0, "b": 0.0}
