"""Instance discrimination against a memory bank of one feature per training image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBankNCELoss(nn.Module):
    """Non-parametric instance discrimination with a memory bank (Wu et al. 2018, "Unsupervised Feature
    Learning via Non-Parametric Instance Discrimination", eq. 2, with the proximal term of eq. 8).

        P(i | f) = exp(v_i·f̂ / τ) / Σ_{j=1..N} exp(v_j·f̂ / τ),   L = -1/B Σ_b log P(i_b | f_b) + λ‖f̂_b - v_{i_b}‖²,

    an exact softmax over the whole bank, not the paper's noise-contrastive approximation. The bank (buffer
    ``memory`` (N, D), random unit vectors at first) moves by :meth:`update`, v_i ← normalise(m·v_i + (1 - m)·f̂_i),
    which may run before or after ``backward()``. :data:`MemoryBank` is another name for this class.

    Args:
        size: number of training images N ≥ 2.
        dim: feature dimension D ≥ 1 (the paper uses 128).
        temperature: softmax temperature τ > 0 (the paper uses 0.07).
        proximal_weight: λ ≥ 0 of the proximal term (0 disables it).
        generator: random generator for the initial bank (the default generator when None).

    Shapes:
        ``forward(features, indices)``: features (B, D), indices (B,) integers in [0, N); returns a scalar.
        ``update(features, indices, momentum=0.5)``: same shapes, indices distinct.

    Raises:
        ValueError: if a hyper-parameter is out of range, if features are not (B, D) or indices not (B,)
        integers in [0, N), if ``momentum`` is not in [0, 1], or if ``update`` gets the same index twice.

    Example:
        >>> bank = MemoryBankNCELoss(size=100, dim=16, generator=torch.Generator().manual_seed(0))
        >>> features, indices = torch.randn(8, 16), torch.arange(8)
        >>> loss = bank(features, indices)
        >>> bank.update(features, indices)
        >>> loss.shape
        torch.Size([])
    """

    memory: torch.Tensor

    def __init__(self, size: int, dim: int, temperature: float = 0.07, proximal_weight: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
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
