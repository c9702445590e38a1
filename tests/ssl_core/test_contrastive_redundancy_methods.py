"""MoCo, instance discrimination, Barlow Twins and VICReg: the key encoder and its queue, the memory bank,
refused datasets, views and heads. Steps are driven by hand (training_step, backward, optimiser step,
on_step_end) as the Trainer does, with tiny batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_core.backbones import build_backbone
from ssl_core.config import TrainConfig
from ssl_core.methods.barlow_twins import BarlowTwins, BarlowTwinsParams
from ssl_core.methods.base import DataInfo
from ssl_core.methods.instance_discrimination import InstanceDiscrimination, InstanceDiscriminationParams
from ssl_core.methods.moco import MoCo, MoCoParams, queue_length
from ssl_core.methods.vicreg import VICReg, VICRegParams
from ssl_core.train import build_method

SMALL_HEAD = dict(hidden_dim=32, projection_dim=16)


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18", "standard", 16)


def _images(b: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _moco(**params: object) -> MoCo:
    return MoCo(_resnet(), MoCoParams(**{**SMALL_HEAD, **params}), 16, DataInfo(64, 3))  # type: ignore[arg-type]


def _step(method: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, total: int, seed: int = 0,
          end: bool = True) -> torch.Tensor:
    """One training step as the Trainer takes it; ``end=False`` is a skipped step (no optimiser step, no
    ``on_step_end``). Returns the loss."""
    b = 4
    out = method.training_step(_images(b, seed=seed), torch.arange(b) + 4 * seed, torch.Generator().manual_seed(seed))
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if end:
        optimizer.step()
        method.on_step_end(step, total)
    return out.loss


def _sgd(method: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)


# MoCo ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_moco_key_encoder_follows_the_ema_formula(symmetric: bool) -> None:
    moco = _moco(symmetric=symmetric, base_momentum=0.9)
    opt = _sgd(moco)
    _step(moco, opt, 0, 10)
    before_key = {k: v.clone() for k, v in moco.key_backbone.state_dict().items()}
    # Step 1: the momentum at step 1 of 10 follows the cosine schedule from 0.9 towards 1.
    out = moco.training_step(_images(seed=1), torch.arange(4), torch.Generator().manual_seed(1))
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    query_after = {k: v.clone() for k, v in moco.backbone.state_dict().items()}
    moco.on_step_end(1, 10)
    m = 1 - (1 - 0.9) * (torch.cos(torch.tensor(torch.pi / 10)).item() + 1) / 2
    params = dict(moco.backbone.named_parameters())
    for name, value in moco.key_backbone.state_dict().items():
        if name in params:  # parameters: the EMA; buffers (batch-norm statistics): copied
            torch.testing.assert_close(value, m * before_key[name] + (1 - m) * query_after[name])
        else:
            torch.testing.assert_close(value, query_after[name])
    for (name, key_p), query_p in zip(moco.key_projection.named_parameters(), moco.projection.parameters(),
                                      strict=True):
        assert not torch.equal(key_p, query_p), name  # the key head lags behind the query head


def test_moco_no_gradient_reaches_the_key_encoder() -> None:
    moco = _moco()
    opt = _sgd(moco)
    _step(moco, opt, 0, 10, end=True)
    out = moco.training_step(_images(seed=1), torch.arange(4), torch.Generator().manual_seed(1))
    out.loss.backward()
    for module in (moco.key_backbone, moco.key_projection):
        for name, p in module.named_parameters():
            assert not p.requires_grad and p.grad is None, name
    assert all(p.grad is not None for p in moco.projection.parameters())


@pytest.mark.parametrize("symmetric", [True, False])
def test_moco_queue_holds_the_last_keys_and_ignores_skipped_steps(symmetric: bool) -> None:
    moco = _moco(symmetric=symmetric, queue_size=64)
    assert queue_length(moco.params, moco.data) == 16  # 0.25 of 64 images
    opt = _sgd(moco)
    keys_per_step = 8 if symmetric else 4
    # Step 0: the queue is empty; the loss uses the batch's other keys and is finite.
    assert int(moco.queue.filled) == 0
    moco.training_step(_images(seed=0), torch.arange(4), torch.Generator().manual_seed(0))
    first_keys = moco.pending_keys.clone()  # type: ignore[union-attr]
    assert first_keys.shape == (keys_per_step, 16)
    moco.pending_keys = None
    moco.queue.enqueue(first_keys)  # the state on_step_end leaves
    # A step whose gradients are not finite: training_step and backward, but no on_step_end.
    _step(moco, opt, 1, 10, seed=1, end=False)
    torch.testing.assert_close(moco.queue.negatives(), first_keys)
    assert int(moco.queue.ptr) == keys_per_step % 16
    # A step that is taken: its keys follow the first ones, the skipped step's keys are nowhere.
    out = moco.training_step(_images(seed=2), torch.arange(4), torch.Generator().manual_seed(2))
    new_keys = moco.pending_keys.clone()  # type: ignore[union-attr]
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    moco.on_step_end(1, 10)
    assert moco.pending_keys is None
    torch.testing.assert_close(moco.queue.negatives(), torch.cat([first_keys, new_keys]))


def test_moco_first_step_contrasts_with_the_other_images_of_the_batch() -> None:
    moco = _moco(symmetric=False)
    q, k = torch.randn(3, 16), torch.randn(3, 16)
    loss = moco._loss_against_batch(q, k, 3)
    # Reference: row i's negatives are the keys of the other images.
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = qn @ kn.T / moco.params.temperature
    expected = -torch.diagonal(F.log_softmax(logits, dim=1)).mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="at least 2 images"):
        moco._loss_against_batch(q[:1], k[:1], 1)


def test_moco_queue_length_is_capped_by_the_dataset() -> None:
    params = MoCoParams(queue_size=4096)
    assert queue_length(params, DataInfo(100_000, 3)) == 4096
    assert queue_length(params, DataInfo(1000, 3)) == 250
    assert queue_length(params, DataInfo(2, 3)) == 1
    assert queue_length(params, DataInfo()) == 4096  # unknown size


# Instance discrimination ------------------------------------------------------------------------------------


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


# Barlow Twins and VICReg --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "params", "head"), [
    (BarlowTwins, BarlowTwinsParams(hidden_dim=32, projector_dim=24), "projector"),
    (VICReg, VICRegParams(hidden_dim=32, expander_dim=24), "expander"),
])
def test_views_and_head_sizes(cls: type, params: object, head: str) -> None:
    method = cls(_resnet(), params, 24, DataInfo(8, 1))
    gray_28px = torch.rand(4, 1, 28, 28)
    v1, v2 = method.views(gray_28px, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == (4, 3, 24, 24)
    z = getattr(method, head)(method.backbone.features(v1))
    assert z.shape == (4, 24)
    out = method.training_step(gray_28px, torch.arange(4), torch.Generator().manual_seed(0))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # BYOL's asymmetric pair: the first view is always blurred and never solarized.
    assert method.view_configs[0].blur_p == 1.0 and method.view_configs[1].solarize_p > 0


def test_vicreg_var_weight_is_the_papers_weighting() -> None:
    """The loss adds the two variance terms; the default 12.5 equals the official 25 on their mean."""
    method = VICReg(_resnet(), VICRegParams(), 16, DataInfo(8, 3))
    assert method.criterion.var_weight * 2 == 25.0 and method.criterion.sim_weight == 25.0
