"""Fine-tuning: each strategy trains exactly the parts it names, early stopping reads the validation split and
never the test images, the best validation weights come back, and a learnable task is learned."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.finetune import (
    Classifier,
    FinetuneCallbacks,
    FinetuneConfig,
    finetune,
    predict_logits,
    stage_count,
    trainable_modules,
)
from ssl_core.train import TrainingStopped

SIZE = 16


def _task(n_per_class: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes anyone can tell apart: dark and bright noise."""
    rng = np.random.default_rng(seed)
    dark = rng.integers(0, 90, (n_per_class, 1, SIZE, SIZE))
    bright = rng.integers(165, 256, (n_per_class, 1, SIZE, SIZE))
    images = np.concatenate([dark, bright]).astype(np.uint8)
    labels = np.repeat([0, 1], n_per_class).astype(np.int64)
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def _classifier(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(build_backbone("resnet18", "standard", SIZE), 2)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


SPLIT = (np.arange(0, 32), np.arange(32, 40))


def _run(classifier: Classifier, cpu: torch.device, **cfg: Any) -> Any:
    images, labels = _task()
    config = FinetuneConfig(**{"image_size": SIZE, "epochs": 2, "batch_size": 8, **cfg})
    return finetune(classifier, images, labels, *SPLIT, config, cpu)


def test_frozen_trains_the_head_only(cpu: torch.device) -> None:
    classifier = _classifier()
    backbone, head = _snapshot(classifier.backbone), _snapshot(classifier.head)
    _run(classifier, cpu, strategy="frozen")
    assert _changed(backbone, classifier.backbone) == set()  # weights and normalisation statistics
    assert _changed(head, classifier.head) == {"weight", "bias"}


def test_partial_trains_the_last_stages_and_keeps_the_rest(cpu: torch.device) -> None:
    classifier = _classifier()
    before = _snapshot(classifier.backbone)
    _run(classifier, cpu, strategy="partial", trainable_blocks=2)
    changed = {k.split(".")[1] for k in _changed(before, classifier.backbone)}
    assert changed == {"layer3", "layer4"}


def test_full_with_a_zero_backbone_multiplier_leaves_the_backbone_weights(cpu: torch.device) -> None:
    classifier = _classifier()
    before = _snapshot(classifier.backbone)
    _run(classifier, cpu, strategy="full", backbone_lr_multiplier=0.0)
    weights = {name for name, _ in classifier.backbone.named_parameters()}
    assert not _changed(before, classifier.backbone) & weights


def test_full_trains_every_stage(cpu: torch.device) -> None:
    classifier = _classifier()
    before = _snapshot(classifier.backbone)
    _run(classifier, cpu, strategy="full")
    changed = {k.split(".")[1] for k in _changed(before, classifier.backbone)}
    assert {"conv1", "layer1", "layer2", "layer3", "layer4"} <= changed


def test_partial_with_more_blocks_than_the_backbone_has_is_refused() -> None:
    assert stage_count("resnet18") == 4
    assert stage_count("vit_tiny") == 12
    with pytest.raises(ValueError, match="1 to 4"):
        trainable_modules(_classifier(), "partial", 5)


class Recording(np.ndarray):
    """An image array that remembers which rows were read."""

    seen: set[int]

    def __getitem__(self, key: Any) -> Any:
        rows = np.arange(len(self))[key if isinstance(key, tuple) is False else key[0]]
        self.seen.update(np.atleast_1d(rows).tolist())
        return np.asarray(self).__getitem__(key)


def test_the_test_images_are_never_read(cpu: torch.device) -> None:
    images, labels = _task()
    recording = images.view(Recording)
    recording.seen = set()
    config = FinetuneConfig(image_size=SIZE, epochs=3, batch_size=8)
    finetune(_classifier(), recording, labels, *SPLIT, config, cpu)
    assert recording.seen == set(range(40))  # rows 40-47 are the test split


def test_the_best_validation_weights_are_restored(cpu: torch.device) -> None:
    images, labels = _task()
    classifier = _classifier()
    points: list[Any] = []
    config = FinetuneConfig(image_size=SIZE, epochs=4, batch_size=8, learning_rate=3.0)
    result = finetune(classifier, images, labels, *SPLIT, config, cpu, FinetuneCallbacks(on_epoch=points.append))
    assert [p.epoch for p in points] == [1, 2, 3, 4]
    best = max(points, key=lambda p: (p.val_accuracy, -p.val_loss))
    assert result.best_epoch == best.epoch
    logits = predict_logits(classifier, images[SPLIT[1]], SIZE, cpu)
    assert float((logits.argmax(dim=1).numpy() == labels[SPLIT[1]]).mean()) == pytest.approx(best.val_accuracy)


def test_training_stops_after_patience_epochs_without_improvement(cpu: torch.device) -> None:
    # A learning rate too small to move the validation numbers: every epoch after the first is no better.
    result = _run(_classifier(), cpu, epochs=10, learning_rate=1e-12, patience=2, augment=False)
    assert result.stopped_early
    assert (result.best_epoch, result.epochs) == (1, 3)


def test_a_stop_request_stops_training(cpu: torch.device) -> None:
    images, labels = _task()
    calls = itertools.count()
    callbacks = FinetuneCallbacks(stop_requested=lambda: "cancel" if next(calls) == 3 else None)
    with pytest.raises(TrainingStopped) as err:
        finetune(_classifier(), images, labels, *SPLIT, FinetuneConfig(image_size=SIZE, epochs=5), cpu, callbacks)
    assert err.value.reason == "cancel"


def test_a_time_budget_ends_training(cpu: torch.device) -> None:
    images, labels = _task()
    ticks = itertools.count()
    config = FinetuneConfig(image_size=SIZE, max_minutes=0.5, batch_size=8)
    result = finetune(_classifier(), images, labels, *SPLIT, config, cpu, clock=lambda: float(next(ticks)))
    assert 1 <= result.steps < 30  # one second per clock reading, 30 s of budget


def test_an_easy_task_is_learned(cpu: torch.device) -> None:
    images, labels = _task(n_per_class=40, seed=1)
    classifier = _classifier()
    # 12 epochs at 0.5: at 6 epochs and 1.0 one seed in three stopped at 80 % on AVX-512 CPUs
    config = FinetuneConfig(image_size=SIZE, epochs=12, batch_size=16, learning_rate=0.5)
    finetune(classifier, images, labels, np.arange(60), np.arange(60, 70), config, cpu)
    logits = predict_logits(classifier, images[70:], SIZE, cpu)
    assert float((logits.argmax(dim=1).numpy() == labels[70:]).mean()) >= 0.9
