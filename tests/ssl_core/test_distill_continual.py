"""Distillation and continual pretraining in the SSL core: the frozen copies stay frozen through training,
the student learns, a continued method starts from the given encoder, and the preservation terms are what they
say at the start of training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_core.backbones import backbone_cost, build_backbone
from ssl_core.continual import Preserving
from ssl_core.distill import Distiller, DistillParams, compare_encoders
from ssl_core.methods.base import DataInfo
from ssl_core.train import Trainer, build_method, resolve_optimizer

pytestmark = pytest.mark.usefixtures("fp32_training")


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def _distiller(objective: str, cfg, n: int = 16, **params) -> Distiller:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    teacher = build_backbone("resnet18", "standard", 16)
    head = torch.nn.Linear(teacher.dim, 3) if objective == "logits" else None
    labels = torch.tensor([i % 3 if i % 4 else -1 for i in range(n)]) if objective == "logits" else None
    student = build_backbone("mobilenet_v3_small", "standard", 16)
    method = Distiller(
        student,
        DistillParams(objective=objective, **params),
        cfg.image_size,
        DataInfo(n, 3),
        teacher=teacher,
        teacher_head=head,
        labels=labels,
    )
    method.optimizer_settings = resolve_optimizer(cfg, method.optimizer_settings)
    return method


@pytest.mark.parametrize("objective", ["embedding", "similarity", "logits"])
def test_distillation_trains_the_student_and_leaves_the_teacher_as_it_was(objective, make_config, make_images, cpu):
    cfg = make_config(method="distill", backbone="mobilenet_v3_small", epochs=2)
    method = _distiller(objective, cfg)
    teacher, student = _snapshot(method.teacher), _snapshot(method.backbone)
    trainer = Trainer(method, make_images(16), cfg, cpu)
    assert not any(p.requires_grad for p in method.teacher.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in method.teacher.parameters()}
    result = trainer.run()
    assert result.steps == 4
    assert np.isfinite(result.final_loss)
    assert _unchanged(method.teacher, teacher), "the teacher's weights or batch-norm statistics moved"
    assert not method.teacher.training
    assert not _unchanged(method.backbone, student)
    if objective == "similarity":
        assert int(method.queue.filled) == 16  # four batches of 8, capped at the dataset's 16 images


def test_logit_distillation_needs_a_classifier_teacher_and_labels(make_config) -> None:
    cfg = make_config(method="distill")
    with pytest.raises(ValueError, match="needs a classifier teacher"):
        Distiller(
            build_backbone("mobilenet_v3_small", "standard"),
            DistillParams(objective="logits"),
            16,
            DataInfo(8, 3),
            teacher=build_backbone("resnet18", "standard"),
        )
    assert _distiller("logits", cfg).classifier_head() is not None
    assert _distiller("embedding", cfg).classifier_head() is None


@pytest.mark.parametrize("method_name", ["simclr", "byol"])
def test_a_continued_method_starts_from_the_given_encoder(method_name, make_config) -> None:
    cfg = make_config(method=method_name)
    start = build_backbone("resnet18", "standard", 16)
    torch.nn.init.constant_(start.net.conv1.weight, 0.01)
    method = build_method(cfg, {}, DataInfo(16, 3), backbone=start)
    assert torch.equal(method.backbone.net.conv1.weight, start.net.conv1.weight)
    if method_name == "byol":  # its EMA target starts as the given encoder too
        assert torch.equal(method.target_backbone.net.conv1.weight, start.net.conv1.weight)


@pytest.mark.parametrize("preserve", ["lwf", "cassle"])
def test_preservation_keeps_a_frozen_copy_of_the_starting_encoder(preserve, make_config, make_images, cpu) -> None:
    cfg = make_config(method="simclr", epochs=2)
    method = Preserving(build_method(cfg, {}, DataInfo(16, 3)), preserve, weight=0.5)
    frozen = _snapshot(method.frozen)
    assert all(torch.equal(frozen[k], v) for k, v in method.method.backbone.state_dict().items())
    result = Trainer(method, make_images(16), cfg, cpu).run()
    assert np.isfinite(result.final_loss)
    assert _unchanged(method.frozen, frozen), "the frozen copy's weights or batch-norm statistics moved"
    assert not method.frozen.training
    assert not _unchanged(method.backbone, frozen)
    assert method.encoder() is method.method.encoder()


def test_lwf_term_is_zero_until_the_encoder_moves_and_adds_to_the_method_loss(make_config, make_images) -> None:
    """In eval mode (batch norm on running statistics) the encoder and its frozen copy compute the same features:
    LwF's 1 - cos is 0; CaSSLe's random predictor is not the identity."""
    cfg = make_config(method="simclr")
    images = torch.from_numpy(make_images(8)).float() / 255
    for preserve, zero in (("lwf", True), ("cassle", False)):
        method = Preserving(build_method(cfg, {}, DataInfo(8, 3)), preserve, weight=0.5).eval()
        out = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
        term = out.logs[f"{preserve}_loss"]
        assert (abs(term) < 1e-5) is zero, term
        assert float(out.loss.detach()) == pytest.approx(out.logs["ssl_loss"] + 0.5 * term, rel=1e-5)


def test_comparison_reports_size_speed_and_accuracy_for_each_encoder(make_images, cpu) -> None:
    images = make_images(40, channels=1)
    labels = np.arange(40) % 2
    big, small = build_backbone("resnet18", "standard"), build_backbone("mobilenet_v3_small", "standard")
    report = compare_encoders(
        {
            "teacher": (big, None, backbone_cost("resnet18", "standard", 16)),
            "student": (small, None, backbone_cost("mobilenet_v3_small", "standard", 16)),
        },
        images,
        labels,
        16,
        cpu,
    )
    assert report["teacher"]["parameters"] == sum(p.numel() for p in big.parameters())
    assert report["student"]["flops_per_image"] < report["teacher"]["flops_per_image"]
    for entry in report.values():
        assert entry["embedding_images_per_second"] > 0
        assert 0 <= entry["knn_accuracy"] <= 1
        assert 0 <= entry["linear_probe_accuracy"] <= 1
    unlabelled = compare_encoders({"s": (small, None, backbone_cost("mobilenet_v3_small"))}, images, None, 16, cpu)
    assert "knn_accuracy" not in unlabelled["s"]
