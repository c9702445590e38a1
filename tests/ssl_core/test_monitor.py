"""The representation monitor: collapse statistics against hand-written formulas, the status it reports,
and the trainer failing a run whose representation collapsed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from ssl_core.backbones import Backbone, build_backbone
from ssl_core.config import TrainConfig
from ssl_core.evaluate import embed_images
from ssl_core.methods.base import DataInfo, MethodParams, SSLMethod, StepOutput
from ssl_core.monitor import (
    COLLAPSED_STD,
    RepresentationCollapsed,
    RepresentationMonitor,
    RepresentationStats,
    collapse_statistics,
)
from ssl_core.train import Callbacks, Trainer, TrainingStopped, build_method

pytestmark = pytest.mark.usefixtures("fp32_training")


def _reference(z: np.ndarray) -> tuple[float, float]:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    std = float(np.mean([np.std(z[:, j], ddof=1) for j in range(z.shape[1])])) * math.sqrt(z.shape[1])
    s = np.linalg.svd(z - z.mean(axis=0), compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return std, float(math.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize(("n", "d"), [(16, 4), (50, 32), (200, 8)])
def test_collapse_statistics_match_the_formulas(n: int, d: int) -> None:
    z = np.random.default_rng(n).normal(size=(n, d))
    std, rank = collapse_statistics(torch.from_numpy(z))
    want_std, want_rank = _reference(z)
    assert std == pytest.approx(want_std, rel=1e-5)
    assert rank == pytest.approx(want_rank, rel=1e-4)
    assert 0 < rank <= min(n, d)


def test_collapse_statistics_of_extremes() -> None:
    constant = torch.ones(10, 8)
    assert collapse_statistics(constant) == (0.0, 0.0)
    on_a_line = torch.randn(100, 1) * torch.randn(1, 8)
    assert collapse_statistics(on_a_line)[1] == pytest.approx(1.0, abs=1e-3)
    spread = torch.randn(4000, 8)
    assert collapse_statistics(spread)[0] == pytest.approx(1.0, abs=0.05)


class ConstantBackbone(Backbone):
    """Maps every image to the same learnable vector: a collapsed encoder."""

    family = "resnet"

    def __init__(self) -> None:
        super().__init__()
        self.dim = 8
        self.vector = torch.nn.Parameter(torch.ones(8))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vector.expand(x.shape[0], -1)


class Collapsed(SSLMethod):
    def training_step(self, images, indices, generator):  # type: ignore[no-untyped-def]
        return StepOutput((self.backbone.features(images) - 2).pow(2).mean())


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.stats: list[RepresentationStats] = []

    def on_representation(self, stats: RepresentationStats) -> None:
        self.stats.append(stats)


def _images(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8), np.arange(n) % 4


def test_a_collapsed_representation_fails_the_run_after_patience_measurements(cpu: torch.device) -> None:
    images, labels = _images()
    cfg = TrainConfig(epochs=5, batch_size=8, image_size=16, optimizer="sgd", learning_rate=0.1)
    recorder = Recorder()
    monitor = RepresentationMonitor(images, labels, 16, cpu, patience=2, max_overhead=1e9)
    trainer = Trainer(
        Collapsed(ConstantBackbone(), MethodParams(), 16, DataInfo()),
        images,
        cfg,
        cpu,
        callbacks=recorder,
        monitor=monitor,
    )
    with pytest.raises(RepresentationCollapsed, match=r"2 measurements in a row \(epoch 2\)"):
        trainer.run()
    assert [s.status for s in recorder.stats] == ["collapsed", "collapsed"]
    assert recorder.stats[0].embedding_std < COLLAPSED_STD
    assert "identical" in recorder.stats[0].reason


class ShutdownAfterFirstMeasurement(Recorder):
    def stop_requested(self) -> Literal["cancel", "shutdown", "lost"] | None:
        return "shutdown" if self.stats else None


def test_the_collapse_count_survives_a_resume(tmp_path: Path, cpu: torch.device) -> None:
    """A shutdown between two collapsed measurements must not reset the count: the resumed run fails at the
    second one (epoch 2), as the straight run does, not a measurement later."""
    images, labels = _images()
    cfg = TrainConfig(epochs=5, batch_size=8, image_size=16, optimizer="sgd", learning_rate=0.1)

    def trainer(callbacks: Callbacks) -> Trainer:
        monitor = RepresentationMonitor(images, labels, 16, cpu, patience=2, max_overhead=1e9)
        return Trainer(
            Collapsed(ConstantBackbone(), MethodParams(), 16, DataInfo()),
            images,
            cfg,
            cpu,
            tmp_path / "ckpt.pt",
            callbacks=callbacks,
            monitor=monitor,
        )

    first = ShutdownAfterFirstMeasurement()
    with pytest.raises(TrainingStopped):
        trainer(first).run()
    assert [s.epoch for s in first.stats] == [1]
    second = Recorder()
    resumed = trainer(second)
    assert resumed.load_checkpoint()
    with pytest.raises(RepresentationCollapsed, match=r"2 measurements in a row \(epoch 2\)"):
        resumed.run()
    assert [s.epoch for s in second.stats] == [2]


def test_a_healthy_run_reports_every_epoch_with_online_knn(cpu: torch.device) -> None:
    images, labels = _images()
    cfg = TrainConfig(epochs=3, batch_size=8, image_size=16, stem="standard")
    recorder = Recorder()
    monitor = RepresentationMonitor(images, labels, 16, cpu, max_overhead=1e9)
    trainer = Trainer(
        build_method(cfg, {"hidden_dim": 32, "projection_dim": 16}),
        images,
        cfg,
        cpu,
        callbacks=recorder,
        monitor=monitor,
    )
    trainer.run()
    assert [s.epoch for s in recorder.stats] == [1, 2, 3]
    for s in recorder.stats:
        assert s.status in ("ok", "warning")
        assert 0 <= s.knn_accuracy <= 1
        assert s.effective_rank > 1
        event = s.as_event()
        assert set(event) == {"epoch", "embedding_std", "effective_rank", "online_knn_accuracy"}


def test_the_monitor_embeds_images_as_the_method_does(cpu: torch.device) -> None:
    """A method trained on tiles is monitored on its tiles' mean features, as it is evaluated and served."""
    images, labels = _images()
    method = build_method(
        TrainConfig(method="relative_position", image_size=16, stem="standard"), {}, DataInfo(len(images), 1)
    )
    encoder = method.encoder()
    tiled = RepresentationMonitor(images, labels, 16, cpu, patch_grid=method.patch_grid).measure(encoder, 1)
    whole = RepresentationMonitor(images, labels, 16, cpu).measure(encoder, 1)
    z = embed_images(encoder, images, 16, cpu, patches=method.patch_grid)
    assert (tiled.embedding_std, tiled.effective_rank) == pytest.approx(collapse_statistics(z), rel=1e-5)
    assert tiled.effective_rank != pytest.approx(whole.effective_rank, rel=1e-3)


def test_without_labels_there_is_no_knn_and_the_probe_is_a_seeded_subset(cpu: torch.device) -> None:
    images, _ = _images(60)
    a = RepresentationMonitor(images, None, 16, cpu, max_images=20, seed=3)
    b = RepresentationMonitor(images, None, 16, cpu, max_images=20, seed=3)
    assert len(a.images) == 20
    assert np.array_equal(a.images, b.images)
    assert a.labels is None
    stats = a.measure(build_backbone("resnet18", "standard"), epoch=1)
    assert stats.knn_accuracy is None
    assert "online_knn_accuracy" not in stats.as_event()


def test_measurements_are_throttled_to_the_overhead_budget(cpu: torch.device) -> None:
    images, _ = _images(20)
    monitor = RepresentationMonitor(images, None, 16, cpu, max_overhead=0.1)
    assert monitor.due(training_seconds=0.0, last=False)  # the first epoch is always measured
    monitor.measure(build_backbone("resnet18", "standard"), epoch=1)
    assert not monitor.due(training_seconds=0.0, last=False)
    assert monitor.due(training_seconds=0.0, last=True)  # and the last one
    assert monitor.due(training_seconds=1e6, last=False)
