"""Barlow Twins, the redundancy-reduction loss on the cross-correlation of two views' embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_core.losses.checks import check_pair


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins redundancy-reduction loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", eq. 1).

        C = aᵀ b / B,   L = Σ_i (1 - C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,

    a, b the views standardised per dimension over the batch by sqrt(biased var + ε).

    Args:
        lambda_offdiag: λ ≥ 0 (paper: 5e-3); eps: ε > 0 (1e-5).

    Shapes:
        ``forward(z0, z1)``: (B, D) each, row i of both from image i; returns a scalar.

    Raises:
        ValueError: if ``lambda_offdiag`` is negative or not finite, ``eps`` ≤ 0, the shapes differ or are not
        2-D, or B < 2.

    Example:
        >>> BarlowTwinsLoss()(torch.randn(8, 128), torch.randn(8, 128)).shape
        torch.Size([])
    """

    def __init__(self, lambda_offdiag: float = 5e-3, eps: float = 1e-5) -> None:
        super().__init__()
        if not (lambda_offdiag >= 0 and math.isfinite(lambda_offdiag)):
            raise ValueError(f"lambda_offdiag must be a finite number >= 0, got {lambda_offdiag}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a finite positive number, got {eps}")
        self.lambda_offdiag = float(lambda_offdiag)
        self.eps = float(eps)

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(z, dim=0, correction=0)
        return (z - mean) / torch.sqrt(var + self.eps)

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        b = check_pair(z0, z1, loss="Barlow Twins", min_batch=2, unit="samples", why="to standardise")
        d = z0.shape[1]
        # float32 even under autocast: bf16's ~3 digits lose the small off-diagonal correlations.
        with torch.autocast(z0.device.type, enabled=False):
            c = self._standardise(z0.float()).T @ self._standardise(z1.float()) / b
            diagonal = c.diagonal()
            on_diag = (1.0 - diagonal).pow(2).sum()
            off_diag = c.masked_fill(torch.eye(d, dtype=torch.bool, device=c.device), 0.0).pow(2).sum()
            return on_diag + self.lambda_offdiag * off_diag
