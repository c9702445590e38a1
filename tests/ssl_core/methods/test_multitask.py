"""Multitask: one shared backbone, per-task losses, the first task's optimiser settings, balancing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ssl_core.config import TrainConfig
from ssl_core.methods import METHODS
from ssl_core.methods.base import DataInfo
from ssl_core.methods.multitask import Multitask, MultitaskParams
from ssl_core.train import Trainer, build_method
from tests.ssl_core.methods.helpers import resnet_method

pytestmark = pytest.mark.usefixtures("fp32_training")


def test_multitask_shares_one_backbone_and_reports_each_loss() -> None:
    method = resnet_method(
        "multitask", tasks=[{"method": "rotation"}, {"method": "simclr", "weight": 0.5, "params": {"hidden_dim": 32}}]
    )
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
    tightest = min(c for c in (mae.recipe.default.clip_grad_norm, dino.recipe.default.clip_grad_norm) if c)
    assert defaults == dataclasses.replace(mae.optimizer_defaults(mae.Params()), clip_grad_norm=tightest)
    cfg = TrainConfig(method="multitask", backbone="vit_tiny", patch_size=4, image_size=16, epochs=1, batch_size=4)
    method = build_method(
        cfg,
        {
            "tasks": [
                {"method": "mae"},
                {
                    "method": "dino",
                    "params": {"output_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "n_local_crops": 0},
                },
            ]
        },
        DataInfo(8, 3),
    )
    trainer = Trainer(method, np.zeros((8, 3, 16, 16), np.uint8), cfg, cpu)
    assert trainer.settings.optimizer == "adamw"
    assert trainer.settings.clip_grad_norm == tightest
    assert trainer.optimizer.defaults["betas"] == mae.recipe.default.adamw_betas != (0.9, 0.999)
    assert trainer.peak_lr == pytest.approx(mae.recipe.default.learning_rate * 4 / 256)


def test_multitask_auto_balance_divides_by_running_loss_scales() -> None:
    method = resnet_method("multitask", balance="auto", tasks=[{"method": "rotation"}, {"method": "byol"}])
    gen = torch.Generator().manual_seed(0)
    first = method.training_step(torch.rand(8, 3, 32, 32), torch.arange(8), gen)
    assert float(first.loss.detach()) == pytest.approx(2.0, rel=1e-5)  # each task ≈ its weight at the first step
    method.on_step_end(0, 10)
    scales = torch.tensor([first.logs["rotation_loss"], first.logs["byol_loss"]])
    torch.testing.assert_close(method.scales, scales)
    second = method.training_step(torch.rand(8, 3, 32, 32), torch.arange(8), gen)
    want = second.logs["rotation_loss"] / scales[0] + second.logs["byol_loss"] / scales[1]
    assert float(second.loss.detach()) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"method": "rotation"}], "at least 2"),
        ([{"method": "rotation"}, {"method": "rotation"}], "once"),
        ([{"method": "rotation"}, {"method": "multitask"}], "cannot contain itself"),
        ([{"method": "rotation"}, {"method": "nope"}], "unknown method 'nope'"),
        ([{"method": "rotation"}, {"method": "simclr", "params": {"temperature": -1}}], "temperature"),
        ([{"method": "rotation", "weight": 0}, {"method": "simclr"}], "weight"),
    ],
)
def test_multitask_refuses_bad_task_lists(tasks: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultitaskParams(tasks=tasks)
