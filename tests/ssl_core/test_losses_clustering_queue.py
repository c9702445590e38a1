"""InfoNCE with its feature queue, the instance-discrimination memory bank, SwAV with Sinkhorn-Knopp and DINO,
each against its paper's formula written out with explicit loops, plus their properties and argument checks."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from ssl_core.losses import (
    DINOLoss,
    FeatureQueue,
    InfoNCELoss,
    MemoryBank,
    MemoryBankNCELoss,
    SwAVLoss,
    sinkhorn_knopp,
)


def _randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64, grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x.requires_grad_(grad)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt(torch.sum(v * v))


def _assert_values_and_grads(loss: torch.Tensor, expected: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    # Inputs outside the graph (a crop that only provides targets) get zero gradients.
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    expected_grads = torch.autograd.grad(expected, inputs, allow_unused=True, materialize_grads=True)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- InfoNCE


def info_nce_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo eq. 1 per query: -log(exp(q·k+/τ) / (exp(q·k+/τ) + Σ_j exp(q·n_j/τ))), keys and queue constant."""
    total = q.new_zeros(())
    for b in range(q.shape[0]):
        query = _unit(q[b])
        positive = torch.exp(torch.dot(query, _unit(k[b].detach())) / temperature)
        denominator = positive
        for j in range(queue.shape[0]):
            denominator = denominator + torch.exp(torch.dot(query, _unit(queue[j].detach())) / temperature)
        total = total - torch.log(positive / denominator)
    return total / q.shape[0]


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("b, d, k", [(1, 3, 1), (4, 8, 5), (6, 16, 12)])
def test_info_nce_matches_reference_value_and_gradients(b: int, d: int, k: int, temperature: float) -> None:
    q = _randn(b, d, seed=1, grad=True)
    keys = _randn(b, d, seed=2, grad=True)
    queue = _randn(k, d, seed=3, grad=True)
    loss = InfoNCELoss(temperature)(q, keys, queue)
    _assert_values_and_grads(loss, info_nce_reference(q, keys, queue, temperature), [q])
    # The keys and the queue are constants: no gradient reaches them.
    assert torch.autograd.grad(loss, [keys, queue], allow_unused=True) == (None, None)


def test_info_nce_is_invariant_to_scaling_its_inputs() -> None:
    q, keys, queue = _randn(6, 8, seed=1), _randn(6, 8, seed=2), _randn(10, 8, seed=3)
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


# ------------------------------------------------------------------------------------------ FeatureQueue


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
    batches = [_randn(n, dim, seed=10 + i, dtype=torch.float32) for i, n in enumerate(batch_sizes)]
    queue = FeatureQueue(size, dim)
    for batch in batches:
        queue.enqueue(batch)
    expected, ptr = queue_reference(size, batches)
    negatives = queue.negatives()
    assert negatives.shape == (min(sum(batch_sizes), size), dim)
    torch.testing.assert_close(negatives, expected)
    assert int(queue.ptr) == ptr and int(queue.filled) == len(expected)


def test_queue_wraps_around_and_overwrites_the_oldest_keys() -> None:
    queue = FeatureQueue(4, 1)
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    assert queue.negatives().flatten().tolist() == [1.0, 2.0, 3.0]
    queue.enqueue(torch.tensor([[4.0], [5.0]]))  # 5 overwrites 1, the oldest
    assert queue.negatives().flatten().tolist() == [5.0, 2.0, 3.0, 4.0]
    assert int(queue.ptr) == 1 and int(queue.filled) == 4
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
    assert not queue.negatives().requires_grad and not queue.queue.requires_grad

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


# ------------------------------------------------------------------------------------------- Memory bank


def memory_bank_reference(features: torch.Tensor, indices: list[int], memory: torch.Tensor, temperature: float,
                          proximal_weight: float = 0.0) -> torch.Tensor:
    """Wu et al. eq. 2 per sample, -log P(i|f) with P(i|f) = exp(v_i·f/τ) / Σ_j exp(v_j·f/τ), plus
    λ‖f - v_i‖²."""
    total = features.new_zeros(())
    for b, i in enumerate(indices):
        f = _unit(features[b])
        denominator = features.new_zeros(())
        for j in range(memory.shape[0]):
            denominator = denominator + torch.exp(torch.dot(memory[j].double(), f) / temperature)
        numerator = torch.exp(torch.dot(memory[i].double(), f) / temperature)
        total = total - torch.log(numerator / denominator)
        total = total + proximal_weight * torch.sum((f - memory[i].double()) ** 2)
    return total / len(indices)


@pytest.mark.parametrize("proximal_weight", [0.0, 3.0])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("n, d, indices", [(2, 3, [1]), (10, 8, [3, 0, 9, 3]), (16, 4, list(range(16)))])
def test_memory_bank_matches_reference_value_and_gradients(n: int, d: int, indices: list[int], temperature: float,
                                                          proximal_weight: float) -> None:
    bank = MemoryBankNCELoss(n, d, temperature, proximal_weight, generator=torch.Generator().manual_seed(n))
    features = _randn(len(indices), d, seed=5, grad=True)
    loss = bank(features, torch.tensor(indices))
    expected = memory_bank_reference(features, indices, bank.memory, temperature, proximal_weight)
    _assert_values_and_grads(loss, expected, [features])
    assert not bank.memory.requires_grad  # the bank is a buffer: nothing flows into it


def test_memory_bank_initialisation_is_seeded_unit_vectors() -> None:
    a = MemoryBank(50, 8, generator=torch.Generator().manual_seed(7))
    b = MemoryBank(50, 8, generator=torch.Generator().manual_seed(7))
    c = MemoryBank(50, 8, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.memory, b.memory)
    assert not torch.allclose(a.memory, c.memory)
    torch.testing.assert_close(a.memory.norm(dim=1), torch.ones(50))
    assert a.memory.dtype == torch.float32 and set(a.state_dict()) == {"memory"}
    assert a.temperature == 0.07


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 1.0])
def test_memory_bank_update_formula(momentum: float) -> None:
    bank = MemoryBank(12, 6, generator=torch.Generator().manual_seed(0))
    before = bank.memory.clone()
    indices = [4, 0, 11]
    features = 5.0 * _randn(3, 6, seed=2, dtype=torch.float32)
    bank.update(features, torch.tensor(indices), momentum=momentum)
    for row in range(12):
        if row in indices:
            f = _unit(features[indices.index(row)])
            mixed = momentum * before[row] + (1 - momentum) * f
            torch.testing.assert_close(bank.memory[row], _unit(mixed))
        else:
            torch.testing.assert_close(bank.memory[row], before[row])
    torch.testing.assert_close(bank.memory.norm(dim=1), torch.ones(12))


def test_memory_bank_update_before_backward_keeps_the_gradient() -> None:
    bank = MemoryBank(8, 4, generator=torch.Generator().manual_seed(0))
    reference = MemoryBank(8, 4, generator=torch.Generator().manual_seed(0))
    features = _randn(3, 4, seed=1, dtype=torch.float32, grad=True)
    indices = torch.tensor([1, 5, 2])
    loss = bank(features, indices)
    bank.update(features, indices)
    (grad,) = torch.autograd.grad(loss, features)
    (expected,) = torch.autograd.grad(reference(features, indices), features)
    torch.testing.assert_close(grad, expected)


def test_memory_bank_refuses_bad_arguments() -> None:
    for kwargs, match in [(dict(size=1, dim=4), "size"), (dict(size=8, dim=0), "dimension"),
                          (dict(size=8, dim=4, temperature=0.0), "temperature"),
                          (dict(size=8, dim=4, proximal_weight=-1.0), "proximal_weight")]:
        with pytest.raises(ValueError, match=match):
            MemoryBankNCELoss(**kwargs)  # type: ignore[arg-type]
    bank = MemoryBankNCELoss(8, 4)
    features = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        bank(torch.randn(3, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="non-empty"):
        bank(torch.randn(0, 4), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match=r"indices of shape \(3,\)"):
        bank(features, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        bank(features, torch.tensor([0.0, 1.0, 2.0]))
    for bad in ([0, 1, 8], [-1, 0, 1]):
        with pytest.raises(ValueError, match=r"\[0, 8\)"):
            bank(features, torch.tensor(bad))
        with pytest.raises(ValueError, match=r"\[0, 8\)"):
            bank.update(features, torch.tensor(bad))
    with pytest.raises(ValueError, match="momentum"):
        bank.update(features, torch.tensor([0, 1, 2]), momentum=1.5)
    with pytest.raises(ValueError, match="distinct"):
        bank.update(features, torch.tensor([0, 1, 1]))


# ------------------------------------------------------------------------------------------ Sinkhorn-Knopp


def sinkhorn_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp on nested lists of Python floats: exp(s/ε) as a (K, B) matrix of total mass 1,
    then alternately rows to 1/K and columns to 1/B, finally columns to 1, transposed to (B, K)."""
    b, k = scores.shape
    s = scores.detach().double().tolist()
    q = [[math.exp(s[col][row] / epsilon) for col in range(b)] for row in range(k)]
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(iterations):
        for row in range(k):
            row_sum = sum(q[row])
            q[row] = [x / row_sum / k for x in q[row]]
        for col in range(b):
            col_sum = sum(q[row][col] for row in range(k))
            for row in range(k):
                q[row][col] = q[row][col] / col_sum / b
    return torch.tensor([[q[row][col] * b for row in range(k)] for col in range(b)], dtype=torch.float64)


def _scores(b: int, k: int, seed: int = 0, grad: bool = False) -> torch.Tensor:
    """Cosine scores: normalised features times normalised prototypes, as SwAV feeds them."""
    features = torch.nn.functional.normalize(_randn(b, 8, seed=seed), dim=1)
    prototypes = torch.nn.functional.normalize(_randn(k, 8, seed=seed + 1000), dim=1)
    return (features @ prototypes.T).requires_grad_(grad)


@pytest.mark.parametrize("iterations", [1, 3, 10])
@pytest.mark.parametrize("epsilon", [0.05, 0.5])
@pytest.mark.parametrize("b, k", [(1, 1), (6, 4), (4, 9)])
def test_sinkhorn_matches_reference(b: int, k: int, epsilon: float, iterations: int) -> None:
    scores = _scores(b, k, seed=b + k)
    codes = sinkhorn_knopp(scores, epsilon, iterations)
    assert codes.shape == (b, k) and codes.dtype == torch.float64
    torch.testing.assert_close(codes, sinkhorn_reference(scores, epsilon, iterations), rtol=1e-10, atol=1e-12)
    assert sinkhorn_knopp(scores.float(), epsilon, iterations).dtype == torch.float32


@pytest.mark.parametrize("b, k", [(32, 4), (24, 8), (16, 16)])
def test_sinkhorn_marginals(b: int, k: int) -> None:
    scores = _scores(b, k, seed=3)
    for iterations in (1, 3, 50):
        codes = sinkhorn_knopp(scores, 0.05, iterations)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(b, dtype=torch.float64))  # exact by construction
        assert (codes >= 0).all()
    # With enough iterations every prototype gets an equal share B/K of the mass; more iterations, closer.
    errors = [(sinkhorn_knopp(scores, 0.05, n).sum(dim=0) - b / k).abs().max().item() for n in (3, 50, 200)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[1] < 0.05 * b / k and errors[2] < 1e-3 * b / k


def test_sinkhorn_is_equivariant_to_batch_and_prototype_order() -> None:
    scores = _scores(12, 5, seed=4)
    rows = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    cols = torch.randperm(5, generator=torch.Generator().manual_seed(1))
    codes = sinkhorn_knopp(scores)
    torch.testing.assert_close(sinkhorn_knopp(scores[rows]), codes[rows])
    torch.testing.assert_close(sinkhorn_knopp(scores[:, cols]), codes[:, cols])


def test_sinkhorn_is_stable_for_large_scores_and_ignores_per_prototype_shifts() -> None:
    scores = _scores(10, 6, seed=5)
    codes = sinkhorn_knopp(scores)
    # exp(1000 / 0.05) overflows: without the max subtraction this would be NaN.
    torch.testing.assert_close(sinkhorn_knopp(scores + 1000.0), codes)
    shifts = torch.linspace(-30.0, 30.0, 6, dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores + shifts), codes)
    sharp = sinkhorn_knopp(100.0 * scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(sharp).all()
    torch.testing.assert_close(sharp.sum(dim=1), torch.ones(10, dtype=torch.float64))


def test_sinkhorn_tracks_no_gradient() -> None:
    scores = _scores(6, 3, grad=True)
    assert not sinkhorn_knopp(scores).requires_grad


def test_sinkhorn_refuses_bad_arguments() -> None:
    for shape in [(8,), (0, 4), (4, 0), (2, 3, 4)]:
        with pytest.raises(ValueError, match=r"\(B, K\)"):
            sinkhorn_knopp(torch.randn(shape))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(torch.randn(4, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations"):
        sinkhorn_knopp(torch.randn(4, 3), iterations=0)


# ------------------------------------------------------------------------------------------------- SwAV


def swav_reference(scores: list[torch.Tensor], n_global: int, temperature: float, epsilon: float,
                   iterations: int, queue: list[torch.Tensor] | None = None) -> torch.Tensor:
    """SwAV eq. 1-2 with multi-crop: for each global crop i its codes (no gradient), predicted by every
    other crop v with p = exp(s/τ) / Σ exp(s/τ); cross-entropy -Σ_k q log p averaged over samples and pairs.
    With a queue, the codes are the batch's rows of Sinkhorn on the batch's and the queue's scores."""
    b, k = scores[0].shape
    terms = []
    for i in range(n_global):
        rows = scores[i] if queue is None else torch.cat([scores[i].detach(), queue[i]])
        codes = sinkhorn_reference(rows, epsilon, iterations)[:b]
        for v, crop in enumerate(scores):
            if v == i:
                continue
            total = crop.new_zeros(())
            for row in range(b):
                denominator = sum(torch.exp(crop[row, c] / temperature) for c in range(k))
                for c in range(k):
                    p = torch.exp(crop[row, c] / temperature) / denominator
                    total = total - codes[row, c] * torch.log(p)
            terms.append(total / b)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("temperature, epsilon, iterations", [(0.1, 0.05, 3), (0.5, 0.2, 1)])
@pytest.mark.parametrize("n_crops, n_global", [(2, 2), (2, 1), (4, 2), (5, 1)])
def test_swav_matches_reference_value_and_gradients(n_crops: int, n_global: int, temperature: float,
                                                    epsilon: float, iterations: int) -> None:
    scores = [_scores(4, 5, seed=20 + v, grad=True) for v in range(n_crops)]
    loss = SwAVLoss(temperature, epsilon, iterations)(scores, n_global)
    _assert_values_and_grads(loss, swav_reference(scores, n_global, temperature, epsilon, iterations), scores)


@pytest.mark.parametrize("n_crops, n_global", [(2, 2), (4, 2), (3, 1)])
def test_swav_with_a_queue_matches_reference(n_crops: int, n_global: int) -> None:
    scores = [_scores(4, 5, seed=40 + v, grad=True) for v in range(n_crops)]
    queue = [_scores(6, 5, seed=50 + i).double() for i in range(n_global)]
    loss = SwAVLoss(0.1, 0.05, 3)(scores, n_global, queue_scores=queue)
    _assert_values_and_grads(loss, swav_reference(scores, n_global, 0.1, 0.05, 3, queue), scores)
    without = SwAVLoss(0.1, 0.05, 3)(scores, n_global)
    assert not torch.allclose(loss, without)  # the queue changes the codes
    with pytest.raises(ValueError, match="queue_scores"):
        SwAVLoss()(scores, n_global, queue_scores=[torch.randn(6, 4)] * n_global)


def test_swav_codes_carry_no_gradient() -> None:
    """With one global and one local crop, the global crop only provides codes: no gradient reaches it."""
    scores = [_scores(4, 5, seed=30, grad=True), _scores(4, 5, seed=31, grad=True)]
    loss = SwAVLoss()(scores, n_global=1)
    grad_global, grad_local = torch.autograd.grad(loss, scores, allow_unused=True)
    assert grad_global is None or not grad_global.any()
    assert grad_local is not None and grad_local.abs().sum() > 0


def test_swav_refuses_bad_arguments() -> None:
    for kwargs, match in [(dict(temperature=0.0), "temperature"), (dict(epsilon=-1.0), "epsilon"),
                          (dict(sinkhorn_iterations=0), "sinkhorn_iterations")]:
        with pytest.raises(ValueError, match=match):
            SwAVLoss(**kwargs)  # type: ignore[arg-type]
    loss = SwAVLoss()
    with pytest.raises(ValueError, match="at least 2 crops"):
        loss([torch.randn(4, 3)], n_global=1)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        loss([torch.randn(4), torch.randn(4)], n_global=1)
    with pytest.raises(ValueError, match="same shape"):
        loss([torch.randn(4, 3), torch.randn(4, 5)], n_global=1)
    for n_global in (0, 3):
        with pytest.raises(ValueError, match="n_global"):
            loss([torch.randn(4, 3), torch.randn(4, 3)], n_global=n_global)


# ------------------------------------------------------------------------------------------------- DINO


def dino_reference(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
                   teacher_temperature: float, student_temperature: float) -> torch.Tensor:
    """DINO eq. 1-4: H(P_t, P_s) = -Σ_k P_t log P_s, P_t = softmax((t - c)/τ_t) as a constant, P_s =
    softmax(s/τ_s), averaged over samples and over all pairs of a teacher crop with a different student crop."""
    b, k = teacher[0].shape
    terms = []
    for i, t in enumerate(teacher):
        t = t.detach().double()
        for v, s in enumerate(student):
            if v == i:
                continue
            total = s.new_zeros(())
            for row in range(b):
                t_den = sum(math.exp((t[row, c].item() - center[c].item()) / teacher_temperature) for c in range(k))
                s_den = sum(torch.exp(s[row, c] / student_temperature) for c in range(k))
                for c in range(k):
                    p_t = math.exp((t[row, c].item() - center[c].item()) / teacher_temperature) / t_den
                    total = total - p_t * torch.log(torch.exp(s[row, c] / student_temperature) / s_den)
            terms.append(total / b)
    return torch.stack(terms).mean()


@pytest.mark.parametrize("teacher_temperature, student_temperature", [(0.04, 0.1), (0.07, 0.2), (1.0, 1.0)])
@pytest.mark.parametrize("n_student, n_teacher", [(2, 2), (2, 1), (5, 2), (3, 1)])
def test_dino_matches_reference_value_and_gradients(n_student: int, n_teacher: int, teacher_temperature: float,
                                                    student_temperature: float) -> None:
    student = [_randn(3, 6, seed=40 + v, grad=True) for v in range(n_student)]
    teacher = [_randn(3, 6, seed=50 + i, grad=True) for i in range(n_teacher)]
    loss_fn = DINOLoss(6, teacher_temperature, student_temperature)
    loss_fn.center.copy_(_randn(1, 6, seed=60, dtype=torch.float32))
    center = loss_fn.center.flatten().clone()
    loss = loss_fn(student, teacher)
    expected = dino_reference(student, teacher, center, teacher_temperature, student_temperature)
    _assert_values_and_grads(loss, expected, student)
    assert all(g is None for g in torch.autograd.grad(loss, teacher, allow_unused=True))


def test_dino_per_call_teacher_temperature() -> None:
    student = [_randn(4, 5, seed=v) for v in range(4)]
    teacher = [_randn(4, 5, seed=10 + i) for i in range(2)]
    warm = DINOLoss(5, teacher_temperature=0.04).eval()(student, teacher, teacher_temperature=0.07)
    fixed = DINOLoss(5, teacher_temperature=0.07).eval()(student, teacher)
    torch.testing.assert_close(warm, fixed)
    expected = dino_reference(student, teacher, torch.zeros(5), 0.07, 0.1)
    torch.testing.assert_close(warm.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9, 1.0])
def test_dino_loss_reads_the_centre_that_update_center_moves(momentum: float) -> None:
    student = [_randn(4, 5, seed=v) for v in range(3)]
    teacher = [_randn(4, 5, seed=10 + i) for i in range(2)]
    loss_fn = DINOLoss(5, center_momentum=momentum)
    assert set(loss_fn.state_dict()) == {"center"} and not loss_fn.center.any()

    first = loss_fn(student, teacher)
    torch.testing.assert_close(first.double(), dino_reference(student, teacher, torch.zeros(5), 0.04, 0.1),
                               rtol=1e-5, atol=1e-6)
    assert not loss_fn.center.any()  # the loss has no side effect
    loss_fn.update_center(teacher)
    rows = [t[row] for t in teacher for row in range(4)]
    batch_mean = torch.tensor([sum(r[c].item() for r in rows) / len(rows) for c in range(5)])
    expected_center = momentum * torch.zeros(5) + (1 - momentum) * batch_mean
    torch.testing.assert_close(loss_fn.center, expected_center.unsqueeze(0))

    second = loss_fn(student, teacher)
    torch.testing.assert_close(second.double(), dino_reference(student, teacher, expected_center, 0.04, 0.1),
                               rtol=1e-5, atol=1e-6)
    loss_fn.update_center(teacher)
    torch.testing.assert_close(loss_fn.center, (momentum * expected_center + (1 - momentum) * batch_mean)[None])


def test_dino_refuses_bad_arguments() -> None:
    for kwargs, match in [(dict(output_dim=0), "output_dim"),
                          (dict(output_dim=4, teacher_temperature=0.0), "teacher_temperature"),
                          (dict(output_dim=4, student_temperature=-0.1), "student_temperature"),
                          (dict(output_dim=4, center_momentum=1.1), "center_momentum")]:
        with pytest.raises(ValueError, match=match):
            DINOLoss(**kwargs)  # type: ignore[arg-type]
    loss = DINOLoss(4)
    crops = [torch.randn(3, 4) for _ in range(3)]
    with pytest.raises(ValueError, match="teacher_temperature"):
        loss(crops, crops[:2], teacher_temperature=0.0)
    with pytest.raises(ValueError, match="at least one crop"):
        loss(crops, [])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        loss(crops, [torch.randn(3, 5)])
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        loss([torch.randn(3, 4), torch.randn(3)], crops[:1])
    with pytest.raises(ValueError, match="same batch size"):
        loss([torch.randn(3, 4), torch.randn(2, 4)], crops[:1])
    with pytest.raises(ValueError, match="teacher crops"):
        loss(crops[:2], crops)
    with pytest.raises(ValueError, match="pair"):
        loss(crops[:1], crops[:1])
    assert not loss.center.any()  # refused calls leave the centre alone


# ---------------------------------------------------------------------------------------- bf16 autocast


def _bf16_cases() -> list[tuple[str, Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g), torch.randn(64, 32, generator=g)
    features, indices = torch.randn(16, 32, generator=g), torch.randperm(100, generator=g)[:16]
    prototypes = torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=1)
    crops = [torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=1) @ prototypes.T for _ in range(4)]
    student, teacher = [torch.randn(16, 20, generator=g) for _ in range(4)], [torch.randn(16, 20, generator=g)
                                                                                for _ in range(2)]
    bank = MemoryBank(100, 32, generator=torch.Generator().manual_seed(1))
    dino = DINOLoss(20).eval()
    return [
        ("info_nce", lambda cast: InfoNCELoss(0.2)(cast(q), cast(k), cast(queue))),
        ("memory_bank", lambda cast: bank(cast(features), indices)),
        ("swav", lambda cast: SwAVLoss()([cast(c) for c in crops], n_global=2)),
        ("dino", lambda cast: dino([cast(s) for s in student], [cast(t) for t in teacher])),
    ]


@pytest.mark.parametrize("case", range(4), ids=["info_nce", "memory_bank", "swav", "dino"])
def test_bf16_autocast_computes_the_loss_in_float32(case: int) -> None:
    _, compute = _bf16_cases()[case]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = compute(lambda x: x.bfloat16())
    assert mixed.dtype == torch.float32
    # Exactly the float32 loss of the bf16-rounded inputs, and close to that of the original inputs.
    torch.testing.assert_close(mixed, compute(lambda x: x.bfloat16().float()), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, compute(lambda x: x), rtol=2e-2, atol=1e-3)
