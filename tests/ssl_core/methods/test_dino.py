"""DINO: the EMA teacher, its crops and temperature, the centre, the head and the recipes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.ema import momentum_schedule
from ssl_core.methods.base import DataInfo
from ssl_core.methods.dino import DINO, DINOParams, teacher_temperature
from ssl_core.methods.mae import (
    MAE,
)
from ssl_core.train import Trainer, build_method
from tests.ssl_core.methods.helpers import tiny_vit

B = 4


def _dino(**params: object) -> DINO:
    return DINO(tiny_vit(), DINOParams(output_dim=64, hidden_dim=32, bottleneck_dim=16, **params), 16, DataInfo(8, 3))


def _images(size: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _step(method: DINO | MAE, step: int = 0, total: int = 10, lr: float = 1e-2) -> float:
    """One training step as the trainer takes it: forward, backward, SGD step, on_step_end."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr)
    out = method.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(step))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    method.on_step_end(step, total)
    return float(out.loss.detach())


def test_dino_teacher_is_the_ema_of_the_student_after_a_step() -> None:
    m = _dino()
    student = [*m.backbone.parameters(), *m.head.parameters()]
    teacher = [*m.teacher_backbone.parameters(), *m.teacher_head.parameters()]
    for s, t in zip(student, teacher, strict=True):  # the teacher starts as a copy of the student
        torch.testing.assert_close(s, t, rtol=0, atol=0)
    assert all(not t.requires_grad for t in teacher)
    before = [t.detach().clone() for t in teacher]
    _step(m, step=3, total=10)
    momentum = momentum_schedule(0.99, 3, 10)
    assert 0.99 < momentum < 1
    changed = False
    for s, t, t0 in zip(student, teacher, before, strict=True):
        torch.testing.assert_close(t, momentum * t0 + (1 - momentum) * s.detach())
        changed |= not torch.equal(t, t0)
    assert changed


def test_dino_teacher_sees_only_the_global_crops_and_the_student_all_of_them() -> None:
    m = _dino(n_local_crops=3)
    assert m.local_size == 8  # 3/7 of 16 px, a multiple of the 4 px patch
    seen: dict[str, list[tuple[int, ...]]] = {"student": [], "teacher": []}
    m.backbone.net.register_forward_pre_hook(lambda mod, args: seen["student"].append(tuple(args[0].shape)))
    m.teacher_backbone.net.register_forward_pre_hook(lambda mod, args: seen["teacher"].append(tuple(args[0].shape)))
    m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    assert seen["teacher"] == [(2 * B, 3, 16, 16)]
    assert seen["student"] == [(2 * B, 3, 16, 16), (3 * B, 3, 8, 8)]  # one pass per crop size


def test_dino_crops_are_global_first_then_local() -> None:
    m = _dino(n_local_crops=2)
    crops = m.views(_images(channels=1), torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in crops] == [(B, 3, 16, 16)] * 2 + [(B, 3, 8, 8)] * 2


def test_teacher_temperature_schedule() -> None:
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(90, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)
    assert teacher_temperature(0, 0, 0.04, 0.07, 0.3) == pytest.approx(0.04)  # length not yet known


def test_dino_teacher_temperature_follows_the_warm_up_and_survives_a_checkpoint() -> None:
    m = _dino()
    total = 20  # warm-up over 0.3 · 20 = 6 steps
    assert m.current_teacher_temperature() == pytest.approx(0.04)
    out = m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    assert out.logs["teacher_temperature"] == pytest.approx(0.04)
    for step in range(8):
        m.on_step_end(step, total)
        want = 0.04 + 0.03 * min(1.0, (step + 1) / 6)
        assert m.current_teacher_temperature() == pytest.approx(want)
    m.on_step_end(2, total)
    resumed = _dino()
    resumed.load_state_dict(m.state_dict())
    assert resumed.current_teacher_temperature() == pytest.approx(0.04 + 0.03 * 3 / 6)


def test_dino_temperature_reaches_the_loss() -> None:
    m = _dino()
    m.on_step_end(9, 10)  # past the warm-up: 0.07
    calls: list[float | None] = []
    original = m.criterion.forward
    m.criterion.forward = lambda s, t, teacher_temperature=None: (  # type: ignore[method-assign]
        calls.append(teacher_temperature) or original(s, t, teacher_temperature)
    )
    m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    assert calls == [pytest.approx(0.07)]


def test_dino_centre_moves_in_on_step_end_only() -> None:
    m = _dino(init_center_from_batch=False)
    m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    assert torch.count_nonzero(m.criterion.center) == 0  # a skipped step leaves it alone
    teacher_out = [t.clone() for t in m.pending_teacher_out or []]
    assert len(teacher_out) == 2
    assert teacher_out[0].shape == (B, 64)
    m.on_step_end(0, 10)
    torch.testing.assert_close(m.criterion.center, 0.1 * torch.cat(teacher_out).mean(dim=0, keepdim=True))


def test_dino_centre_starts_at_the_first_batch_mean() -> None:
    m = _dino()
    with torch.no_grad():
        crops = m.views(_images(), torch.Generator().manual_seed(0))
        teacher = m.teacher_head(m.teacher_backbone(torch.cat(crops[:2])))
    m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.criterion.center, teacher.mean(dim=0, keepdim=True))
    m.on_step_end(0, 10)
    after_first = m.criterion.center.clone()
    m.training_step(_images(seed=1), torch.arange(B), torch.Generator().manual_seed(1))
    assert torch.equal(m.criterion.center, after_first)  # later steps do not re-initialise it
    m2 = _dino()
    m2.on_step_end(0, 10)  # not the first step any more: no initialisation
    m2.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    assert torch.count_nonzero(m2.criterion.center) == 0


def test_dino_last_layer_is_frozen_for_the_first_steps() -> None:
    m = _dino(freeze_last_layer_steps=1)
    out = m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert m.head.last_layer.weight.grad is None
    assert m.head.mlp[0][0].weight.grad is not None
    m.zero_grad()
    m.on_step_end(0, 10)
    m.training_step(_images(), torch.arange(B), torch.Generator().manual_seed(1)).loss.backward()
    assert m.head.last_layer.weight.grad is not None


def test_dino_head_options_keep_teacher_and_student_alike() -> None:
    m = _dino(head_batch_norm=True, norm_last_layer=False)
    for head in (m.head, m.teacher_head):
        assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in head.mlp.modules()) == 2  # after both hidden layers
        assert head.last_layer.gain is not None
    assert m.head.last_layer.gain.requires_grad
    assert not m.teacher_head.last_layer.gain.requires_grad  # type: ignore[union-attr]
    gain0 = m.head.last_layer.gain.detach().clone()  # type: ignore[union-attr]
    teacher_gain0 = m.teacher_head.last_layer.gain.detach().clone()  # type: ignore[union-attr]
    _step(m, step=3, total=10)
    gain = m.head.last_layer.gain.detach()  # type: ignore[union-attr]
    assert not torch.equal(gain, gain0)  # the gain is learnt ...
    momentum = momentum_schedule(0.99, 3, 10)
    torch.testing.assert_close(m.teacher_head.last_layer.gain, momentum * teacher_gain0 + (1 - momentum) * gain)
    for t_buf, s_buf in zip(m.teacher_head.buffers(), m.head.buffers(), strict=True):  # ... BN statistics copied
        torch.testing.assert_close(t_buf, s_buf, rtol=0, atol=0)
    assert torch.isfinite(m.criterion.center).all()


def test_dino_encoder_is_the_teacher_backbone() -> None:
    m = _dino()
    assert m.encoder() is m.teacher_backbone
    assert m.encoder() is not m.backbone
    _step(m)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(m.encoder().state_dict().values(), m.backbone.state_dict().values(), strict=True)
    )


def test_dino_trains_a_resnet18() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", "standard")
    m = DINO(backbone, DINOParams(output_dim=64, hidden_dim=32, bottleneck_dim=16, n_local_crops=2), 32, DataInfo(8, 3))
    assert m.local_size == 14
    assert m.fp32_sizes == {14}  # layer4 meets 1x1 maps at 14 px behind the standard stem, not at 32 px
    seen: list[tuple[int, ...]] = []
    m.teacher_backbone.net.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    before = [p.detach().clone() for p in m.teacher_backbone.parameters()]
    optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    images = torch.rand(B, 3, 40, 40)  # stored larger than the training size
    out = m.training_step(images, torch.arange(B), torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    m.on_step_end(0, 5)
    assert seen == [(2 * B, 3, 32, 32)]
    assert any(not torch.equal(a, b) for a, b in zip(before, m.teacher_backbone.parameters(), strict=True))


def test_dino_refuses_local_crops_larger_than_global_ones() -> None:
    with pytest.raises(ValueError, match="local_crop_min_scale"):
        DINOParams(local_crop_min_scale=0.5, global_crop_min_scale=0.4)


def test_dino_runs_small_resnet_crops_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    m = DINO(
        build_backbone("resnet18", "standard"),
        DINOParams(output_dim=64, hidden_dim=32, bottleneck_dim=16, n_local_crops=1),
        32,
        DataInfo(8, 3),
    )
    dtypes: dict[int, torch.dtype] = {}
    m.backbone.net.register_forward_hook(lambda mod, args, out: dtypes.update({args[0].shape[-1]: out.dtype}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.training_step(torch.rand(B, 3, 32, 32), torch.arange(B), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert dtypes == {32: torch.bfloat16, 14: torch.float32}
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("family", "backbone", "optimizer", "lr", "wd", "head_bn"),
    [("vit", "vit_tiny", "adamw", 5e-4, 0.04, 0), ("resnet", "resnet18", "sgd", 0.12, 5e-4, 2)],
)
def test_dino_trains_each_backbone_family_with_its_own_recipe(family, backbone, optimizer, lr, wd, head_bn) -> None:
    """The paper's AdamW recipe for a ViT; for a ResNet, SGD and batch norm in the head (the recipe that
    learns on small images, docs/BENCHMARKS.md). A spec's choices still win."""
    defaults = DINO.optimizer_defaults(DINOParams(), family)
    assert (defaults.optimizer, defaults.learning_rate, defaults.weight_decay) == (optimizer, lr, wd)
    cfg = TrainConfig(
        method="dino",
        backbone=backbone,
        image_size=16,
        batch_size=4,
        epochs=1,
        patch_size=4 if family == "vit" else None,
    )
    method = build_method(cfg, {"output_dim": 64}, DataInfo(8, 1))
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in method.head.mlp.modules()) == head_bn
    trainer = Trainer(method, np.zeros((8, 1, 16, 16), np.uint8), cfg, torch.device("cpu"))
    assert trainer.settings.optimizer == optimizer
    assert trainer.peak_lr == pytest.approx(lr * 4 / 256)
    explicit = build_method(cfg, {"output_dim": 64, "head_batch_norm": False}, DataInfo(8, 1))
    assert sum(isinstance(x, torch.nn.BatchNorm1d) for x in explicit.head.mlp.modules()) == 0
    chosen_cfg = dataclasses.replace(cfg, optimizer="adamw", learning_rate=1e-3)
    chosen = Trainer(
        build_method(chosen_cfg, {"output_dim": 64}, DataInfo(8, 1)),
        np.zeros((8, 1, 16, 16), np.uint8),
        chosen_cfg,
        torch.device("cpu"),
    )
    assert chosen.settings.optimizer == "adamw"
    assert chosen.peak_lr == pytest.approx(1e-3 * 4 / 256)
