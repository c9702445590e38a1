"""The instance-discrimination memory bank: NCE loss against its formula, initialisation, the update."""

from __future__ import annotations

import pytest
import torch

from ssl_core.losses import (
    MemoryBank,
    MemoryBankNCELoss,
)
from tests.ssl_core.losses.helpers import assert_values_and_grads, randn, unit


def memory_bank_reference(
    features: torch.Tensor, indices: list[int], memory: torch.Tensor, temperature: float, proximal_weight: float = 0.0
) -> torch.Tensor:
    """Wu et al. eq. 2 per sample, -log P(i|f) with P(i|f) = exp(v_i·f/τ) / Σ_j exp(v_j·f/τ), plus
    λ‖f - v_i‖²."""
    total = features.new_zeros(())
    for b, i in enumerate(indices):
        f = unit(features[b])
        denominator = features.new_zeros(())
        for j in range(memory.shape[0]):
            denominator = denominator + torch.exp(torch.dot(memory[j].double(), f) / temperature)
        numerator = torch.exp(torch.dot(memory[i].double(), f) / temperature)
        total = total - torch.log(numerator / denominator)
        total = total + proximal_weight * torch.sum((f - memory[i].double()) ** 2)
    return total / len(indices)


@pytest.mark.parametrize("proximal_weight", [0.0, 3.0])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize(("n", "d", "indices"), [(2, 3, [1]), (10, 8, [3, 0, 9, 3]), (16, 4, list(range(16)))])
def test_memory_bank_matches_reference_value_and_gradients(
    n: int, d: int, indices: list[int], temperature: float, proximal_weight: float
) -> None:
    bank = MemoryBankNCELoss(n, d, temperature, proximal_weight, generator=torch.Generator().manual_seed(n))
    features = randn(len(indices), d, seed=5, grad=True)
    loss = bank(features, torch.tensor(indices))
    expected = memory_bank_reference(features, indices, bank.memory, temperature, proximal_weight)
    assert_values_and_grads(loss, expected, [features])
    assert not bank.memory.requires_grad  # the bank is a buffer: nothing flows into it


def test_memory_bank_initialisation_is_seeded_unit_vectors() -> None:
    a = MemoryBank(50, 8, generator=torch.Generator().manual_seed(7))
    b = MemoryBank(50, 8, generator=torch.Generator().manual_seed(7))
    c = MemoryBank(50, 8, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a.memory, b.memory)
    assert not torch.allclose(a.memory, c.memory)
    torch.testing.assert_close(a.memory.norm(dim=1), torch.ones(50))
    assert a.memory.dtype == torch.float32
    assert set(a.state_dict()) == {"memory"}
    assert a.temperature == 0.07


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 1.0])
def test_memory_bank_update_formula(momentum: float) -> None:
    bank = MemoryBank(12, 6, generator=torch.Generator().manual_seed(0))
    before = bank.memory.clone()
    indices = [4, 0, 11]
    features = 5.0 * randn(3, 6, seed=2, dtype=torch.float32)
    bank.update(features, torch.tensor(indices), momentum=momentum)
    for row in range(12):
        if row in indices:
            f = unit(features[indices.index(row)])
            mixed = momentum * before[row] + (1 - momentum) * f
            torch.testing.assert_close(bank.memory[row], unit(mixed))
        else:
            torch.testing.assert_close(bank.memory[row], before[row])
    torch.testing.assert_close(bank.memory.norm(dim=1), torch.ones(12))


def test_memory_bank_update_before_backward_keeps_the_gradient() -> None:
    bank = MemoryBank(8, 4, generator=torch.Generator().manual_seed(0))
    reference = MemoryBank(8, 4, generator=torch.Generator().manual_seed(0))
    features = randn(3, 4, seed=1, dtype=torch.float32, grad=True)
    indices = torch.tensor([1, 5, 2])
    loss = bank(features, indices)
    bank.update(features, indices)
    (grad,) = torch.autograd.grad(loss, features)
    (expected,) = torch.autograd.grad(reference(features, indices), features)
    torch.testing.assert_close(grad, expected)


def test_memory_bank_refuses_bad_arguments() -> None:
    for kwargs, match in [
        (dict(size=1, dim=4), "size"),
        (dict(size=8, dim=0), "dimension"),
        (dict(size=8, dim=4, temperature=0.0), "temperature"),
        (dict(size=8, dim=4, proximal_weight=-1.0), "proximal_weight"),
    ]:
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
