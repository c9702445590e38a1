"""MoCo: the key encoder (an EMA, without gradients) and its queue of keys. Steps are driven by hand
(training_step, backward, optimiser step, on_step_end) as the Trainer does, with tiny batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_core.backbones import build_backbone
from ssl_core.methods.base import DataInfo
from ssl_core.methods.moco import MoCo, MoCoParams, queue_length

SMALL_HEAD = dict(hidden_dim=32, projection_dim=16)


def _resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("resnet18", "standard", 16)


def _images(b: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _moco(**params: object) -> MoCo:
    return MoCo(_resnet(), MoCoParams(**{**SMALL_HEAD, **params}), 16, DataInfo(64, 3))  # type: ignore[arg-type]


def _step(
    method: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, total: int, seed: int = 0, end: bool = True
) -> torch.Tensor:
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
    for (name, key_p), query_p in zip(
        moco.key_projection.named_parameters(), moco.projection.parameters(), strict=True
    ):
        assert not torch.equal(key_p, query_p), name  # the key head lags behind the query head


def test_moco_no_gradient_reaches_the_key_encoder() -> None:
    moco = _moco()
    opt = _sgd(moco)
    _step(moco, opt, 0, 10, end=True)
    out = moco.training_step(_images(seed=1), torch.arange(4), torch.Generator().manual_seed(1))
    out.loss.backward()
    for module in (moco.key_backbone, moco.key_projection):
        for name, p in module.named_parameters():
            assert not p.requires_grad, name
            assert p.grad is None, name
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
