"""InfoNCE and its feature queue against the paper's formula written out with explicit loops, plus their
properties and argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.losses import (
    FeatureQueue,
    InfoNCELoss,
)
from tests.ssl_core.losses.helpers import assert_values_and_grads, randn, unit


def info_nce_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo eq. 1 per query: -log(exp(q·k+/τ) / (exp(q·k+/τ) + Σ_j exp(q·n_j/τ))), keys and queue constant."""
    total = q.new_zeros(())
    for b in range(q.shape[0]):
        query = unit(q[b])
        positive = torch.exp(torch.dot(query, unit(k[b].detach())) / temperature)
        denominator = positive
        for j in range(queue.shape[0]):
            denominator = denominator + torch.exp(torch.dot(query, unit(queue[j].detach())) / temperature)
        total = total - torch.log(positive / denominator)
    return total / q.shape[0]


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize(("b", "d", "k"), [(1, 3, 1), (4, 8, 5), (6, 16, 12)])
def test_info_nce_matches_reference_value_and_gradients(b: int, d: int, k: int, temperature: float) -> None:
    q = randn(b, d, seed=1, grad=True)
    keys = randn(b, d, seed=2, grad=True)
    queue = randn(k, d, seed=3, grad=True)
    loss = InfoNCELoss(temperature)(q, keys, queue)
    assert_values_and_grads(loss, info_nce_reference(q, keys, queue, temperature), [q])
    # The keys and the queue are constants: no gradient reaches them.
    assert torch.autograd.grad(loss, [keys, queue], allow_unused=True) == (None, None)


def test_info_nce_is_invariant_to_scaling_its_inputs() -> None:
    q, keys, queue = randn(6, 8, seed=1), randn(6, 8, seed=2), randn(10, 8, seed=3)
    per_row = torch.linspace(0.1, 20.0, 6, dtype=torch.float64).unsqueeze(1)
    loss = InfoNCELoss(0.2)
    torch.testing.assert_close(loss(per_row * q, 3.0 * keys, 0.01 * queue), loss(q, keys, queue))


def test_info_nce_temperature_limits() -> None:
    """Orthogonal negatives and an aligned positive: the loss is log(1 + K·exp(-1/τ)), → 0 as τ → 0 and
    → log(K + 1) as τ → ∞."""
    q = torch.eye(5, 8)[:1]
    queue = torch.eye(5, 8)[1:]
    for temperature in (0.05, 0.2, 1.0, 1e4):
        loss = InfoNCELoss(temperature)(q, q.clone(), queue).item()
        assert loss == pytest.approx(math.log1p(4 * math.exp(-1 / temperature)), rel=1e-5, abs=1e-7)
    assert InfoNCELoss(1e4)(q, q.clone(), queue).item() == pytest.approx(math.log(5), rel=1e-3)


def test_info_nce_refuses_bad_arguments() -> None:
    for temperature in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            InfoNCELoss(temperature)
    loss = InfoNCELoss()
    with pytest.raises(ValueError, match="equal shape"):
        loss(torch.randn(4, 8), torch.randn(4, 9), torch.randn(3, 8))
    with pytest.raises(ValueError, match="equal shape"):
        loss(torch.randn(8), torch.randn(8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="at least 1 query"):
        loss(torch.randn(0, 8), torch.randn(0, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="queue"):
        loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 7))
    with pytest.raises(ValueError, match="needs negatives"):
        loss(torch.randn(4, 8), torch.randn(4, 8), torch.randn(0, 8))
    with pytest.raises(ValueError, match="needs negatives"):
        loss(torch.randn(4, 8), torch.randn(4, 8), FeatureQueue(16, 8).negatives())


def queue_reference(size: int, batches: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Push keys one at a time into a list of `size` slots; return the filled slots in slot order and the
    next slot."""
    slots: list[torch.Tensor | None] = [None] * size
    ptr = 0
    for batch in batches:
        for key in batch:
            slots[ptr] = key
            ptr = (ptr + 1) % size
    filled = [slot for slot in slots if slot is not None]
    return (torch.stack(filled) if filled else torch.zeros(0, batches[0].shape[1])), ptr


@pytest.mark.parametrize("batch_sizes", [[2], [2, 2, 2], [5], [5, 5, 1], [3, 4], [7], [1, 11, 2], [0, 4], [4, 0]])
def test_queue_is_a_ring_buffer(batch_sizes: list[int]) -> None:
    size, dim = 5, 3
    batches = [randn(n, dim, seed=10 + i, dtype=torch.float32) for i, n in enumerate(batch_sizes)]
    queue = FeatureQueue(size, dim)
    for batch in batches:
        queue.enqueue(batch)
    expected, ptr = queue_reference(size, batches)
    negatives = queue.negatives()
    assert negatives.shape == (min(sum(batch_sizes), size), dim)
    torch.testing.assert_close(negatives, expected)
    assert int(queue.ptr) == ptr
    assert int(queue.filled) == len(expected)


def test_queue_wraps_around_and_overwrites_the_oldest_keys() -> None:
    queue = FeatureQueue(4, 1)
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    assert queue.negatives().flatten().tolist() == [1.0, 2.0, 3.0]
    queue.enqueue(torch.tensor([[4.0], [5.0]]))  # 5 overwrites 1, the oldest
    assert queue.negatives().flatten().tolist() == [5.0, 2.0, 3.0, 4.0]
    assert int(queue.ptr) == 1
    assert int(queue.filled) == 4
    queue.enqueue(torch.arange(10.0, 16.0).unsqueeze(1))  # longer than the queue: its last 4 keys survive
    assert sorted(queue.negatives().flatten().tolist()) == [12.0, 13.0, 14.0, 15.0]
    assert int(queue.ptr) == (1 + 6) % 4


def test_queue_state_is_in_the_state_dict_and_negatives_are_detached_copies() -> None:
    queue = FeatureQueue(6, 2)
    assert float(queue.queue.abs().sum()) == 0.0  # initialised to zeros
    keys = torch.randn(4, 2, requires_grad=True)
    queue.enqueue(keys * 2)
    assert set(queue.state_dict()) == {"queue", "ptr", "filled"}
    restored = FeatureQueue(6, 2)
    restored.load_state_dict(queue.state_dict())
    torch.testing.assert_close(restored.negatives(), queue.negatives())
    assert not queue.negatives().requires_grad
    assert not queue.queue.requires_grad

    # A loss computed on negatives() survives an enqueue before backward().
    q = torch.randn(3, 2, requires_grad=True)
    loss = InfoNCELoss()(q, torch.randn(3, 2), queue.negatives())
    queue.enqueue(torch.randn(3, 2))
    loss.backward()
    assert q.grad is not None


def test_queue_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="size"):
        FeatureQueue(0, 4)
    with pytest.raises(ValueError, match="dimension"):
        FeatureQueue(4, 0)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        FeatureQueue(8, 4).enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        FeatureQueue(8, 4).enqueue(torch.randn(4))
