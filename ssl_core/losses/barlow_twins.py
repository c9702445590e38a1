"""Barlow Twins, the redundancy-reduction loss on the cross-correlation of two views' embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from ssl_core.losses.checks import check_pair


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins redundancy-reduction loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction", eq. 1).

    Each embedding dimension of each view is standardised over the batch (mean 0, variance 1, the variance
    being the biased one, divided by B, as batch normalisation computes it). With a, b the standardised
    views, the cross-correlation matrix is C = aᵀ b / B, of shape (D, D), and the loss is

        L = Σ_i (1 - C_ii)² + λ Σ_i Σ_{j≠i} C_ij²,

    a sum (not a mean) over dimensions, as in the paper, so it grows with D: it is D for collapsed (constant)
    embeddings and 0 (up to ``eps``) when both views are equal and their dimensions uncorrelated. It is
    symmetric in the two views (swapping them transposes C) and, up to ``eps``, invariant to a positive
    rescaling or a shift of any dimension.

    Standardisation divides by sqrt(var + ``eps``) rather than by the standard deviation, so a dimension that
    is constant over the batch standardises to 0 instead of dividing by zero (its diagonal term is then 1 and
    its gradient finite); for non-degenerate dimensions the effect is negligible (C_ii = var / (var + eps)).

    Args:
        lambda_offdiag: weight λ ≥ 0 of the redundancy-reduction (off-diagonal) term; the paper uses 5e-3.
        eps: positive constant added to the variance before its square root, 1e-5 as in batch normalisation.

    Shapes:
        ``forward(z0, z1)``: z0, z1 of shape (B, D), row i of z0 and row i of z1 being two views of the
        same image; returns a scalar.

    Raises:
        ValueError: if ``lambda_offdiag`` is negative or not finite, if ``eps`` is not positive, if the shapes
        differ or are not 2-D, or if B < 2 (one sample has no variance to standardise by).

    Example:
        >>> loss = BarlowTwinsLoss(lambda_offdiag=5e-3)
        >>> loss(torch.randn(8, 128), torch.randn(8, 128)).shape
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
        # Statistics and correlations in float32 even under autocast: bf16 keeps ~3 significant digits, too few
        # for the small off-diagonal correlations the loss is about.
        with torch.autocast(z0.device.type, enabled=False):
            c = self._standardise(z0.float()).T @ self._standardise(z1.float()) / b
            diagonal = c.diagonal()
            on_diag = (1.0 - diagonal).pow(2).sum()
            off_diag = c.masked_fill(torch.eye(d, dtype=torch.bool, device=c.device), 0.0).pow(2).sum()
            return on_diag + self.lambda_offdiag * off_diag
