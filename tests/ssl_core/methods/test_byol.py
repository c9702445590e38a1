"""BYOL: the target network is the online network's EMA and gets no gradient."""

from __future__ import annotations

import pytest
import torch

from ssl_core.ema import momentum_schedule
from tests.ssl_core.methods.helpers import resnet_method

pytestmark = pytest.mark.usefixtures("fp32_training")


def test_byol_target_is_the_ema_of_the_online_network_and_gets_no_gradient() -> None:
    method = resnet_method("byol", base_momentum=0.5)
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
    torch.testing.assert_close(
        method.target_backbone.state_dict()[weight], m * target_before[weight] + (1 - m) * (online_before[weight] + 1.0)
    )
    assert method.encoder() is method.backbone  # BYOL evaluates the online network
