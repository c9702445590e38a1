"""Instance discrimination against a memory bank of one feature per training image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBankNCELoss(nn.Module):
    """Instance discrimination with a memory bank (Wu et al. 2018, "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", eq. 2, with the proximal term of eq. 8).

        L = -1/B Σ_b log softmax_j(v_j·f̂_b / τ)[i_b] + λ‖f̂_b - v_{i_b}‖²,   f̂ = f / ‖f‖,

    an exact softmax over the bank (buffer ``memory`` (N, D)), not the paper's NCE. :meth:`update` moves rows,
    v_i ← normalise(m·v_i + (1 - m)·f̂_i), before or after ``backward()``. Also named :data:`MemoryBank`.

    Args:
        size: images N ≥ 2; dim: D ≥ 1 (paper: 128); temperature: τ > 0 (paper: 0.07);
        proximal_weight: λ ≥ 0 (0: off); generator: for the random initial bank.

    Shapes:
        ``forward(features, indices)``: (B, D), (B,) integers in [0, N); returns a scalar.
        ``update(features, indices, momentum=0.5)``: same shapes, indices distinct.

    Raises:
        ValueError: if a hyper-parameter is out of range, the shapes or index range are wrong, ``momentum`` is
        not in [0, 1], or ``update`` gets an index twice.

    Example:
        >>> MemoryBankNCELoss(size=100, dim=16)(torch.randn(8, 16), torch.arange(8)).shape
        torch.Size([])
    """

    memory: torch.Tensor

    def __init__(
        self,
        size: int,
        dim: int,
        temperature: float = 0.07,
        proximal_weight: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if size < 2:
            raise ValueError(f"memory bank size must be at least 2 (one class per image), got {size}")
        if dim < 1:
            raise ValueError(f"feature dimension must be positive, got {dim}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not proximal_weight >= 0:
            raise ValueError(f"proximal_weight must be non-negative, got {proximal_weight}")
        self.size = int(size)
        self.dim = int(dim)
        self.temperature = float(temperature)
        self.proximal_weight = float(proximal_weight)
        initial = torch.randn(self.size, self.dim, generator=generator)
        self.register_buffer("memory", F.normalize(initial, dim=1))

    def _check(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (B, {self.dim}), got {tuple(features.shape)}")
        if features.shape[0] == 0:
            raise ValueError("expected a non-empty batch of features")
        if indices.dim() != 1 or indices.shape[0] != features.shape[0]:
            raise ValueError(f"expected indices of shape ({features.shape[0]},), got {tuple(indices.shape)}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, got {indices.dtype}")
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.size:
            raise ValueError(f"indices must lie in [0, {self.size}), got values from {low} to {high}")

    def forward(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        self._check(features, indices)
        targets = indices.to(device=self.memory.device, dtype=torch.long)
        with torch.autocast(features.device.type, enabled=False):
            f = F.normalize(features.float(), dim=1)
            memory = self.memory.detach().clone()  # update() may run before backward()
            logits = f @ memory.T / self.temperature
            loss = F.cross_entropy(logits, targets)
            if self.proximal_weight > 0:
                loss = loss + self.proximal_weight * (f - memory[targets]).pow(2).sum(dim=1).mean()
            return loss

    @torch.no_grad()
    def update(self, features: torch.Tensor, indices: torch.Tensor, momentum: float = 0.5) -> None:
        self._check(features, indices)
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        targets = indices.to(device=self.memory.device, dtype=torch.long)
        if torch.unique(targets).numel() != targets.numel():
            raise ValueError("update() needs distinct indices: the same image appears twice in the batch")
        f = F.normalize(features.detach().float().to(self.memory.device), dim=1)
        mixed = momentum * self.memory[targets] + (1 - momentum) * f
        self.memory[targets] = F.normalize(mixed, dim=1)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, temperature={self.temperature}"


MemoryBank = MemoryBankNCELoss
