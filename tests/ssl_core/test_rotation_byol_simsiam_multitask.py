"""Method-specific properties of rotation, BYOL, SimSiam and multitask."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from ssl_core.config import TrainConfig
from ssl_core.ema import momentum_schedule
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.methods.multitask import Multitask, MultitaskParams
from ssl_core.methods.rotation import rotate_batch
from ssl_core.train import Trainer, build_method

pytestmark = pytest.mark.usefixtures("fp32_training")


def _method(name: str, **params: object):  # type: ignore[no-untyped-def]
    cfg = TrainConfig(method=name, backbone="resnet18", stem="standard", image_size=32)
    return build_method(cfg, dict(params), DataInfo(8, 3))


def test_rotation_labels_name_the_quarter_turns() -> None:
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)  # asymmetric images
    views, labels = rotate_batch(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):
        torch.testing.assert_close(views[2 * k:2 * k + 2], torch.rot90(x, k, dims=(2, 3)))
    # a quarter turn counter-clockwise moves the top-right corner to the top-left
    assert views[2, 0, 0, 0] == x[0, 0, 0, 2]


def test_byol_target_is_the_ema_of_the_online_network_and_gets_no_gradient() -> None:
    method = _method("byol", base_momentum=0.5)
    images = torch.rand(8, 3, 32, 32)
    out = method.training_step(images, torch.arange(8), torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    online_before = {k: v.detach().clone() for k, v in method.backbone.state_dict().items()}
    target_before = {k: v.detach().clone() for k, v in method.target_backbone.state_dict().items()}
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    method.on_step_end(1, 4)
    m = momentum_schedule(0.5, 1, 4)  # the momentum of the step just taken (0.57; step 2's is 0.75)
    weight = "net.conv1.weight"
    torch.testing.assert_close(method.target_backbone.state_dict()[weight],
                               m * target_before[weight] + (1 - m) * (online_before[weight] + 1.0))
    assert method.encoder() is method.backbone  # BYOL evaluates the online network


def test_simsiam_target_branch_has_a_stop_gradient() -> None:
    method = _method("simsiam")
    z = torch.randn(4, 2048, requires_grad=True)
    p = torch.randn(4, 2048, requires_grad=True)
    method.criterion(p, z).backward()
    assert z.grad is None and p.grad is not None


def test_multitask_shares_one_backbone_and_reports_each_loss() -> None:
    method = _method("multitask", tasks=[{"method": "rotation"}, {"method": "simclr", "weight": 0.5,
                                                                   "params": {"hidden_dim": 32}}])
    assert all(task.backbone is method.backbone for task in method.tasks)
    assert method.optimizer_defaults(method.params).optimizer == "sgd"  # the first task's
    out = method.training_step(torch.rand(8, 3, 32, 32), torch.arange(8), torch.Generator().manual_seed(0))
    assert set(out.logs) >= {"rotation_loss", "simclr_loss", "rotation_rotation_accuracy"}
    want = out.logs["rotation_loss"] + 0.5 * out.logs["simclr_loss"]
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-5)


def test_multitask_trains_with_its_first_tasks_optimiser_settings(cpu: torch.device) -> None:
    """All of them (MAE's AdamW betas included), with the tightest gradient clipping of any task (DINO's)."""
    params = MultitaskParams(tasks=[{"method": "mae"}, {"method": "dino"}])  # type: ignore[list-item]
    mae, dino = METHODS.get("mae"), METHODS.get("dino")
    defaults = Multitask.optimizer_defaults(params)
    assert defaults == dataclasses.replace(mae.optimizer_defaults(mae.Params()), clip_grad_norm=3.0)
    assert defaults.adamw_betas == (0.9, 0.95) and dino.recipe.default.clip_grad_norm == 3.0
    cfg = TrainConfig(method="multitask", backbone="vit_tiny", patch_size=4, image_size=16, epochs=1, batch_size=4)
    method = build_method(cfg, {"tasks": [{"method": "mae"}, {"method": "dino", "params": {
        "output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local_crops": 0}}]}, DataInfo(8, 3))
    trainer = Trainer(method, np.zeros((8, 3, 16, 16), np.uint8), cfg, cpu)
    assert trainer.settings.optimizer == "adamw" and trainer.settings.clip_grad_norm == 3.0
    assert trainer.optimizer.defaults["betas"] == (0.9, 0.95)
    assert trainer.peak_lr == pytest.approx(mae.recipe.default.learning_rate * 4 / 256)


def test_multitask_auto_balance_divides_by_running_loss_scales() -> None:
    method = _method("multitask", balance="auto", tasks=[{"method": "rotation"}, {"method": "byol"}])
    gen = torch.Generator().manual_seed(0)
    first = method.training_step(torch.rand(8, 3, 32, 32), torch.arange(8), gen)
    assert float(first.loss.detach()) == pytest.approx(2.0, rel=1e-5)  # each task ≈ its weight at the first step
    method.on_step_end(0, 10)
    scales = torch.tensor([first.logs["rotation_loss"], first.logs["byol_loss"]])
    torch.testing.assert_close(method.scales, scales)
    second = method.training_step(torch.rand(8, 3, 32, 32), torch.arange(8), gen)
    want = second.logs["rotation_loss"] / scales[0] + second.logs["byol_loss"] / scales[1]
    assert float(second.loss.detach()) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize(("tasks", "message"), [
    ([{"method": "rotation"}], "at least 2"),
    ([{"method": "rotation"}, {"method": "rotation"}], "once"),
    ([{"method": "rotation"}, {"method": "multitask"}], "cannot contain itself"),
    ([{"method": "rotation"}, {"method": "nope"}], "unknown method 'nope'"),
    ([{"method": "rotation"}, {"method": "simclr", "params": {"temperature": -1}}], "temperature"),
    ([{"method": "rotation", "weight": 0}, {"method": "simclr"}], "weight"),
])
def test_multitask_refuses_bad_task_lists(tasks: list[dict], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MultitaskParams(tasks=tasks)


def test_swav_crops_prototypes_and_freezing() -> None:
    method = _method("swav", freeze_prototypes_steps=1, n_local_crops=3)
    crops = method.views(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
    assert [c.shape[-1] for c in crops] == [32, 32, 14, 14, 14]
    optimizer = torch.optim.SGD(method.parameters(), lr=1.0)
    before = method.prototypes.weight.detach().clone()
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(step)
        method.training_step(torch.rand(8, 3, 32, 32), torch.arange(8), gen).loss.backward()
        frozen = method.prototypes.weight.grad is None
        assert frozen == (step == 0)
        optimizer.step()
        method.on_step_end(step, 2)
        torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(300))
        if step == 0:
            torch.testing.assert_close(method.prototypes.weight, before)
    assert not torch.equal(method.prototypes.weight, before)


def test_swav_queue_fills_after_its_start_and_joins_sinkhorn_once_full() -> None:
    method = _method("swav", n_local_crops=0, queue_length=8, queue_start_steps=1, projection_dim=16)
    seen: list[int | None] = []
    criterion = method.criterion.forward

    def spy(scores, n_global, queue_scores=None):  # type: ignore[no-untyped-def]
        seen.append(None if queue_scores is None else queue_scores[0].shape[0])
        return criterion(scores, n_global, queue_scores)

    method.criterion.forward = spy  # type: ignore[method-assign]
    filled = []
    for step in range(4):
        images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        method.training_step(images, torch.arange(4), torch.Generator().manual_seed(step))
        z = method.pending
        method.on_step_end(step, 10)
        filled.append(int(method.queue_filled))
        if z is not None:  # the newest projections at the front of each crop's queue
            torch.testing.assert_close(method.queue[:, :4], z)
    assert filled == [0, 4, 8, 8]
    assert seen == [None, None, None, 8]  # used once full: 8 queued rows per global crop
    assert torch.allclose(method.queue.norm(dim=-1), torch.ones(2, 8))  # normalised projections


def test_swav_without_queue_keeps_none() -> None:
    method = _method("swav", n_local_crops=0)
    method.training_step(torch.rand(4, 3, 32, 32), torch.arange(4), torch.Generator().manual_seed(0))
    assert method.pending is None and method.queue.shape[1] == 0
