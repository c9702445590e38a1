"""Instance discrimination: the memory bank's update and the datasets it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.methods.base import DataInfo
from ssl_core.methods.instance_discrimination import InstanceDiscrimination, InstanceDiscriminationParams
from ssl_core.train import build_method


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18", "standard", 16)


def _images(b: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _sgd(method: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)


def test_instance_discrimination_updates_only_the_batch_rows() -> None:
    method = InstanceDiscrimination(_resnet(), InstanceDiscriminationParams(feature_dim=16), 16, DataInfo(20, 3))
    opt = _sgd(method)
    bank_before = method.bank.memory.clone()
    indices = torch.tensor([3, 7, 11, 19])
    out = method.training_step(_images(), indices, torch.Generator().manual_seed(0))
    features = method.pending[0].clone()  # type: ignore[index]
    opt.zero_grad()
    out.loss.backward()
    torch.testing.assert_close(method.bank.memory, bank_before)  # nothing written before on_step_end
    opt.step()
    method.on_step_end(0, 10)
    others = torch.ones(20, dtype=torch.bool)
    others[indices] = False
    assert torch.equal(method.bank.memory[others], bank_before[others])
    expected = F.normalize(0.5 * bank_before[indices] + 0.5 * F.normalize(features, dim=1), dim=1)
    torch.testing.assert_close(method.bank.memory[indices], expected)
    assert method.pending is None
    # A skipped step writes nothing.
    method.training_step(_images(seed=1), indices, torch.Generator().manual_seed(1))
    assert torch.equal(method.bank.memory[indices], expected)


def test_instance_discrimination_refuses_too_many_images() -> None:
    params = InstanceDiscriminationParams(max_images=1000)
    InstanceDiscrimination.check_data(params, DataInfo(1000, 1))
    with pytest.raises(ValueError, match="at most 1000 images"):
        InstanceDiscrimination.check_data(params, DataInfo(1001, 3))
    cfg = TrainConfig(method="instance_discrimination", image_size=16, epochs=1)
    with pytest.raises(ValueError, match="at most 100000 images"):
        build_method(cfg, {}, DataInfo(100_001, 3))


def test_instance_discrimination_needs_the_dataset_size() -> None:
    with pytest.raises(ValueError, match="number of training images"):
        InstanceDiscrimination(_resnet(), InstanceDiscriminationParams(), 16, DataInfo())
