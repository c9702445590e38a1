"""SwAV as a method: crops, prototypes (normalised, frozen at first) and the queue."""

from __future__ import annotations

import pytest
import torch

from tests.ssl_core.methods.helpers import resnet_method

pytestmark = pytest.mark.usefixtures("fp32_training")


def test_swav_crops_prototypes_and_freezing() -> None:
    method = resnet_method("swav", freeze_prototypes_steps=1, n_local_crops=3)
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
    method = resnet_method("swav", n_local_crops=0, queue_length=8, queue_start_steps=1, projection_dim=16)
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
    method = resnet_method("swav", n_local_crops=0)
    method.training_step(torch.rand(4, 3, 32, 32), torch.arange(4), torch.Generator().manual_seed(0))
    assert method.pending is None
    assert method.queue.shape[1] == 0
